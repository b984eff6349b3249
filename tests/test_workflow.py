"""The real Snakefile on a tiny config (tiny random BERT, tiny local data) in a temporary directory."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import BERT_PRUNABLE, tiny_bert_config
from safetensors.torch import load_file
from transformers import BertForSequenceClassification, BertTokenizer

from sparselab.io import load_masks

pytestmark = pytest.mark.workflow
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
        "evaluation": {"epsilon": 0.01, "batch_size": 32, "latency_batch_size": 4, "latency_repeats": 1},
    }


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*SNAKEMAKE, "--directory", str(workdir), "--profile", str(REPO / "workflow/profiles/local"), *args],
        capture_output=True, text=True, timeout=1200,
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


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("workflow")
    build_tiny_model(root / "tiny_model")
    build_tiny_data(root / "toy.csv")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(root), sort_keys=False))
    snakemake(root)
    return root


def test_outputs_and_tables(workdir):
    runs = pd.read_csv(workdir / "results/tables/runs.csv")
    expected = {"model", "task", "method", "allocation", "structure", "sparsity", "achieved_sparsity", "recipe",
                "seed", "stage", "metric", "value", "dense_value", "trainable_params", "wall_seconds"}
    assert expected <= set(runs.columns)
    curve = pd.read_csv(workdir / "results/tables/curve.csv")
    # 2 allocations x (3 unstructured sparsities + dense and 0.5 for 2:4) x 2 stages
    assert len(curve) == 2 * (3 + 2) * 2
    assert set(curve["stage"]) == {"pruned", "finetuned"}
    compare = pd.read_csv(workdir / "results/tables/compare.csv")
    # every method's line starts at the dense run; one-shot magnitude and wanda have 2 stages, while
    # gmp, seven_dyn and pst prune during training
    assert len(compare) == 2 * 2 * 2 + 3 * 2
    sparse = compare[compare["sparsity"] > 0]
    assert dict(zip(sparse["method"], sparse["allocation"])) == {
        "magnitude": "global", "wanda": "row", "gmp": "global", "seven_dyn": "global", "pst": "layerwise"}
    assert set(sparse[sparse["method"].isin(["gmp", "seven_dyn", "pst"])]["stage"]) == {"finetuned"}
    pst = sparse[sparse["method"] == "pst"].iloc[0]
    assert pst["trainable_params"] < sparse[sparse["method"] == "gmp"].iloc[0]["trainable_params"]
    key = ["method", "allocation", "structure", "sparsity", "stage"]
    assert not runs.duplicated(key).any()
    assert set(map(tuple, runs[key].values)) == set(map(tuple, pd.concat([curve, compare])[key].values))
    sparse = runs[runs["sparsity"] > 0]
    assert (sparse["achieved_sparsity"] - sparse["sparsity"]).abs().max() < 1e-3
    curves = pd.read_csv(workdir / "results/tables/curves.csv")
    assert len(curves) == 2 * 2 * 2 + 2 + 3  # per (setup, stage); magnitude/global is in both studies
    for name in ("curve", "compare"):
        for suffix in ("png", "pdf"):
            assert (workdir / f"results/figures/{name}.{suffix}").stat().st_size > 1000
    source = json.loads((workdir / "resources/models/tiny/source.json").read_text())
    assert source["source"].startswith("local:") and "model.safetensors" in source["files"]


def test_masks_reports_and_checkpoints_agree(workdir):
    masks_dir = workdir / "results/masks/tiny/toy/magnitude"
    reports = sorted(masks_dir.glob("*/s*/seed0/report.json"))
    assert len(reports) == 6
    for report_path in reports:
        report = json.loads(report_path.read_text())
        assert report["achieved_sparsity"] == pytest.approx(report["requested_sparsity"], abs=1e-3)
        assert len(report["matrices"]) == 12
    run = workdir / "results/finetune/tiny/toy/magnitude/global-unstructured/s0.8/quick/seed0"
    weights = load_file(run / "model.safetensors")
    masks = load_masks(masks_dir / "global-unstructured/s0.8/seed0/mask.safetensors")
    for name, mask in masks.items():
        assert (weights[name][~mask] == 0).all()
    nested = load_masks(masks_dir / "global-unstructured/s0.5/seed0/mask.safetensors")
    assert all(bool((masks[n] <= nested[n]).all()) for n in masks)
    log = pd.read_csv(run / "train_log.csv")
    assert list(log.columns) == ["step", "epoch", "loss", "learning_rate", "seconds"] and len(log) > 0


def test_rerun_does_nothing_and_one_sparsity_reruns_its_chain(workdir, tmp_path):
    assert planned_jobs(workdir) == []
    clone = tmp_path / "clone"
    shutil.copytree(workdir, clone, symlinks=True)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["studies"]["curve"]["sparsities"] = [0.0, 0.5, 0.7]
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    planned = planned_jobs(clone)
    rules = sorted(rule for rule, _ in planned)
    summary = {"aggregate", "study_table", "study_figure", "all"}
    assert rules == sorted([*summary, *["prune", "finetune", "evaluate_finetuned", "evaluate_oneshot"] * 2]), planned
    assert all("s0.7" in wildcards for rule, wildcards in planned if rule not in summary)
    assert ("study_table", "study=curve") in planned  # the other study's table stays as it is


def test_a_study_target_builds_only_that_study(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(tmp_path), sort_keys=False))
    planned = planned_jobs(tmp_path, "compare")
    finetuned = sorted(wildcards for rule, wildcards in planned if rule == "finetune")
    assert len(finetuned) == 6 and not any("2of4" in w or "s0.8" in w for w in finetuned), finetuned
    assert ("compare", "") in planned and not any(rule == "aggregate" for rule, _ in planned)


def test_same_params_give_identical_masks_weights_and_metrics(workdir, tmp_path):
    clone = tmp_path / "again"
    shutil.copytree(workdir, clone, symlinks=True)
    shutil.rmtree(clone / "results")
    snakemake(clone)
    for pattern in ("results/masks/**/mask.safetensors", "results/finetune/**/model.safetensors", "results/eval/**/finetuned.json"):
        first = sorted(workdir.glob(pattern))
        assert first, pattern
        for path in first:
            other = clone / path.relative_to(workdir)
            if path.suffix == ".json":
                assert json.loads(path.read_text())["metrics"] == json.loads(other.read_text())["metrics"]
            else:
                assert path.read_bytes() == other.read_bytes(), path


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p["studies"]["curve"].update(sparsities=[0.0, 1.0]), "sparsities[1]: 1.0"),
        (lambda p: p["studies"]["curve"].update(methods=["magnitud"]), "magnitud"),
        (lambda p: p["studies"]["curve"].update(structures=["4:4"]), "4:4"),
        (lambda p: p["methods"].update(magnitude={"scorer": "nosuch"}), "nosuch"),
        (lambda p: p["methods"]["seven_dyn"].update(window_length=12), "ends at step 13, after the run's 10"),
        (lambda p: p["studies"].update(finetune=p["studies"].pop("compare")), "studies.finetune: the name is taken"),
    ],
)
def test_bad_params_stop_before_any_job(tmp_path, mutate, message):
    params = tiny_params(tmp_path)
    mutate(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = snakemake(tmp_path, check=False)
    assert result.returncode != 0
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error: params.yaml")]
    assert len(errors) == 1 and message in errors[0], result.stdout + result.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()
