"""The two studies that pre-train tiny BERTs from scratch (methods.md sections 1 and 2).

- Miniature sparse scaling law: masked LMs of several widths, sparsities and training lengths,
  each pruned by gmp (the same sparsity in every matrix, cubic from 25% to 75% of training), then
  the law L(S, N, D) fitted to their validation losses (sparselab.scaling_law).
- Abrupt sparsification: dense masked LMs trained on nested fractions of the corpus, their
  prunable weights saved every k steps; the share of |w| < tau against the step, and the essential
  sparsity of each final model fine-tuned on the downstream task.

The corpus is the training split of one task of params.yaml (its texts; labels unused), the
validation split gives the evaluation loss, and the tokenizer is one model's of params.yaml (its
`vocab_size` most frequent pieces in the corpus).
Units of the fit: N in millions of non-zero non-embedding parameters, D in millions of tokens.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from sparselab.aggregate import write_csv
from sparselab.batches import Encoded, encode
from sparselab.data import load_split, load_task
from sparselab.evaluate import task_metrics
from sparselab.fetch import verify_record
from sparselab.figures import abrupt_sparsification_figure, scaling_law_figure
from sparselab.finetune import recipe_from_config, train
from sparselab.io import atomic_path, load_tensors, read_json, save_tensors, write_json
from sparselab.mask_analysis import small_weight_share
from sparselab.masks import Structure, build_masks
from sparselab.modeling import configure_threads, load_classifier, load_tokenizer, pick_device
from sparselab.pretrain import PRUNABLE, PretrainConfig, data_fraction, pretrain
from sparselab.prunable import select_prunable
from sparselab.scaling_law import bootstrap, fit, law
from sparselab.sparsifiers import FixedMask

# Beside a pre-trained model with a compact vocabulary: tokenizer id -> model id.
VOCAB_FILE = "vocab_mapping.safetensors"


def corpus(data_dir: Path, split: str) -> list[str]:
    """The texts of one split of a fetched task (a pair's two texts joined by a space)."""
    fields = load_task(data_dir)["text_fields"]
    return [" ".join(row[field] for field in fields) for row in load_split(data_dir, split)]


def pretrain_config(settings: dict, **overrides) -> PretrainConfig:
    """A PretrainConfig from a study's settings (width, layers, heads, ...) and one grid point."""
    values = {**settings, **overrides}
    width = values.pop("width")
    return PretrainConfig(hidden_size=width, intermediate_size=4 * width, num_layers=values.pop("layers"),
                          num_heads=values.pop("heads"), **values)


def scaling_run_stage(model_dir: Path, data_dir: Path, out_paths: list[Path], settings: dict, steps: list[int],
                      threads: int) -> None:
    """Pre-train the grid's points of one width and sparsity, one run per training length in
    `steps` (each its own schedule, from scratch); record each run's S, N, D and final losses in
    the matching `out_paths` entry. One job trains them all: a job's start (importing torch and
    transformers, reading the corpus) costs about as much as a short run."""
    if len(out_paths) != len(steps):
        raise ValueError(f"{len(out_paths)} record paths for {len(steps)} training lengths")
    configure_threads(threads)
    verify_record(model_dir)
    verify_record(data_dir)
    texts, eval_texts, tokenizer = corpus(data_dir, "train"), corpus(data_dir, "validation"), load_tokenizer(model_dir)
    for out_path, length in zip(out_paths, steps):
        config = pretrain_config(settings, steps=length)
        result = pretrain(texts, eval_texts, tokenizer, config, device=pick_device())
        write_json(out_path, {
            "width": settings["width"], "layers": settings["layers"], "sparsity": config.sparsity,
            "steps": config.steps, "achieved_sparsity": result.sparsity,
            "N": result.nonzero_non_embedding_params / 1e6, "D": result.tokens_seen / 1e6,
            "non_embedding_params": result.non_embedding_params, "eval_loss": result.eval_loss,
            "train_loss": result.train_loss, "wall_seconds": result.wall_seconds,
        })


def scaling_law_stage(records: list[Path], fit_settings: dict, points_csv: Path, coefficients_csv: Path,
                      png: Path, pdf: Path) -> None:
    """Fit the law to the grid's evaluation losses, bootstrap its coefficients, draw the figure."""
    points = pd.DataFrame([read_json(path) for path in records]).sort_values(["width", "sparsity", "steps"])
    arrays = [points[column].to_numpy(float) for column in ("sparsity", "N", "D", "eval_loss")]
    settings = {"delta": fit_settings["delta"], "residual": fit_settings["residual"]}
    best = fit(*arrays, **settings, starts=fit_settings["starts"], seed=fit_settings["seed"])
    low, high = bootstrap(*arrays, **settings, resamples=fit_settings["bootstrap"], starts=5, seed=fit_settings["seed"])
    coefficients = pd.DataFrame({
        "coefficient": list("abcdefg"), "value": best.coef.to_array(), "low": low.to_array(),
        "high": high.to_array(), "level": 0.95, "huber_loss": best.loss, "points": len(points),
    })
    write_csv(points.assign(predicted=law(best.coef, *arrays[:3])), points_csv)
    write_csv(coefficients, coefficients_csv)
    scaling_law_figure(points, best.coef, s_max=float(points["sparsity"].max()), png=png, pdf=pdf)



def abrupt_pretrain_stage(model_dir: Path, data_dir: Path, out_dir: Path, fraction: float, settings: dict,
                          taus: list[float], threads: int) -> None:
    """Pre-train a dense masked LM on the first `fraction` of the corpus, saving the prunable weights
    every settings["checkpoint_every"] steps; write their small-weight shares (shares.csv) and the
    final model as a classifier-ready folder (model/: config.json, weights, tokenizer)."""
    configure_threads(threads)
    verify_record(model_dir)
    verify_record(data_dir)
    tokenizer = load_tokenizer(model_dir)
    texts = data_fraction(corpus(data_dir, "train"), fraction)
    with atomic_path(out_dir, directory=True) as tmp:
        result = pretrain(texts, corpus(data_dir, "validation"), tokenizer, pretrain_config(settings),
                          tmp / "checkpoints", device=pick_device())
        rows = []
        for path in result.checkpoints:
            shares = small_weight_share(load_tensors(path), taus)
            step = int(path.stem.removeprefix("step"))
            rows += [{"fraction": fraction, "step": step, "tau": tau, "share": share} for tau, share in shares.items()]
        write_csv(pd.DataFrame(rows), tmp / "shares.csv")
        result.model.save_pretrained(str(tmp / "model"))
        tokenizer.save_pretrained(str(tmp / "model"))
        if result.vocab.mapping is not None:  # the model reads the run's ids, not the tokenizer's
            save_tensors(tmp / "model" / VOCAB_FILE, {"mapping": result.vocab.mapping})
        write_json(tmp / "pretrain.json", {"fraction": fraction, "texts": len(texts), "eval_loss": result.eval_loss,
                                           "train_loss": result.train_loss, "wall_seconds": result.wall_seconds})


def abrupt_downstream_stage(pretrained_dir: Path, data_dir: Path, out_dir: Path, sparsities: list[float],
                            recipe: dict, epsilon: float, evaluation: dict, seed: int, threads: int) -> None:
    """Essential sparsity of a pre-trained tiny BERT on the task: one-shot global magnitude pruning
    of its encoder's Linear weights at each sparsity, fine-tuning with the mask fixed, evaluation.
    Writes out_dir/record.json (the curve and the essential sparsity) and a train log per sparsity."""
    configure_threads(threads)
    verify_record(data_dir)
    task = load_task(data_dir)
    parsed = recipe_from_config(recipe)
    tokenizer = load_tokenizer(pretrained_dir)
    encoded = {split: _in_run_ids(encode(rows, tokenizer, task["text_fields"], parsed.max_length,
                                         task["labels"] is None), pretrained_dir)
               for split, rows in (("train", load_split(data_dir, "train")[: parsed.max_train_examples]),
                                   ("eval", load_split(data_dir, task["eval_split"])))}
    device, headline = pick_device(), task["metrics"][0]
    curve = []
    with atomic_path(out_dir, directory=True) as tmp:
        for sparsity in sparsities:
            model = load_classifier(pretrained_dir, task, seed)
            prunable = select_prunable(model, [PRUNABLE], [])
            sparsifier = None
            if sparsity > 0:
                masks = build_masks({n: w.detach().abs() for n, w in prunable.items()}, sparsity, "global", Structure())
                sparsifier = FixedMask(masks)
                sparsifier.attach(model, prunable, target=None)
            train(model, encoded["train"], parsed, seed, device, tmp / f"train_log_s{sparsity:g}.csv", sparsifier)
            metrics = task_metrics(model, encoded["eval"], task["metrics"], evaluation["batch_size"], device,
                                   evaluation["precision"])
            curve.append({"sparsity": sparsity, "metric": headline, "value": metrics[headline]})
        dense = next(point["value"] for point in curve if point["sparsity"] == 0)
        within = [point["sparsity"] for point in curve if point["value"] >= dense - epsilon]
        write_json(tmp / "record.json", {"curve": curve, "dense_value": dense, "epsilon": epsilon,
                                         "essential_sparsity": max(within)})


def _in_run_ids(data: Encoded, pretrained_dir: Path) -> Encoded:
    """Tokenizer ids -> the ids the pre-trained model reads (its compact vocabulary), if it has one."""
    if not (pretrained_dir / VOCAB_FILE).exists():
        return data
    mapping = load_tensors(pretrained_dir / VOCAB_FILE)["mapping"]
    return replace(data, input_ids=[mapping[torch.tensor(ids)].tolist() for ids in data.input_ids],
                   pad_token_id=int(mapping[data.pad_token_id]))


def abrupt_sparsification_stage(runs: list[Path], downstream: list[Path], shares_csv: Path, essential_csv: Path,
                                png: Path, pdf: Path) -> None:
    """Collect the runs' small-weight shares and downstream essential sparsities; draw the figure."""
    shares = pd.concat([pd.read_csv(run / "shares.csv") for run in runs], ignore_index=True)
    records = [read_json(folder / "record.json") for folder in downstream]
    fractions = [read_json(run / "pretrain.json")["fraction"] for run in runs]
    essential = pd.DataFrame([{"fraction": fraction, **{k: v for k, v in record.items() if k != "curve"}}
                              for fraction, record in zip(fractions, records)])
    curves = pd.DataFrame([{"fraction": fraction, **point} for fraction, record in zip(fractions, records)
                           for point in record["curve"]])
    write_csv(shares, shares_csv)
    write_csv(essential, essential_csv)
    abrupt_sparsification_figure(shares, curves, essential, png, pdf)
