"""CPU kernels compiled by numba, for the per-step work of the during-training methods.

- `straight_through_grads`: PST's straight-through gradients. On a GPU (and for weights that are
  not float32) PST computes them with torch: two elementwise products written out as weight-sized
  tensors, then four thin batched products that read them back (sparsifiers/pst.py,
  `_straight_through_grads`). On a CPU those four products run at about a third of the machine's
  matmul speed (a rank-8 product is too thin for BLAS), and the two tensors cost five passes over
  memory. Here each block of rows of G is read once: both products are formed in a small buffer
  and multiplied into all four low-rank gradients at once, about twice as fast, with no
  weight-sized tensor written. Matrices run in parallel on torch's threads.
- `pst_scores`: PST's W' = W + U V and S = |W'| + A B + R 1^T + 1 C^T in one pass (torch: two
  products and an abs, six passes).
- `count_above`: the counting pass of masks.top_k_parts' threshold search, ~2x faster than
  numpy's compare-and-count (no temporary), for the callers that select every step.

Compiled on first use and cached on disk beside this file (numba's cache); importing numba takes
~0.4 s, so the callers import this module when they first need it.
"""

from __future__ import annotations

import os

import numba
import numpy as np
import torch
from numba import prange

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
                    e[i] = g[i] * (m[i] + abs(w[i]))
                    s[i] = g[i] * w[i]
                    row_sum += s[i]
                    column_sums[i] += s[i]
                dR[k, first + j] = row_sum
            _block_products(d_effective, rows, U[k], V[k], dU[k], dV[k], first)
            _block_products(d_scores, rows, A[k], B[k], dA[k], dB[k], first)


def straight_through_grads(grads: tuple[torch.Tensor, ...], mask: torch.Tensor, effective: torch.Tensor,
                           U: torch.Tensor, V: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(dU, dV, dA, dB, dR, dC) of a PST group on a CPU, in float32.

    grads: n tensors G (out, in) = dL/d(W' * M); mask, effective: M and W' (n, out, in); U, V, A, B:
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


@numba.njit(fastmath=True, boundscheck=False, parallel=True, cache=True)
def _scores(weight, U, V, A, B, R, C, effective, scores, with_scores) -> None:
    n, out, columns = weight.shape
    for k in prange(n):
        for o in range(out):
            e, w = effective[k, o], weight[k, o]
            e[:] = w
            for r in range(U.shape[2]):
                u, line = U[k, o, r], V[k, r]
                for i in range(columns):
                    e[i] += u * line[i]
            if with_scores:
                s, c = scores[k, o], C[k]
                for i in range(columns):
                    s[i] = abs(e[i]) + R[k, o] + c[i]
                for r in range(A.shape[2]):
                    a, line = A[k, o, r], B[k, r]
                    for i in range(columns):
                        s[i] += a * line[i]


def pst_scores(weight: torch.Tensor, U: torch.Tensor, V: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
               R: torch.Tensor, C: torch.Tensor, effective: torch.Tensor, scores: torch.Tensor | None) -> None:
    """Write W' = W + U V into `effective` and, unless `scores` is None, S = |W'| + A B + R 1^T +
    1 C^T into `scores`; all float32 on a CPU: weight, effective, scores (n, out, in), U (n, out,
    r_w), V (n, r_w, in), A (n, out, r_m), B (n, r_m, in), R (n, out), C (n, in)."""
    _set_threads()
    _scores(*(t.detach().contiguous().numpy() for t in (weight, U, V, A, B, R, C)), effective.numpy(),
            (effective if scores is None else scores).numpy(), scores is not None)


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
