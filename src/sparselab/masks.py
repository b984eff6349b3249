"""From scores to masks: allocation (global / layerwise) composed with structure (unstructured / n:m).

Conventions (methods.md, shared conventions):
- a mask is a bool tensor shaped like its weight, True = kept;
- exactly k = round((1 - s) * numel) weights are kept (round half up), over the whole prunable set
  for `global`, per matrix for `layerwise` and per output row for `row`;
- ties are broken by position: among equal scores the earlier weight (prunable order, then
  row-major) is kept, so masks are deterministic and nested across sparsities (the set kept at a
  higher sparsity is a subset of the set kept at a lower one).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import torch

from sparselab.registry import Registry

Masks = dict[str, torch.Tensor]
Allocation = Callable[[dict[str, torch.Tensor], float], Masks]
ALLOCATIONS: Registry[Allocation] = Registry("allocation")


def keep_count(numel: int, sparsity: float) -> int:
    """k = round((1 - s) * numel), rounding halves up (Python's round() would round to even)."""
    return int(math.floor((1.0 - sparsity) * numel + 0.5))


def top_k_flat(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k highest entries of a 1-D tensor; ties go to the lower index.

    scores: (N,) float. The k-th largest value is the threshold; everything above it is kept and
    the remaining places go to the first entries equal to it.
    """
    n = scores.numel()
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN; a scorer must return finite values")
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool)
    if k >= n:
        return torch.ones(n, dtype=torch.bool)
    threshold = torch.kthvalue(scores, n - k + 1).values
    keep = scores > threshold
    missing = k - int(keep.sum())
    ties = torch.nonzero(scores == threshold).flatten()[:missing]
    keep[ties] = True
    return keep


@ALLOCATIONS.register("global")
def allocate_global(scores: dict[str, torch.Tensor], sparsity: float) -> Masks:
    """One threshold over the whole prunable set: matrices end up with different sparsities."""
    flat = torch.cat([s.flatten().float() for s in scores.values()])  # (N_total,)
    keep = top_k_flat(flat, keep_count(flat.numel(), sparsity))
    masks, offset = {}, 0
    for name, s in scores.items():
        masks[name] = keep[offset : offset + s.numel()].reshape(s.shape)
        offset += s.numel()
    return masks


@ALLOCATIONS.register("layerwise")
def allocate_layerwise(scores: dict[str, torch.Tensor], sparsity: float) -> Masks:
    """The same sparsity in every matrix, each with its own threshold."""
    return {
        name: top_k_flat(s.flatten().float(), keep_count(s.numel(), sparsity)).reshape(s.shape)
        for name, s in scores.items()
    }


@ALLOCATIONS.register("row")
def allocate_rowwise(scores: dict[str, torch.Tensor], sparsity: float) -> Masks:
    """The same sparsity in every output row of every matrix (Wanda compares weights within a row).

    scores: (out, in) per matrix; each row keeps k = round((1 - s) * in), ties to the lower index.
    """
    masks = {}
    for name, s in scores.items():
        k = keep_count(s.shape[-1], sparsity)
        order = torch.sort(s.float(), dim=-1, descending=True, stable=True).indices  # (out, in)
        keep = torch.zeros_like(s, dtype=torch.bool)
        keep.scatter_(-1, order[:, :k], True)
        masks[name] = keep
    return masks


@dataclass(frozen=True)
class Structure:
    """Unstructured (n = m = None) or n:m: keep n of every m consecutive weights along the input."""

    n: int | None = None
    m: int | None = None

    @classmethod
    def parse(cls, text: str) -> "Structure":
        """`unstructured` or 'N:M' with 1 <= N < M; a one-line ValueError naming what is allowed."""
        if text == "unstructured":
            return cls()
        match = re.fullmatch(r"([0-9]+):([0-9]+)", text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"{text!r} is not a structure (allowed: unstructured, or 'N:M' with 1 <= N < M, e.g. '2:4')")
        n, m = int(match.group(1)), int(match.group(2))
        if not 1 <= n < m:
            raise ValueError(f"{text!r} keeps N={n} of every M={m} weights (allowed: 1 <= N < M, e.g. '2:4')")
        return cls(n, m)

    @property
    def is_nm(self) -> bool:
        return self.m is not None

    @property
    def sparsity(self) -> float | None:
        """The sparsity an n:m structure fixes (1 - n/m); None for unstructured."""
        return 1.0 - self.n / self.m if self.is_nm else None

    @property
    def slug(self) -> str:
        """Path-safe name: `unstructured` or `2of4`."""
        return f"{self.n}of{self.m}" if self.is_nm else "unstructured"

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else "unstructured"


def nm_mask(scores: torch.Tensor, n: int, m: int, name: str = "weight") -> torch.Tensor:
    """Keep the n highest scores in every group of m consecutive inputs; ties go to the lower index.

    scores: (out, in) with in divisible by m, viewed as (out, in/m, m) groups.
    """
    out_features, in_features = scores.shape
    if in_features % m:
        raise ValueError(f"{name}: n:m structure needs m={m} to divide the input dimension {in_features}")
    groups = scores.float().reshape(out_features, in_features // m, m)
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices  # (out, in/m, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    return keep.reshape(out_features, in_features)


def build_masks(scores: dict[str, torch.Tensor], sparsity: float, allocation: str, structure: Structure) -> Masks:
    """Masks for every prunable matrix: n:m groups if the structure says so, else the allocation."""
    if structure.is_nm:
        if not math.isclose(sparsity, structure.sparsity, abs_tol=1e-9):
            raise ValueError(f"structure {structure} fixes sparsity {structure.sparsity:g}, not {sparsity:g}")
        return {name: nm_mask(s, structure.n, structure.m, name) for name, s in scores.items()}
    return ALLOCATIONS.get(allocation)(scores, sparsity)


def sparsity_report(masks: Masks, requested: float, allocation: str, structure: Structure) -> dict:
    """Requested vs achieved sparsity overall and per matrix; fails if they disagree beyond rounding.

    With `global` allocation the target holds over the whole set; with `layerwise` or n:m it holds
    in every matrix (each within half a weight of rounding).
    """
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    matrices = []
    for name, mask in masks.items():
        n_kept = int(mask.sum())
        matrices.append(
            {"name": name, "shape": list(mask.shape), "numel": mask.numel(), "kept": n_kept,
             "achieved": 1.0 - n_kept / mask.numel()}
        )
    per_matrix = structure.is_nm or allocation == "layerwise"
    for row, mask in zip(matrices, masks.values()):
        expected = (mask.shape[0] * keep_count(mask.shape[1], requested) if allocation == "row" and not structure.is_nm
                    else keep_count(row["numel"], requested))
        if (per_matrix or allocation == "row") and row["kept"] != expected:
            raise AssertionError(f"{row['name']}: kept {row['kept']} weights, expected {expected}")
    if allocation == "global" and not structure.is_nm and kept != keep_count(total, requested):
        raise AssertionError(f"kept {kept} weights overall, expected {keep_count(total, requested)}")
    return {
        "requested_sparsity": requested,
        "achieved_sparsity": 1.0 - kept / total,
        "kept": kept,
        "total": total,
        "allocation": allocation,
        "structure": str(structure),
        "matrices": matrices,
    }
