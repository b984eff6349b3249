"""Comparing masks and locating pruned weights (methods.md section 1, essential sparsity).

The paper reports that one-shot and lottery-ticket masks agree (cosine similarity above 0.96 at
10-40% sparsity), that most low-magnitude weights sit in the FFN matrices, and that the share of
near-zero weights jumps during pre-training. These functions compute those quantities from masks
(bool tensors, True = kept, as `sparselab.io.load_masks` returns them) and from weights. A mask is
never inferred from W == 0: a pruned weight may be non-zero and a kept one may be exactly zero.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import torch

from sparselab.aggregate import write_csv
from sparselab.figures import mask_analysis_figure
from sparselab.io import load_compact_masks
from sparselab.masks import Masks

# The symmetric metrics of `mask_overlap`, the ones `overlap_matrix` can show.
OVERLAP_METRICS = (
    "kept_iou", "kept_cosine", "pruned_iou", "pruned_cosine",
    "chance_kept_iou", "chance_kept_cosine", "chance_pruned_iou", "chance_pruned_cosine",
)

# Module types of a BERT encoder layer, in display order, each with the pattern of its weight.
MODULE_TYPES = {
    "attention.query": r"attention\.self\.query",
    "attention.key": r"attention\.self\.key",
    "attention.value": r"attention\.self\.value",
    "attention.output": r"attention\.output\.dense",
    "ffn.intermediate": r"intermediate\.dense",
    "ffn.output": r"output\.dense",  # anchored at the layer, so attention.output.dense never matches
}
_MODULE_PATTERNS = {kind: re.compile(rf"(^|\.)layer\.\d+\.{pattern}\.weight$")
                    for kind, pattern in MODULE_TYPES.items()}


def _check_masks(masks: Masks) -> None:
    """ValueError unless every mask is a bool tensor (a weight tensor passed by mistake is not)."""
    for name, mask in masks.items():
        if mask.dtype != torch.bool:
            raise ValueError(f"mask {name!r} has dtype {mask.dtype}, not bool: pass masks (True = kept), not weights")


def _similarities(both: float, size_a: float, size_b: float) -> tuple[float, float]:
    """(IoU, cosine) of two sets from their sizes and the size of their intersection.

    Both sets empty: 1.0 for both (they agree); one empty, the other not: 0.0.
    """
    if size_a == 0 and size_b == 0:
        return 1.0, 1.0
    union = size_a + size_b - both
    return both / union, (both / math.sqrt(size_a * size_b) if size_a and size_b else 0.0)


def mask_overlap(a: Masks, b: Masks) -> dict[str, float]:
    """How far two masks over the same prunable set agree, over all their weights together.

    Compared sets: A, B = the weights each mask keeps (`kept_*`), and their complements, the
    weights each prunes (`pruned_*`). IoU = |A∩B| / |A∪B|; cosine = |A∩B| / sqrt(|A| |B|), the
    cosine similarity of the 0/1 kept vectors (the essential-sparsity paper's mask similarity).
    Both sets empty gives 1.0, one of them empty 0.0.

    `chance_*`: the same metrics for two independent uniformly random masks with the same kept
    counts, the chance level for a plot. With densities p = |A|/n, q = |B|/n over n weights the
    expected intersection is p q n; the chance cosine, sqrt(p q), is exact, the chance IoU uses
    the expected intersection (exact as n grows). Also returned: the counts `weights` (n),
    `kept_a`, `kept_b`, `kept_both`.

    ValueError if the masks cover different names or shapes, or a mask is not bool.
    """
    if a.keys() != b.keys():
        only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        raise ValueError(
            f"the masks cover different matrices: {len(only_a)} only in the first {only_a[:2]}, "
            f"{len(only_b)} only in the second {only_b[:2]}"
        )
    for name in a:
        if a[name].shape != b[name].shape:
            raise ValueError(
                f"mask {name!r} is {tuple(a[name].shape)} in the first masks, {tuple(b[name].shape)} in the second"
            )
    _check_masks(a)
    _check_masks(b)
    n = sum(mask.numel() for mask in a.values())
    if n == 0:
        raise ValueError("the masks hold no weights")
    kept_a = sum(int(torch.count_nonzero(mask)) for mask in a.values())
    kept_b = sum(int(torch.count_nonzero(mask)) for mask in b.values())
    kept_both = sum(int(torch.count_nonzero(a[name] & b[name])) for name in a)
    pruned_both = n - (kept_a + kept_b - kept_both)
    chance_kept_both = kept_a * kept_b / n  # p q n
    chance_pruned_both = (n - kept_a) * (n - kept_b) / n  # (1 - p)(1 - q) n
    result = {"weights": n, "kept_a": kept_a, "kept_b": kept_b, "kept_both": kept_both}
    for prefix, both, size_a, size_b in [
        ("kept", kept_both, kept_a, kept_b),
        ("pruned", pruned_both, n - kept_a, n - kept_b),
        ("chance_kept", chance_kept_both, kept_a, kept_b),
        ("chance_pruned", chance_pruned_both, n - kept_a, n - kept_b),
    ]:
        result[f"{prefix}_iou"], result[f"{prefix}_cosine"] = _similarities(both, size_a, size_b)
    return result


def overlap_matrix(masks_by_label: dict[str, Masks], metric: str) -> pd.DataFrame:
    """Square table of `metric` (one of OVERLAP_METRICS) between every pair of masks, labels on
    both axes in the given order: a heatmap across sparsities, methods or tasks."""
    if metric not in OVERLAP_METRICS:
        raise ValueError(f"unknown overlap metric {metric!r} (allowed: {', '.join(OVERLAP_METRICS)})")
    labels = list(masks_by_label)
    table = pd.DataFrame(index=pd.Index(labels), columns=pd.Index(labels), dtype=float)
    for i, row in enumerate(labels):
        for column in labels[i:]:  # the metrics are symmetric: each pair once
            value = mask_overlap(masks_by_label[row], masks_by_label[column])[metric]
            table.loc[row, column] = table.loc[column, row] = value
    return table


def module_type(name: str) -> str:
    """The module type of a BERT encoder weight (a key of MODULE_TYPES), else "other".

    E.g. 'bert.encoder.layer.3.output.dense.weight' is "ffn.output" and
    'bert.encoder.layer.3.attention.output.dense.weight' is "attention.output"; biases,
    embeddings, the pooler and the classifier are "other".
    """
    return next((kind for kind, pattern in _MODULE_PATTERNS.items() if pattern.search(name)), "other")


def pruned_share_by_module(masks: Masks) -> pd.DataFrame:
    """Where the pruned weights sit: one row per module type present (MODULE_TYPES order, then "other").

    Columns: `weights` and `pruned` (counts); `sparsity`, the share of the type's weights that
    are pruned; `share_of_weights`, the type's share of all weights; `share_of_pruned`, its share
    of all pruned weights (what "most low-magnitude weights sit in the FFN" reads off); and
    `over_representation` = share_of_pruned / share_of_weights (1.0 = pruned in proportion to its
    size). FFN matrices hold 2/3 of BERT's prunable weights, so a share of pruned near 2/3 alone
    is no preference. Nothing pruned: the last two columns are NaN.
    """
    _check_masks(masks)
    counts: dict[str, list[int]] = {kind: [0, 0] for kind in [*MODULE_TYPES, "other"]}
    for name, mask in masks.items():
        count = counts[module_type(name)]
        count[0] += mask.numel()
        count[1] += mask.numel() - int(torch.count_nonzero(mask))
    table = pd.DataFrame.from_dict(counts, orient="index", columns=["weights", "pruned"])
    table = table[table["weights"] > 0].rename_axis("module_type")
    total_pruned = table["pruned"].sum()
    table["sparsity"] = table["pruned"] / table["weights"]
    table["share_of_weights"] = table["weights"] / table["weights"].sum()
    table["share_of_pruned"] = table["pruned"] / total_pruned if total_pruned else math.nan
    table["over_representation"] = table["share_of_pruned"] / table["share_of_weights"]
    return table


def small_weight_share(weights: dict[str, torch.Tensor], taus: list[float]) -> dict[float, float]:
    """For each tau, the share of all given weights with |w| < tau (strict), over all tensors together.

    For abrupt sparsification: the paper never defines a zero weight, so the share is read at
    several tau. Counted tensor by tensor, never concatenated.
    """
    total = sum(w.numel() for w in weights.values())
    if total == 0:
        raise ValueError("no weights given")
    small = dict.fromkeys(taus, 0)
    for w in weights.values():
        magnitude = w.detach().abs()
        for tau in taus:
            small[tau] += int(torch.count_nonzero(magnitude < tau))
    return {float(tau): count / total for tau, count in small.items()}


# What a comparison varies (the run fields that differ within a pair); every other field is shared.
COMPARISONS = {"sparsity": ("sparsity",), "method": ("method", "allocation", "structure"), "task": ("task",)}
RUN_FIELDS = ("model", "task", "method", "allocation", "structure", "sparsity", "recipe", "seed")
_REPORTED = ("kept_cosine", "kept_iou", "pruned_iou", "chance_kept_cosine", "chance_kept_iou")


def run_label(run: dict, fields: tuple[str, ...]) -> str:
    """A short label of a run for one comparison: the fields it varies, e.g. 'wanda row-unstructured'."""
    return " ".join(f"s={run[f]:g}" if f == "sparsity" else str(run[f]) for f in fields)


def overlap_table(runs: list[dict], masks: list[Masks]) -> pd.DataFrame:
    """Mask overlap of every pair of runs that differ only in the fields of one comparison.

    runs[i] (the run fields of sparselab.grid.Run) pruned with masks[i]. One row per pair and
    comparison: the comparison, the fields the pair shares, both labels and sparsities, and the
    overlap metrics with their chance levels (mask_overlap).
    """
    rows = []
    for comparison, varied in COMPARISONS.items():
        shared = [f for f in RUN_FIELDS if f not in varied]
        groups: dict[tuple, list[int]] = {}
        for i, run in enumerate(runs):
            groups.setdefault(tuple(run[f] for f in shared), []).append(i)
        for key, members in groups.items():
            for x, i in enumerate(members):
                for j in members[x + 1:]:
                    overlap = mask_overlap(masks[i], masks[j])
                    rows.append({"comparison": comparison, **dict(zip(shared, key)),
                                 "a": run_label(runs[i], varied), "b": run_label(runs[j], varied),
                                 "sparsity_a": runs[i]["sparsity"], "sparsity_b": runs[j]["sparsity"],
                                 **{metric: overlap[metric] for metric in _REPORTED}})
    return pd.DataFrame(rows, columns=["comparison", *RUN_FIELDS, "a", "b", "sparsity_a", "sparsity_b", *_REPORTED])


def module_table(runs: list[dict], masks: list[Masks]) -> pd.DataFrame:
    """pruned_share_by_module of every run: one row per (run, module type), with the run's fields;
    the type's own sparsity is `type_sparsity` (`sparsity` is the run's)."""
    frames = []
    for run, run_masks in zip(runs, masks):
        shares = pruned_share_by_module(run_masks).rename(columns={"sparsity": "type_sparsity"}).reset_index()
        frames.append(shares.assign(**{field: run[field] for field in RUN_FIELDS}))
    columns = [*RUN_FIELDS, "module_type", "weights", "pruned", "type_sparsity", "share_of_weights",
               "share_of_pruned", "over_representation"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def mask_analysis_stage(runs: list[dict], checkpoints: list[Path], overlap_csv: Path, modules_csv: Path,
                        png: Path, pdf: Path) -> None:
    """The masks of fine-tuned sparse runs (read from their compact checkpoints, as each run pruned):
    their pairwise overlaps, where their pruned weights sit, and the figure of both."""
    masks = [load_compact_masks(path) for path in checkpoints]
    overlap, modules = overlap_table(runs, masks), module_table(runs, masks)
    write_csv(overlap, overlap_csv)
    write_csv(modules, modules_csv)
    mask_analysis_figure(overlap, modules, png, pdf)
