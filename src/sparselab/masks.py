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


# Below this size the plain selection is as fast as the searched one.
_SMALL = 1 << 16
# Evenly spaced entries used to guess a narrow value range that holds the k-th largest score.
_SAMPLE = 1 << 14
# Threshold guesses tried before selecting exactly among the bracketed entries (which costs
# about four passes over the scores, as much as four guesses).
_GUESSES = 8


def _above(scores: torch.Tensor, value: torch.Tensor, out: torch.Tensor) -> int:
    """How many entries exceed `value`; `out` (float32, like scores) receives the 0/1 mask.

    Comparing into floats and summing is several times faster on a CPU than a bool tensor and
    count_nonzero; a float32 sum of 0/1 is exact below 2^24 entries, float64 above.
    """
    torch.gt(scores, value, out=out)
    return int(out.sum(dtype=torch.float32 if scores.numel() < 1 << 24 else torch.float64))


def _threshold_search(scores: torch.Tensor, k: int) -> tuple[torch.Tensor | None, tuple | None]:
    """(the 0/1 float mask {scores > t} for a t with exactly k entries above it, or None;
    (low, high, count above high) with the k-th largest in (low, high], or None).

    Two order statistics of an evenly spaced sample bracket the k-th largest score in (low, high];
    then t is searched inside the bracket by interpolation on the counts (every third guess
    bisects, so skewed data cannot stall it), each guess one vectorised compare-and-sum. No t
    exists when the k-th and (k+1)-th largest are equal (a tie no threshold splits, such as many
    zero scores): the bracket, narrowed by the search, then tells the caller where to select
    exactly. Both are None if the sample missed.
    """
    n = scores.numel()
    sample = scores[:: n // _SAMPLE]  # (~_SAMPLE,)
    position = (n - k) / n * sample.numel()  # where the answer sits in the sorted sample
    margin = 4.0 * sample.numel() ** 0.5  # ~8 standard deviations of that position
    low = torch.kthvalue(sample, max(int(position - margin), 1)).values
    high = torch.kthvalue(sample, min(int(position + margin) + 1, sample.numel())).values
    # two reused buffers (a fresh tensor of tens of MB per guess is new memory from the OS each time)
    mask, scratch = torch.empty_like(scores, dtype=torch.float32), torch.empty_like(scores, dtype=torch.float32)
    count_low = _above(scores, low, mask)
    if count_low < k:  # low sits on a block of ties: step down to the next smaller sampled value
        smaller = sample[sample < low]
        if smaller.numel():
            low = smaller.max()
            count_low = _above(scores, low, mask)
    count_high = _above(scores, high, scratch)
    if count_high >= k:  # likewise above
        larger = sample[sample > high]
        if larger.numel():
            high = larger.min()
            count_high = _above(scores, high, scratch)
    if not count_high < k <= count_low:
        return None, None
    for guess in range(_GUESSES):
        if count_low == k:
            return mask, None
        fraction = 0.5 if guess % 3 == 2 else (count_low - k) / (count_low - count_high)
        value = low + (high - low) * fraction
        if not low < value < high:  # interpolation hit an end: bisect instead
            value = (low + high) / 2
            if not low < value < high:  # adjacent floats: nothing lies strictly between
                break
        count = _above(scores, value, scratch)
        if count in (count_low, count_high):  # no entry between: a block of ties holds the k-th largest
            break
        if count >= k:
            low, count_low = value, count
            mask, scratch = scratch, mask
        else:
            high, count_high = value, count
    return None, (low, high, count_high)


def kth_largest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest entry of a 1-D tensor (1 <= k <= numel), exactly.

    kthvalue on a CPU; on a GPU the smallest of a radix top-k (CUDA's kthvalue takes 65 ms over
    10M scores on an H100, top-k 0.3 ms).
    """
    if scores.device.type == "cpu":
        return torch.kthvalue(scores, scores.numel() - k + 1).values
    return torch.topk(scores, k, sorted=False).values.min()


def top_k_flat(scores: torch.Tensor, k: int, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """Mask of the k highest entries of a 1-D tensor; ties go to the lower index.

    scores: (N,) float. `dtype`: bool, or a float dtype for a 0/1 multiplier (what a training step
    multiplies with). A plain kthvalue over 10M scores takes ~0.2 s on one CPU thread, as long as
    a fine-tuning step of MiniLM, and during-training methods select every step; so large inputs
    on a CPU first try a threshold search (_threshold_search, 2-3x faster). Otherwise the k-th largest value
    is the threshold: everything above it is kept and the remaining places go to the first entries
    equal to it.
    """
    n = scores.numel()
    if scores.device.type == "cpu" and torch.isnan(scores.sum()) and torch.isnan(scores).any():
        raise ValueError("scores contain NaN; a scorer must return finite values")  # (a GPU does not wait to check)
    if k <= 0:
        return torch.zeros(n, dtype=dtype, device=scores.device)
    if k >= n:
        return torch.ones(n, dtype=dtype, device=scores.device)
    bracket = None
    if n > _SMALL and scores.dtype == torch.float32 and scores.device.type == "cpu":  # a GPU selects fast
        mask, bracket = _threshold_search(scores, k)
        if mask is not None:
            return mask.to(dtype)
    if bracket is not None:  # the k-th largest is the (k - #above)-th largest of the few in the bracket
        low, high, above = bracket
        between = scores[(scores > low) & (scores <= high)]
        threshold = torch.kthvalue(between, between.numel() - (k - above) + 1).values
    else:
        threshold = kth_largest(scores, k)
    if scores.device.type != "cpu":  # no host sync: the first (k - #above) tied entries by a running count
        above, ties = scores > threshold, scores == threshold
        places = k - torch.count_nonzero(above)
        return (above | (ties & (torch.cumsum(ties, 0) <= places))).to(dtype)
    keep = torch.ge(scores, threshold, out=torch.empty(n, dtype=dtype, device=scores.device))
    extra = int(keep.sum()) - k  # ties at the threshold beyond the k places
    if extra:
        ties = torch.nonzero(scores == threshold).flatten()
        keep[ties[ties.numel() - extra :]] = False  # the last tied entries lose
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
