"""CPU kernels compiled by numba, for the per-step work of the during-training methods.

- `straight_through_grads`: PST's straight-through gradients. On a GPU (and for weights that are
  not float32) PST computes them with torch: two elementwise products written out as weight-sized
  tensors, then four thin batched products that read them back (sparsifiers/pst.py,
  `_straight_through_grads`). On a CPU those four products run at about a third of the machine's
  matmul speed (a rank-8 product is too thin for BLAS), and the two tensors cost five passes over
  memory. Here each block of rows of G is read once: both products are formed in a small buffer
  and multiplied into all four low-rank gradients at once, about twice as fast, with no
  weight-sized tensor written. Matrices run in parallel on torch's threads.
- `pst_select`: PST's per-step selection. One pass over each row computes W' = W + U V (written:
  the backward pass reads it) and S = |W'| + A B + R 1^T + 1 C^T (kept in a row buffer, never
  written: torch would take six passes and write both). While the row is in cache it counts S
  above and below a narrow window around where the mask's threshold is expected, copies the few
  entries inside with their positions (masks.SelectionWindow), and writes the mask (bool) and
  W' * M of every entry above the window. `admit_window` then adds the window's entries at or
  above the threshold: the mask costs no pass of its own. A matrix whose threshold the window
  missed gets S from `pst_scores` and its mask from `keep_above`.
- `window_thresholds`: the answer of each matrix's window (masks.SelectionWindow.resolve), all
  matrices in one call.
- `count_above`: the counting pass of masks.top_k_parts' threshold search, ~2x faster than
  numpy's compare-and-count (no temporary), for the callers that select every step.

Compiled on first use and cached on disk beside this file (numba's cache); importing numba takes
~0.4 s, so the callers import this module when they first need it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numba
import numpy as np
import torch
from numba import prange

if TYPE_CHECKING:
    from sparselab.masks import SelectionWindow

# numba's work queue, unless the user chose a threading layer: an OpenMP worker spins after each
# parallel loop, taking a core from torch's threads or from the job beside it (two PST fine-tunes
# on a 2-core machine ran 2.5x slower side by side); the work queue's workers sleep.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

# Rows handled together: each pass over the rows of V and B (n x in) serves this many rows
# (_block_products unrolls them: changing it means changing that loop too).
_BLOCK = 4


@numba.njit(fastmath=True, boundscheck=False, cache=True)
def _block_products(H: np.ndarray, rows: int, left: np.ndarray, right: np.ndarray, d_left: np.ndarray,
                    d_right: np.ndarray, first: int) -> None:
    """For the `rows` rows of H (_BLOCK x in) that are rows first.. of a gradient D (out x in):
    d_left[o] = D[o] right^T (right: rank x in) and d_right += left[o]^T D[o] (left: out x rank)."""
    rank, columns = right.shape
    if rows == _BLOCK:
        h0, h1, h2, h3 = H[0], H[1], H[2], H[3]
        for r in range(rank):
            line, total = right[r], d_right[r]
            l0, l1, l2, l3 = left[first, r], left[first + 1, r], left[first + 2, r], left[first + 3, r]
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for i in range(columns):
                v, x0, x1, x2, x3 = line[i], h0[i], h1[i], h2[i], h3[i]
                a0 += x0 * v
                a1 += x1 * v
                a2 += x2 * v
                a3 += x3 * v
                total[i] += l0 * x0 + l1 * x1 + l2 * x2 + l3 * x3
            d_left[first, r], d_left[first + 1, r], d_left[first + 2, r], d_left[first + 3, r] = a0, a1, a2, a3
    else:  # the last rows of a matrix whose height is not a multiple of _BLOCK
        for j in range(rows):
            h = H[j]
            for r in range(rank):
                line, total, weight = right[r], d_right[r], left[first + j, r]
                a = np.float32(0.0)
                for i in range(columns):
                    a += h[i] * line[i]
                    total[i] += weight * h[i]
                d_left[first + j, r] = a


@numba.njit(fastmath=True, boundscheck=False, parallel=True, cache=True)
def _straight_through(grads, mask, effective, U, V, A, B, dU, dV, dA, dB, dR, dC) -> None:
    """Fill dU, dV, dA, dB, dR, dC (see straight_through_grads) from grads, a tuple of n (out, in)
    arrays, and the (n, ...) arrays of the group."""
    n, out, columns = mask.shape
    for k in prange(n):
        G, M, W = grads[k], mask[k], effective[k]
        d_effective = np.empty((_BLOCK, columns), np.float32)  # dW' and dS of a row block
        d_scores = np.empty((_BLOCK, columns), np.float32)
        dV[k, :, :] = 0.0
        dB[k, :, :] = 0.0
        dC[k, :] = 0.0
        column_sums = dC[k]
        for first in range(0, out, _BLOCK):
            rows = min(_BLOCK, out - first)
            for j in range(rows):
                g, m, w = G[first + j], M[first + j], W[first + j]
                e, s = d_effective[j], d_scores[j]
                row_sum = np.float32(0.0)
                for i in range(columns):
                    e[i] = g[i] * (np.float32(m[i]) + abs(w[i]))
                    s[i] = g[i] * w[i]
                    row_sum += s[i]
                    column_sums[i] += s[i]
                dR[k, first + j] = row_sum
            _block_products(d_effective, rows, U[k], V[k], dU[k], dV[k], first)
            _block_products(d_scores, rows, A[k], B[k], dA[k], dB[k], first)


def straight_through_grads(grads: tuple[torch.Tensor, ...], mask: torch.Tensor, effective: torch.Tensor,
                           U: torch.Tensor, V: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(dU, dV, dA, dB, dR, dC) of a PST group on a CPU, in float32.

    grads: n tensors G (out, in) = dL/d(W' * M); mask, effective: M (bool) and W' (n, out, in); U, V, A, B:
    (n, out, r_w), (n, r_w, in), (n, out, r_m), (n, r_m, in). With dS = G * W' and
    dW' = G * (M + |W'|): dU = dW' V^T, dV = U^T dW', dA = dS B^T, dB = A^T dS, dR = dS 1,
    dC = 1^T dS (the same values as the torch path, up to the order of the sums).
    """
    n, out, columns = mask.shape
    like = {"dtype": torch.float32}
    dU, dV = torch.empty(n, out, U.shape[-1], **like), torch.empty(n, V.shape[1], columns, **like)
    dA, dB = torch.empty(n, out, A.shape[-1], **like), torch.empty(n, B.shape[1], columns, **like)
    dR, dC = torch.empty(n, out, **like), torch.empty(n, columns, **like)
    arrays = [t.detach().contiguous().numpy() for t in (mask, effective, U, V, A, B)]
    _set_threads()
    _straight_through(tuple(g.detach().contiguous().numpy() for g in grads), *arrays,
                      *(t.numpy() for t in (dU, dV, dA, dB, dR, dC)))
    return dU, dV, dA, dB, dR, dC


