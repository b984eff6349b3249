"""A tiny workflow set-up shared by the workflow tests: a random tiny BERT with a real tokenizer, a
toy sentiment CSV, a params.yaml over them, and the real Snakefile run in a temporary directory."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from conftest import BERT_PRUNABLE, tiny_bert_config
from transformers import BertForSequenceClassification, BertTokenizer

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
WORDS_POS = ["good", "great", "fine", "nice", "superb"]
WORDS_NEG = ["bad", "awful", "poor", "dull", "weak"]
FILLER = ["the", "a", "movie", "film", "plot", "was", "is", "very"]


def build_tiny_model(folder: Path) -> None:
    """A random tiny BERT with a real WordPiece tokenizer over a small vocabulary."""
    folder.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS_POS, *WORDS_NEG, *FILLER]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = tiny_bert_config()
    config.vocab_size = len(vocab)
    BertForSequenceClassification(config).save_pretrained(folder)


def build_tiny_data(path: Path, rows: int = 160) -> None:
    rng = random.Random(0)
    lines = ["text,label"]
    for i in range(rows):
        label = i % 2
        words = rng.sample(FILLER, 4) + [rng.choice(WORDS_POS if label else WORDS_NEG)]
        rng.shuffle(words)
        lines.append(f"{' '.join(words)},{'pos' if label else 'neg'}")
    path.write_text("\n".join(lines) + "\n")


def tiny_params(root: Path) -> dict:
    return {
        "models": {"tiny": {"source": f"local:{root / 'tiny_model'}", "prunable": dict(BERT_PRUNABLE)}},
        "tasks": {"toy": {"source": f"local:{root / 'toy.csv'}", "reader": "csv", "labels": ["neg", "pos"],
                          "split": {"validation": 0.2, "test": 0.25, "seed": 0}}},
        "methods": {
            "magnitude": {"scorer": "magnitude"},
            "wanda": {"scorer": "wanda", "num_batches": 2, "batch_size": 8, "max_length": 16},
            "gmp": {"sparsifier": "gmp", "start": 0.1, "end": 0.6, "frequency": 2},
            "seven_dyn": {"sparsifier": "seven_dyn", "window_start": 1, "window_length": 6},
            "pst": {"sparsifier": "pst", "rank_w": 2, "rank_m": 2},
        },
        # at most 80 training rows, batch 16, 2 epochs: 10 optimizer steps
        "recipes": {"quick": {"epochs": 2, "batch_size": 16, "learning_rate": 1.0e-3, "max_length": 16,
                              "max_train_examples": 80}},
        "studies": {
            "curve": {"models": ["tiny"], "tasks": ["toy"], "methods": ["magnitude"],
                      "allocations": ["global", "layerwise"], "structures": ["unstructured", "2:4"],
                      "sparsities": [0.0, 0.5, 0.8], "recipes": ["quick"], "seeds": [0]},
            "compare": {"figure": "method_comparison", "models": ["tiny"], "tasks": ["toy"],
                        "methods": ["magnitude", "wanda", "gmp", "seven_dyn", "pst"], "allocations": ["native"],
                        "sparsities": [0.0, 0.5], "recipes": ["quick"]},
        },
        "mask_analysis": {"studies": ["curve", "compare"]},
        "evaluation": {"epsilon": 0.01, "batch_size": 32, "latency_batch_size": 4, "latency_repeats": 1},
    }


def snakemake(workdir: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real Snakefile in workdir with the local profile (`env`: the environment, default ours)."""
    result = subprocess.run(
        [*SNAKEMAKE, "--directory", str(workdir), "--profile", str(REPO / "workflow/profiles/local"), *args],
        capture_output=True, text=True, timeout=1200, env=env,
    )
    if check and result.returncode:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def planned_jobs(workdir: Path, *targets: str) -> list[tuple[str, str]]:
    """(rule, wildcards) of every job a dry run (of `targets`, default all) would execute."""
    out = snakemake(workdir, "--dry-run", *targets).stdout
    jobs = re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)*)", out, flags=re.M)
    planned = []
    for rule, body in jobs:
        match = re.search(r"wildcards: (.*)", body)
        planned.append((rule, match.group(1) if match else ""))
    return planned


def small_params(root: Path, epochs: int = 2) -> dict:
    """tiny_params cut to one study of magnitude pruning at 0 and 0.5 (2 fine-tunes): the least
    that exercises every rule. `epochs` stretches the fine-tunes (5 optimizer steps each)."""
    params = tiny_params(root)
    params["methods"] = {"magnitude": params["methods"]["magnitude"]}
    params["recipes"]["quick"]["epochs"] = epochs
    curve = params["studies"]["curve"]
    params["studies"] = {"curve": {**curve, "allocations": ["global"], "structures": ["unstructured"],
                                   "sparsities": [0.0, 0.5]}}
    params["mask_analysis"] = {"studies": ["curve"]}
    return params


def write_workdir(root: Path, params: dict) -> Path:
    """The tiny model, toy data and `params` (a function of root) in root; returns root."""
    build_tiny_model(root / "tiny_model")
    build_tiny_data(root / "toy.csv")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """The one-line errors ('error: ...') a snakemake run printed."""
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error: ")]
