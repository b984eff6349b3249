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

import numpy as np
import torch

from sparselab.registry import Registry

Masks = dict[str, torch.Tensor]
Allocation = Callable[[dict[str, torch.Tensor], float], Masks]
ALLOCATIONS: Registry[Allocation] = Registry("allocation")


def keep_count(numel: int, sparsity: float) -> int:
    """k = round((1 - s) * numel), rounding halves up (Python's round() would round to even)."""
    return int(math.floor((1.0 - sparsity) * numel + 0.5))


# Rows up to this long are selected by kthvalue directly (as fast as a search).
_SMALL = 1 << 16
# Evenly spaced entries per row used to guess a narrow value range that holds its k-th largest.
_SAMPLE = 1 << 12
# Counting passes tried before the rows still unresolved are selected exactly, one by one.
_GUESSES = 12
# A bracket holding at most this many entries is gathered and selected from, in one pass that
# costs ~2.5 counting passes, rather than narrowed by more guesses.
_FEW = 1 << 12


def _count_above(scores: torch.Tensor, thresholds: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """(n,) int64: how many entries of each of `rows` of `scores` (n x N, float32 on a CPU) exceed
    its threshold (n,); 0 for the other rows.

    numpy's vectorised compare and count, row by row on views: a pass takes ~2.5x a compiled
    kernel's time, but needs no compiler, whose loading (~3 s) was most of a fresh prune job;
    torch's eager `(scores > t).sum()` is ~10x slower than either.
    """
    values, limits = scores.detach().numpy(), thresholds.tolist()  # a view, no copy
    counts = torch.zeros(scores.shape[0], dtype=torch.int64)
    for row in rows:
        counts[row] = np.count_nonzero(values[row] > limits[row])
    return counts


def _threshold_search(parts: list[torch.Tensor], k: int, near: torch.Tensor | None,
                      count_above: Callable) -> tuple[torch.Tensor, ...]:
    """(low, high, count_low, count_high), each (n,): row i's k-th largest lies in (low, high],
    with count_low >= k entries above low and count_high < k above high.

    parts: (n, N_j) float32 tensors on a CPU; row i is the concatenation of their rows i (never
    formed). Two order statistics of an evenly spaced sample bracket each row's k-th largest, or
    probes beside `near` (n,), a guess close to it (_bracket_near); then the bracket is narrowed
    by false position on the counts, Illinois-style (an end kept twice in a row has its weight
    halved, so one end cannot stay put while the other creeps up on the answer), until exactly k
    entries lie above low, the bracket holds at most _FEW entries (gathering them is cheaper than
    more guesses), or low and high are adjacent floats (a tie at high that no threshold splits,
    such as many zero scores). Each guess is one compare-and-count pass over the rows still open;
    rows still open after _GUESSES guesses are left as they are. `count_above`: the counting pass
    (_count_above, or a compiled one with the same contract).
    """
    every_row = list(range(parts[0].shape[0]))

    def count(thresholds: torch.Tensor, rows: list[int]) -> torch.Tensor:
        return sum(count_above(part, thresholds, rows) for part in parts)

    bracket = None if near is None else _bracket_near(count, near, k, every_row)
    low, high, count_low, count_high = bracket if bracket is not None else _bracket_by_sample(parts, count, k, every_row)
    # false position on f(t) = #entries above t - k: f(low) >= 0 > f(high), weights start at f
    weight_low, weight_high = (count_low - k).double(), (count_high - k).double()
    last_moved = torch.zeros_like(count_low)  # +1: low moved last, -1: high did, 0: neither yet
    for _ in range(_GUESSES):
        value = low + (high - low) * (weight_low / (weight_low - weight_high)).float()
        value = torch.where((low < value) & (value < high), value, (low + high) / 2)
        open_rows = (count_low != k) & (count_low - count_high > _FEW) & (low < value) & (value < high)
        if not bool(open_rows.any()):
            break
        counted = count(value, open_rows.nonzero().flatten().tolist())  # converged rows are not counted again
        up, down = open_rows & (counted >= k), open_rows & (counted < k)
        weight_low = torch.where(up, (counted - k).double(), torch.where(down & (last_moved < 0), weight_low / 2, weight_low))
        weight_high = torch.where(down, (counted - k).double(), torch.where(up & (last_moved > 0), weight_high / 2, weight_high))
        last_moved = torch.where(up, 1, torch.where(down, -1, last_moved))
        low, count_low = torch.where(up, value, low), torch.where(up, counted, count_low)
        high, count_high = torch.where(down, value, high), torch.where(down, counted, count_high)
    return low, high, count_low, count_high


def _bracket_by_sample(parts: list[torch.Tensor], count: Callable, k: int, rows: list[int]) -> tuple[torch.Tensor, ...]:
    """(low, high, count_low, count_high) of _threshold_search from two order statistics of an
    evenly spaced sample of every row, widened to the row's range where the sample missed."""
    numel = sum(part.shape[1] for part in parts)
    stride = max(numel // _SAMPLE, 1)
    sample = torch.cat([part[:, ::stride] for part in parts], 1)  # (n, ~_SAMPLE)
    size = sample.shape[1]
    position = (numel - k) / numel * size  # where the answer sits in the ascending sample
    margin = 4.0 * size**0.5  # ~8 standard deviations of that position
    # both order statistics of every row in one partial sort (torch's kthvalue over many short rows
    # is several times slower)
    below, above = max(int(position - margin), 1) - 1, min(int(position + margin) + 1, size) - 1
    ordered = torch.from_numpy(np.partition(sample.numpy(), [below, above], axis=1))
    low, high = ordered[:, below].clone(), ordered[:, above].clone()
    count_low, count_high = count(low, rows), count(high, rows)
    if bool((count_low < k).any() | (count_high >= k).any()):  # the sample missed: widen to the row's range
        missed_low, missed_high = count_low < k, count_high >= k
        smallest = torch.stack([part.amin(1) for part in parts]).amin(0)
        low = torch.where(missed_low, torch.nextafter(smallest, torch.tensor(-math.inf)), low)
        high = torch.where(missed_high, torch.stack([part.amax(1) for part in parts]).amax(0), high)
        count_low = torch.where(missed_low, numel, count_low)
        count_high = torch.where(missed_high, 0, count_high)
    return low, high, count_low, count_high


def _bracket_near(count: Callable, near: torch.Tensor, k: int, rows: list[int]) -> tuple[torch.Tensor, ...] | None:
    """(low, high, count_low, count_high) of _threshold_search from a guess `near` (n,) of every
    row's k-th largest (the last selection's threshold, when the scores change a little between
    selections), or None where no bracket turned up within a few passes.

    The count above the guess says on which side the answer lies; probes step away from the guess
    on that side, by 2^-12 of its magnitude at first and 16 times as far at each pass, until the
    count crosses k.
    """
    if not bool(torch.isfinite(near).all()):
        return None
    counted = count(near, rows)
    above = counted >= k  # the guess is a lower end (the answer lies above it, or it splits)
    low, count_low = torch.where(above, near, -math.inf), torch.where(above, counted, -1)
    high, count_high = torch.where(above, math.inf, near), torch.where(above, -1, counted)
    step = near.abs().clamp_min(torch.finfo(near.dtype).tiny) * 2.0**-12

    def unbracketed() -> torch.Tensor:  # rows missing an end (-1 counts), unless low splits exactly
        return ((count_low < 0) | (count_high < 0)) & (count_low != k)

    for _ in range(_GUESSES // 2):
        open_rows = unbracketed()
        if not bool(open_rows.any()):
            break
        probe = torch.where(above, near + step, near - step)
        counted = count(probe, open_rows.nonzero().flatten().tolist())
        up, down = open_rows & (counted >= k), open_rows & (counted < k)
        low, count_low = torch.where(up, probe, low), torch.where(up, counted, count_low)
        high, count_high = torch.where(down, probe, high), torch.where(down, counted, count_high)
        step = step * 16.0
    if bool(unbracketed().any()):
        return None
    return low, high, count_low, count_high


def kth_largest_rows(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(n,) the k-th largest entry of each row of `scores` (n x N, 1 <= k <= N), exactly.

    kthvalue on a CPU; on a GPU the smallest of a radix top-k (CUDA's kthvalue takes 65 ms over
    10M scores on an H100, top-k 0.3 ms); the side with fewer entries is selected.
    """
    numel = scores.shape[1]
    if scores.device.type == "cpu":
        return torch.kthvalue(scores, numel - k + 1, dim=1).values
    if 2 * k <= numel:
        return torch.topk(scores, k, dim=1, sorted=False).values.amin(1)
    return torch.topk(scores, numel - k + 1, dim=1, largest=False, sorted=False).values.amax(1)


def kth_largest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest entry of a 1-D tensor (1 <= k <= numel), exactly."""
    return kth_largest_rows(scores[None], k)[0]


@dataclass
class LastThresholds:
    """The thresholds (n,) of a caller's last selection, where a caller that selects from slowly
    changing scores every step (SEVEN's global mask; PST's matrices that its SelectionWindow
    missed) keeps them: its next search on a CPU starts beside them, a pass or two from the new
    k-th largest, instead of sampling the scores anew."""

    values: torch.Tensor | None = None


def row_thresholds(parts: list[torch.Tensor], k: int, last: LastThresholds | None = None
                   ) -> tuple[torch.Tensor, list[int] | None]:
    """(threshold (n,), kept): keeping every entry >= its row's threshold keeps the k highest of
    the row (1 <= k < N) and any entries tied with the k-th; kept: how many that is per row, where
    known. parts: as for top_k_parts, on a CPU; `last`: as for top_k_parts (read, then replaced).

    Long float32 rows: the threshold search (_threshold_search) and a selection among the few
    entries left in its bracket; others: kthvalue.
    """
    rows, numel = parts[0].shape[0], sum(part.shape[1] for part in parts)
    if numel > _SMALL and all(part.dtype == torch.float32 for part in parts):
        near = None if last is None or last.values is None or last.values.shape != (rows,) else last.values
        if last is None:
            counter = _count_above
        else:
            from sparselab import kernels  # numba's import (~0.4 s) is for the jobs that select every step

            counter = kernels.count_above
        low, high, count_low, count_high = _threshold_search(parts, k, near, counter)
        # keeping >= the next float above low keeps exactly the count_low entries > low
        threshold, kept = torch.nextafter(low, torch.tensor(math.inf)), count_low.tolist()
        for row in (count_low != k).nonzero().flatten().tolist():
            if high[row] == threshold[row]:  # adjacent floats: the k-th largest is high, tied
                continue
            # the (k - #above high)-th largest of the few entries in the bracket
            between = torch.from_numpy(np.concatenate([
                values[(values > low[row].item()) & (values <= high[row].item())]
                for values in (part[row].detach().numpy() for part in parts)]))
            threshold[row] = torch.kthvalue(between, between.numel() - (k - int(count_high[row])) + 1).values
            kept[row] = int(count_high[row]) + int((between >= threshold[row]).sum())
    else:
        threshold, kept = kth_largest_rows(torch.cat(parts, 1) if len(parts) > 1 else parts[0], k), None
    if last is not None:
        last.values = threshold.clone()
    return threshold, kept


def top_k_parts(parts: list[torch.Tensor], k: int, dtype: torch.dtype = torch.bool,
                out: list[torch.Tensor] | None = None, last: LastThresholds | None = None) -> list[torch.Tensor]:
    """Masks of the k highest entries of every row, a row being the concatenation of the parts'
    rows (parts: (n, N_j) each, never concatenated on a CPU); ties go to the lower index (the
    earlier part first).

    `dtype`: bool, or a float dtype for a 0/1 multiplier (what a training step multiplies with).
    `out`: tensors shaped like the parts, of that dtype, to write the masks into (a caller that
    selects every step reuses its buffers: a fresh tensor of tens of MB costs more in page faults
    than the selection itself). `last`: the thresholds of the caller's previous selection, read to
    start the search and replaced by this one's; such a caller selects every step, so its counting
    passes run in a compiled kernel (sparselab.kernels), whose load (~0.5 s) a one-off selection
    would not win back.
    A plain kthvalue over 10M scores takes ~0.2 s on one CPU thread, as long as a fine-tuning step
    of MiniLM, and during-training methods select every step; so long rows on a CPU are first
    narrowed to a bracket of a few thousand entries around their k-th largest (_threshold_search,
    about five counting passes), which is then gathered and selected from. Otherwise the k-th
    largest value is the threshold. Everything above it is kept and the remaining places go to the
    first entries equal to it.
    """
    if out is None:
        out = [torch.empty(part.shape, dtype=dtype, device=part.device) for part in parts]
    numel, device = sum(part.shape[1] for part in parts), parts[0].device
    if device.type == "cpu" and any(torch.isnan(part.sum()) and torch.isnan(part).any() for part in parts):
        raise ValueError("scores contain NaN; a scorer must return finite values")  # (a GPU does not wait to check)
    if k <= 0 or k >= numel:
        return [buffer.fill_(k > 0) for buffer in out]
    if device.type != "cpu":  # no host sync: the first (k - #above) tied entries by a running count
        scores = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        threshold = kth_largest_rows(scores, k)[:, None]
        above, ties = scores > threshold, scores == threshold
        places = k - above.sum(1, keepdim=True)
        # one scan over all rows (a scan per row of millions of entries is ~100x slower on CUDA),
        # less the ties of the rows before
        running = torch.cumsum(ties.view(-1), 0, dtype=torch.int32 if ties.numel() < 2**31 else torch.int64)
        running = running.view_as(ties)
        rank = running - (running[:, :1] - ties[:, :1].to(running.dtype))  # 1, 2, ... along each row's ties
        keep = (above | (ties & (rank <= places))).split([part.shape[1] for part in parts], 1)
        return [buffer.copy_(piece) for buffer, piece in zip(out, keep)]
    threshold, kept = row_thresholds(parts, k, last)
    keeps = [torch.ge(part, threshold[:, None], out=buffer) for part, buffer in zip(parts, out)]
    drop_extra_ties(parts, keeps, threshold, k, kept)
    return keeps


def drop_extra_ties(parts: list[torch.Tensor], keeps: list[torch.Tensor], threshold: torch.Tensor, k: int,
                    kept: list[int] | None = None) -> list[int]:
    """Make masks that keep every entry >= its row's threshold keep exactly k per row: the last
    entries tied at the threshold lose (ties go to the lower index). parts, keeps: (n, N_j) scores
    and their masks (bool or 0/1); threshold (n,); kept: the entries each row keeps now, if known.
    Returns the rows changed."""
    changed = []
    for row in range(parts[0].shape[0]):
        extra = (kept[row] if kept is not None else sum(int(keep[row].sum()) for keep in keeps)) - k
        if extra > 0:
            changed.append(row)
        for part, keep in zip(reversed(parts), reversed(keeps)):
            if extra <= 0:
                break
            ties = torch.nonzero(part[row] == threshold[row]).flatten()
            dropped = ties[max(ties.numel() - extra, 0) :]
            keep[row, dropped] = False
            extra -= dropped.numel()
    return changed


class SelectionWindow:
    """A narrow bracket (low, high] per row around where its next k-th largest score is expected,
    for a caller that selects the k highest of slowly changing scores every step, from scores a
    kernel computes (PST on a CPU: sparselab.kernels.pst_select). While each row of scores is in
    cache, the kernel counts the entries above low and above high and copies the few in between
    into `values`, their flat positions into `positions`; `resolve` then finds the k-th largest
    among those: no pass over the scores of its own, where the threshold search (row_thresholds)
    takes a few.

    The bracket is centred on the last threshold moved by the change of k over the density of
    scores near it (counted in the last window), and reaches 4x as far as the thresholds landed
    from their centres (a maximum that halves at each selection), at least ~8 entries either
    side. A row whose answer falls outside (or with more than `capacity` - 1 entries inside) is a
    miss, which the caller selects by row_thresholds; `record` learns from both.
    """

    def __init__(self, rows: int, capacity: int) -> None:
        self.values = torch.empty(rows, capacity)  # the scores inside each row's bracket, in order
        self.positions = torch.zeros(rows, capacity, dtype=torch.int64)  # where each is in its row
        self.counts = torch.zeros(rows, 3, dtype=torch.int64)  # #above high, #above low, #NaN
        self.low, self.high = torch.zeros(rows), torch.zeros(rows)
        self._threshold: torch.Tensor | None = None  # of the last selection
        self._keep = 0
        self._centre: torch.Tensor | None = None
        self._miss = torch.zeros(rows, dtype=torch.float64)  # how far thresholds land from centres
        self._density = torch.full((rows,), math.nan, dtype=torch.float64)  # entries per unit score
        self._informed = torch.zeros(rows, dtype=torch.bool)  # the last centre used a density
        self._missed_informed = torch.zeros(rows, dtype=torch.bool)  # so did the one before

    @property
    def last_threshold(self) -> torch.Tensor | None:
        """(n,) the thresholds of the last recorded selection, None before it."""
        return self._threshold

    def aim(self, keep: int) -> bool:
        """Set (low, high] for a selection of `keep` per row; False before the first `record`."""
        if self._threshold is None:
            return False
        threshold = self._threshold.double()
        known = torch.isfinite(self._density) & (self._density > 0)
        density = torch.where(known, self._density, 1.0)
        self._centre = threshold + torch.where(known, (self._keep - keep) / density, 0.0)
        self._informed = known
        floor = torch.where(known, 8.0 / density, threshold.abs() * 2.0**-12)
        half = torch.maximum(4.0 * self._miss, floor).clamp_min(torch.finfo(torch.float32).tiny)
        self.low.copy_(self._centre - half)
        self.high.copy_(self._centre + half)
        return True

    def resolve(self, keep: int) -> tuple[torch.Tensor, list[int]]:
        """(threshold (n,), missed rows): every row's keep-th largest score, from `counts` and
        `values` of the kernel's pass with the bracket `aim` set, except the rows whose answer lies
        outside their bracket or that overflowed it (NaN there: the caller selects those)."""
        above_high, above_low, nan = self.counts.unbind(1)
        if bool(nan.any()):
            raise ValueError("scores contain NaN; a scorer must return finite values")
        inside = above_low - above_high
        hit = (above_high < keep) & (above_low >= keep) & (inside < self.values.shape[1])
        from sparselab import kernels  # numba's import (~0.4 s) is for the jobs that use it

        threshold = torch.full((hit.shape[0],), math.nan)
        answer_rank = keep - above_high  # among the row's entries inside
        kernels.window_thresholds(self.values, inside, answer_rank, hit, threshold)
        return threshold, (~hit).nonzero().flatten().tolist()

    def record(self, threshold: torch.Tensor, keep: int, counted: bool) -> None:
        """Learn from a selection's thresholds (n,) for `keep` per row; `counted`: whether the
        kernel's pass counted a bracket (then its counts give the density near the threshold)."""
        if counted:
            inside = (self.counts[:, 1] - self.counts[:, 0]).double()
            width = (self.high - self.low).double()
            # a bracket holding a few entries says little about their spacing
            self._density = torch.where(inside >= 8, inside / width, self._density)
            # a miss of a centre that knew no density says little about the next one: it is not kept
            # beyond the next selection
            miss = (threshold.double() - self._centre).abs()
            decaying = self._informed & self._missed_informed
            self._miss = torch.where(decaying, torch.maximum(miss, self._miss / 2), miss)
            self._missed_informed = self._informed
        self._threshold, self._keep = threshold.clone(), keep


def top_k_rows(scores: torch.Tensor, k: int, dtype: torch.dtype = torch.bool,
               out: torch.Tensor | None = None, last: LastThresholds | None = None) -> torch.Tensor:
    """Mask of the k highest entries of every row of `scores` (n x N); ties go to the lower index.
    `out`: an (n x N) tensor of `dtype` to write it into; `last`: as for top_k_parts."""
    return top_k_parts([scores], k, dtype, None if out is None else [out], last)[0]


def top_k_flat(scores: torch.Tensor, k: int, dtype: torch.dtype = torch.bool,
               last: LastThresholds | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Mask of the k highest entries of a 1-D tensor; ties go to the lower index. `last`, `out`
    (a 1-D tensor of `dtype` shaped like `scores`): as for top_k_parts."""
    return top_k_rows(scores[None], k, dtype, None if out is None else out[None], last)[0]


@ALLOCATIONS.register("global")
def allocate_global(scores: dict[str, torch.Tensor], sparsity: float) -> Masks:
    """One threshold over the whole prunable set: matrices end up with different sparsities.

    The scores are never concatenated on a CPU: beside the masks (one byte per weight), the
    selection needs a few small buffers, not a copy of every score (bench/global_magnitude.py).
    """
    parts = [s.reshape(1, -1).float() for s in scores.values()]
    keeps = top_k_parts(parts, keep_count(sum(p.shape[1] for p in parts), sparsity))
    return {name: keep.view(s.shape) for (name, s), keep in zip(scores.items(), keeps)}


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