# Fast-math flags of the scores kernel without no-NaN and no-inf, so that its NaN count is not
# folded away.
_FINITE_AGNOSTIC = {"nsz", "arcp", "contract", "afn", "reassoc"}
# Ranks a pass over a row of W' or S adds at once (a rank that is not a multiple adds zeros).
_CHUNK = 8


@numba.njit(inline="always")
def _chunk(left: np.ndarray, rank: int, first: int) -> tuple:
    """Coefficients left[first : first + _CHUNK] of one pass and the rows of the right factor they
    multiply; past the rank, coefficient 0 and the last row (no extra stream).

    The right factor (rank x in) is indexed as one 2-D array: eight rows taken as separate arrays
    are eight pointers the compiler must check for overlap with the row written, more than it
    checks before it vectorizes a loop (up to 1.7x slower)."""
    zero = np.float32(0.0)

    def at(r):
        return (left[r], r) if r < rank else (zero, rank - 1)

    (p0, r0), (p1, r1), (p2, r2), (p3, r3) = at(first), at(first + 1), at(first + 2), at(first + 3)
    (p4, r4), (p5, r5), (p6, r6), (p7, r7) = at(first + 4), at(first + 5), at(first + 6), at(first + 7)
    return (p0, p1, p2, p3, p4, p5, p6, p7), (r0, r1, r2, r3, r4, r5, r6, r7)


@numba.njit(fastmath=_FINITE_AGNOSTIC, boundscheck=False, inline="always")
def _sum8(P: tuple, X: np.ndarray, rows: tuple, i: int) -> float:
    p0, p1, p2, p3, p4, p5, p6, p7 = P
    r0, r1, r2, r3, r4, r5, r6, r7 = rows
    return ((p0 * X[r0, i] + p1 * X[r1, i] + p2 * X[r2, i] + p3 * X[r3, i])
            + (p4 * X[r4, i] + p5 * X[r5, i] + p6 * X[r6, i] + p7 * X[r7, i]))


@numba.njit(fastmath=_FINITE_AGNOSTIC, boundscheck=False)
def _effective_row(e: np.ndarray, w: np.ndarray, u: np.ndarray, V: np.ndarray) -> None:
    """e = w + u V for one row: (in,), (in,), (r_w,), (r_w, in); one pass per _CHUNK ranks."""
    rank = u.shape[0]
    P, rows = _chunk(u, rank, 0)
    for i in range(e.shape[0]):
        e[i] = w[i] + _sum8(P, V, rows, i)
    for first in range(_CHUNK, rank, _CHUNK):
        P, rows = _chunk(u, rank, first)
        for i in range(e.shape[0]):
            e[i] += _sum8(P, V, rows, i)


@numba.njit(fastmath=_FINITE_AGNOSTIC, boundscheck=False)
def _score_row(s: np.ndarray, e: np.ndarray, a: np.ndarray, B: np.ndarray, r: float, c: np.ndarray) -> None:
    """s = |e| + a B + r + c for one row: (in,), (in,), (r_m,), (r_m, in), scalar, (in,)."""
    rank = a.shape[0]
    P, rows = _chunk(a, rank, 0)
    for i in range(s.shape[0]):
        s[i] = abs(e[i]) + r + c[i] + _sum8(P, B, rows, i)
    for first in range(_CHUNK, rank, _CHUNK):
        P, rows = _chunk(a, rank, first)
        for i in range(s.shape[0]):
            s[i] += _sum8(P, B, rows, i)


@numba.njit(fastmath=_FINITE_AGNOSTIC, boundscheck=False)
def _count_and_keep_row(s: np.ndarray, e: np.ndarray, low: float, high: float, m: np.ndarray, w: np.ndarray
                        ) -> tuple:
    """(#entries > high, #entries > low, #NaN) of one row of scores s, and m = s > high (m: the
    mask row's bytes, uint8), w = e where kept else 0: one pass (two took 1.3x as long).

    w = e * keep rather than a choice between e and 0, which compiles to a branch taken at random
    (half of the entries near a mask's sparsity): 1.7x slower. The counts are float32 sums of
    0/1, exact for rows of up to 2^24 entries: one vector type for the whole loop, ~1.2x faster
    than int32 counts beside float32 values."""
    above_high = above_low = nan = np.float32(0.0)
    for i in range(s.shape[0]):
        value = s[i]
        keep = np.float32(value > high)
        m[i] = np.uint8(keep)
        w[i] = keep * e[i]
        above_high += keep
        above_low += np.float32(value > low)
        nan += np.float32(value != value)
    return int(above_high), int(above_low), int(nan)


# Entries per piece of a row that _collect_row skips when it holds none of the window's entries.
_PIECE = 32


@numba.njit(fastmath=_FINITE_AGNOSTIC, boundscheck=False)
def _collect_row(s: np.ndarray, low: float, high: float, inside: int, values: np.ndarray, positions: np.ndarray,
                 first: int, filled: int) -> int:
    """Append the `inside` entries of s in (low, high] to values and their positions (first +
    index) to positions (as many as fit); the new fill count.

    Without a branch: every entry is stored at the fill position, which moves on only past an
    entry inside (a branch on s > low, near the mask's threshold, is mispredicted at every other
    entry: 6x slower). A row with fewer entries inside than pieces of _PIECE entries first counts
    each piece (a vectorized pass) and stores only the pieces that hold one: with one or two
    entries inside a row, as in most selections, 2-4x faster.
    """
    last, columns = values.shape[0] - 1, s.shape[0]
    sparse = inside * _PIECE < columns
    for start in range(0, columns, _PIECE):
        stop = min(start + _PIECE, columns)
        if sparse and stop - start == _PIECE:
            hits = np.int32(0)
            for j in range(_PIECE):
                value = s[start + j]
                hits += np.int32((value > low) & (value <= high))
            if hits == 0:
                continue
        for i in range(start, stop):
            value, slot = s[i], min(filled, last)
            values[slot] = value
            positions[slot] = first + i
            filled += (value > low) & (value <= high)
    return filled


@numba.njit(boundscheck=False, parallel=True, cache=True)
def _scores(weight, U, V, A, B, R, C, matrices, effective, scores) -> None:
    """See pst_scores; `scores` has no rows when only W' is asked for."""
    out = weight.shape[1]
    for j in prange(matrices.shape[0]):
        k = matrices[j]
        for o in range(out):
            _effective_row(effective[k, o], weight[k, o], U[k, o], V[k])
            if scores.shape[0] > 0:
                _score_row(scores[k, o], effective[k, o], A[k, o], B[k], R[k, o], C[k])


def pst_scores(weight: torch.Tensor, U: torch.Tensor, V: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
               R: torch.Tensor, C: torch.Tensor, effective: torch.Tensor, scores: torch.Tensor | None,
               matrices: list[int] | None = None) -> None:
    """Write W' = W + U V into `effective` and, unless `scores` is None, S = |W'| + A B + R 1^T +
    1 C^T into `scores`, for the listed matrices (default: all); all float32 on a CPU: weight,
    effective, scores (n, out, in), U (n, out, r_w), V (n, r_w, in), A (n, out, r_m), B (n, r_m,
    in), R (n, out), C (n, in). The values are those pst_select computes."""
    listed = np.arange(weight.shape[0]) if matrices is None else np.asarray(matrices, np.int64)
    _set_threads()
    _scores(*(t.detach().contiguous().numpy() for t in (weight, U, V, A, B, R, C)), listed, effective.numpy(),
            (scores if scores is not None else torch.empty(0, 0, 0)).numpy())


@numba.njit(boundscheck=False, parallel=True, cache=True)
def _select(weight, U, V, A, B, R, C, effective, mask, masked, low, high, values, positions, counts) -> None:
    """See pst_select."""
    n, out, columns = weight.shape
    for k in prange(n):
        s = np.empty(columns, np.float32)  # S of one row: counted and compared in cache, never written
        above_high = above_low = nan = filled = 0
        mask_bytes = mask[k].view(np.uint8)
        for o in range(out):
            e = effective[k, o]
            _effective_row(e, weight[k, o], U[k, o], V[k])
            _score_row(s, e, A[k, o], B[k], R[k, o], C[k])
            row_high, row_low, row_nan = _count_and_keep_row(s, e, low[k], high[k], mask_bytes[o], masked[k, o])
            above_high, above_low, nan = above_high + row_high, above_low + row_low, nan + row_nan
            if row_low > row_high and filled < values.shape[1]:
                filled = _collect_row(s, low[k], high[k], row_low - row_high, values[k], positions[k], o * columns,
                                      filled)
        counts[k, 0], counts[k, 1], counts[k, 2] = above_high, above_low, nan


def pst_select(weight: torch.Tensor, U: torch.Tensor, V: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
               R: torch.Tensor, C: torch.Tensor, effective: torch.Tensor, mask: torch.Tensor, masked: torch.Tensor,
               window: SelectionWindow) -> None:
    """One pass of PST's selection with an aimed window, row by row: W' = W + U V into `effective`
    and S = |W'| + A B + R 1^T + 1 C^T, which is not written out. S is counted above window.low
    and window.high (n,) and its NaNs into window.counts (n, 3); its entries in between are
    copied into window.values (n, capacity; as many as fit, in order) and their flat positions
    into window.positions; `mask` (bool) keeps the entries above window.high and `masked` =
    W' * mask. Shapes as for pst_scores; all float32 on a CPU. admit_window completes the masks of
    the matrices whose threshold fell inside their window."""
    _set_threads()
    _select(*(t.detach().contiguous().numpy() for t in (weight, U, V, A, B, R, C)), effective.numpy(),
            mask.numpy(), masked.numpy(), window.low.numpy(), window.high.numpy(), window.values.numpy(),
            window.positions.numpy(), window.counts.numpy())


@numba.njit(boundscheck=False, cache=True)
def _window_thresholds(values, sizes, ranks, hit, thresholds) -> None:
    for row in range(values.shape[0]):
        if hit[row]:
            place = sizes[row] - ranks[row]  # of the answer among the entries in ascending order
            thresholds[row] = np.partition(values[row, : sizes[row]], place)[place]


def window_thresholds(values: torch.Tensor, sizes: torch.Tensor, ranks: torch.Tensor, hit: torch.Tensor,
                      thresholds: torch.Tensor) -> None:
    """thresholds[row] = the ranks[row]-th largest of values[row, :sizes[row]] for the rows where
    `hit` (n,) is true; values, thresholds float32 (n, capacity) and (n,), sizes and ranks int64
    (n,). One call for all rows: a torch.kthvalue per row cost ~20 us each, and more around it."""
    _window_thresholds(values.numpy(), sizes.numpy(), ranks.numpy(), hit.numpy(), thresholds.numpy())


@numba.njit(boundscheck=False, parallel=True, cache=True)
def _admit(values, positions, sizes, needed, thresholds, matrices, effective, mask, masked) -> None:
    for j in prange(matrices.shape[0]):
        k = matrices[j]
        t, size = thresholds[k], sizes[k]
        ties = needed[k]  # places left for entries equal to t once those above it are in
        for i in range(size):
            ties -= values[k, i] > t
        for i in range(size):
            value = values[k, i]
            if value > t or (value == t and ties > 0):
                ties -= value == t
                p = positions[k, i]
                mask[k, p] = True
                masked[k, p] = effective[k, p]


def admit_window(window: SelectionWindow, thresholds: torch.Tensor, matrices: list[int], keep: int,
                 effective: torch.Tensor, mask: torch.Tensor, masked: torch.Tensor) -> None:
    """Complete the masks pst_select left (the entries above each window) for the listed matrices,
    whose keep-th largest score `thresholds` (n,) lies inside their window: admit the window's
    entries above it and, of those equal to it, the first ones by position (ties to the lower
    index), so that exactly `keep` are kept. effective, masked: (n, N) float32, mask (n, N) bool."""
    counts = window.counts.numpy()
    _set_threads()
    _admit(window.values.numpy(), window.positions.numpy(), counts[:, 1] - counts[:, 0], keep - counts[:, 0],
           thresholds.to(torch.float32).numpy(), np.asarray(matrices, np.int64), effective.numpy(), mask.numpy(),
           masked.numpy())


@numba.njit(boundscheck=False, parallel=True, cache=True)
def _keep_above(scores, thresholds, matrices, effective, mask, masked, kept) -> None:
    for j in prange(matrices.shape[0]):
        k = matrices[j]
        s, e, m, w, limit, count = scores[k], effective[k], mask[k], masked[k], thresholds[k], 0
        for i in range(s.shape[0]):
            keep = np.int32(s[i] >= limit)
            m[i] = keep
            w[i] = np.float32(keep) * e[i]  # not a choice: see _count_and_keep_row
            count += keep
        kept[k] = count


def keep_above(scores: torch.Tensor, thresholds: torch.Tensor, effective: torch.Tensor, mask: torch.Tensor,
               masked: torch.Tensor, matrices: list[int] | None = None) -> torch.Tensor:
    """mask = S >= t and masked = W' * mask, row by row, in one pass, for the listed rows (default:
    all); all (n, N) float32 on a CPU but mask (bool) and thresholds (n,). Returns the entries kept
    per row, (n,) int64, 0 for rows not listed (more than asked where entries tie at the threshold)."""
    kept = torch.zeros(scores.shape[0], dtype=torch.int64)
    listed = np.arange(scores.shape[0]) if matrices is None else np.asarray(matrices, np.int64)
    _set_threads()
    _keep_above(scores.numpy(), thresholds.to(torch.float32).numpy(), listed, effective.numpy(), mask.numpy(),
                masked.numpy(), kept.numpy())
    return kept


@numba.njit(boundscheck=False, parallel=True, cache=True)
def _count_rows(values, limits, rows, counts) -> None:
    for j in prange(rows.shape[0]):
        row = rows[j]
        line, limit, above = values[row], limits[row], 0
        for i in range(line.shape[0]):
            above += line[i] > limit
        counts[row] = above


def count_above(scores: torch.Tensor, thresholds: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """(n,) int64: how many entries of each of `rows` of `scores` (n x N, float32 on a CPU)
    exceed its threshold (n,); 0 for the other rows (as masks._count_above)."""
    counts = torch.zeros(scores.shape[0], dtype=torch.int64)
    _set_threads()
    _count_rows(scores.detach().numpy(), thresholds.to(torch.float32).numpy(), np.asarray(rows, np.int64), counts.numpy())
    return counts


def _set_threads() -> None:
    """numba's parallel loops on as many threads as torch's."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
