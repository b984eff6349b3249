"""The sparse scaling law of Frantar et al. (ICLR 2024): fit, bootstrap, and what follows from it.

    L(S, N, D) = (a (1-S)^b + c) N^(-d) + e D^(-f) + g

S is the sparsity, N the number of non-zero parameters, D the training data. The coefficients
depend on the units of N and D (the published fits use millions of parameters and 1e9 examples
or 1e5 steps), so everything here takes plain arrays in whatever units the caller fitted in.
The fit is the paper's: a Huber loss on raw or log residuals, minimised by BFGS from many
uniform(0, 1) starts, keeping the best start that converged (with exact gradients; the stopping
tolerance is the paper's, see GTOL).
"""

from __future__ import annotations

import csv
import json
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.optimize import minimize, minimize_scalar

RESIDUALS = ("raw", "log")
# BFGS stops once no gradient component exceeds this: scipy's default, which the paper's fits used.
# It is of the order of the losses themselves (1e-4 to 1e-6), so on the flat T5 optimum it stops
# early: at 7.602e-6 (published 7.604e-6) on an AVX-512 CPU, predicting the held-out T5-Large-like
# run 1.0% low, and at 7.760e-6 on an AVX2 one, 0.3% low (where it stops depends on the rounding of
# the CPU's vector paths).
# gtol=1e-9 takes all 25 starts to 4.880e-6 with other coefficients, which predict it 1.9% low: a
# lower training loss that extrapolates worse, so the paper's tolerance stays the default.
GTOL = 1e-5


@dataclass(frozen=True)
class Coefficients:
    """The seven coefficients of the law; every one is positive in a sensible fit."""

    a: float
    b: float
    c: float
    d: float
    e: float
    f: float
    g: float

    @classmethod
    def from_array(cls, x: np.ndarray) -> Coefficients:
        return cls(*(float(v) for v in x))

    def to_array(self) -> np.ndarray:
        return np.array(astuple(self))


# The published fits (README of the data), in the units of load_vit and load_t5.
VIT_PUBLISHED = Coefficients(1.30485, 0.82101, 2.07506, 0.39223, 0.27818, 0.88979, 4.51669)
T5_PUBLISHED = Coefficients(0.56779, 0.72161, 1.52265, 0.24513, 0.63362, 0.20271, 0.65074)


class Runs(NamedTuple):
    """Training runs as four arrays of equal length: sparsity, non-zeros N, data D, final loss."""

    S: np.ndarray
    N: np.ndarray
    D: np.ndarray
    loss: np.ndarray


@dataclass(frozen=True)
class Fit:
    """The best coefficients found and their mean Huber loss."""

    coef: Coefficients
    loss: float


def _check(S: np.ndarray, N: np.ndarray, D: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S, N, D as float arrays broadcast to one shape, checked to lie in the law's domain."""
    S, N, D = (np.asarray(v, dtype=float) for v in (S, N, D))
    try:
        S, N, D = np.broadcast_arrays(S, N, D)
    except ValueError:
        raise ValueError(f"S, N, D: shapes {S.shape}, {N.shape}, {D.shape} do not match") from None
    if not np.all((S >= 0) & (S < 1)):
        raise ValueError("S: sparsity must lie in [0, 1)")
    if not np.all(N > 0):
        raise ValueError("N: non-zero parameter counts must be positive")
    if not np.all(D > 0):
        raise ValueError("D: amounts of training data must be positive")
    return S, N, D


def _law_and_jacobian(x: np.ndarray, S: np.ndarray, N: np.ndarray, D: np.ndarray) -> tuple[np.ndarray, ...]:
    """Predictions and their derivatives by a..g (7 rows): exact gradients let BFGS converge tightly."""
    a, b, c, d, e, f, g = x
    logS, logN, logD = np.log1p(-S), np.log(N), np.log(D)
    sparse, params, data = np.exp(b * logS), np.exp(-d * logN), np.exp(-f * logD)
    pred = (a * sparse + c) * params + e * data + g
    jac = np.stack([sparse * params, a * sparse * logS * params, params,
                    -(a * sparse + c) * params * logN, data, -e * data * logD, np.ones_like(pred)])
    return pred, jac


def law(coef: Coefficients, S: np.ndarray, N: np.ndarray, D: np.ndarray) -> np.ndarray:
    """Predicted loss of a model of sparsity S with N non-zeros trained on D."""
    return _law_and_jacobian(coef.to_array(), *_check(S, N, D))[0]


def load_vit(path: str | Path) -> Runs:
    """The published ViT/JFT-4B runs; N in millions (12 blocks of 12*768^2), D in 1e9 examples."""
    columns = json.loads(Path(path).read_text())  # pandas "dict of columns": {column: {row id: value}}
    rows = sorted(columns["val-loss"], key=int)
    S, scale, examples, loss = (np.array([columns[k][r] for r in rows], dtype=float)
                                for k in ("sparsity", "scale", "total_examples", "val-loss"))
    return Runs(S, 12 * (12 * 768**2) * scale * (1 - S) / 1e6, examples / 1e9, loss)


def load_t5(path: str | Path) -> Runs:
    """The published T5/C4 runs; N in millions (24 blocks of 12*768^2), D in 1e5 steps."""
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    S, scale, steps, loss = (np.array([float(r[k]) for r in rows])
                             for k in ("sparsity", "scale", "steps", "val-loss"))
    return Runs(S, 24 * (12 * 768**2) * scale * (1 - S) / 1e6, steps / 1e5, loss)


def huber(residuals: np.ndarray, delta: float) -> float:
    """Mean Huber loss: quadratic below delta, linear above, so a few outliers cannot dominate."""
    r = np.abs(residuals)
    return float(np.mean(np.where(r <= delta, 0.5 * r**2, delta * (r - 0.5 * delta))))


def _objective(S, N, D, loss, delta: float, residual: str):
    """The mean Huber loss of the residuals as a function of a..g, with its gradient."""
    target = np.log(loss) if residual == "log" else loss

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        with np.errstate(all="ignore"):  # a wild step may go negative or overflow: nan, not a warning
            pred, jac = _law_and_jacobian(x, S, N, D)
            if residual == "log":
                pred, jac = np.log(pred), jac / pred
            r = pred - target
            return huber(r, delta), jac @ np.clip(r, -delta, delta) / len(r)

    return objective


def _check_runs(S, N, D, loss, delta: float, residual: str) -> tuple[np.ndarray, ...]:
    """The runs as four float arrays, and the fit's settings, checked."""
    loss = np.asarray(loss, dtype=float)
    if not all(np.ndim(v) == 1 and len(v) == len(loss) for v in (S, N, D, loss)):
        sizes = [np.shape(v) for v in (S, N, D, loss)]
        raise ValueError(f"S, N, D, loss: need four 1-d arrays of one length, got shapes {sizes}")
    if len(loss) < 7:
        raise ValueError(f"loss: need at least 7 runs for 7 coefficients, got {len(loss)}")
    if not np.all(loss > 0):
        raise ValueError("loss: losses must be positive")
    if residual not in RESIDUALS:
        raise ValueError(f"residual: {residual!r} is not one of {RESIDUALS}")
    if not delta > 0:
        raise ValueError(f"delta: must be positive, got {delta}")
    return (*_check(S, N, D), loss)


def fit(S: np.ndarray, N: np.ndarray, D: np.ndarray, loss: np.ndarray, *, delta: float,
        residual: str = "raw", starts: int = 25, seed: int = 0, gtol: float = GTOL) -> Fit:
    """Fit the law by BFGS from `starts` uniform(0, 1) starts drawn from `seed`; best converged wins.

    residual="raw" compares losses (the ViT fit, delta 0.01), "log" compares log-losses (the T5 fit,
    delta 0.001, as in Chinchilla). The problem is not convex, hence the restarts. `gtol` is BFGS's
    stopping tolerance on the gradient (see GTOL).
    """
    S, N, D, loss = _check_runs(S, N, D, loss, delta, residual)
    if starts < 1:
        raise ValueError(f"starts: need at least 1, got {starts}")
    objective = _objective(S, N, D, loss, delta, residual)
    rng = np.random.RandomState(seed)  # the legacy generator, so seed 0 / 1 give the paper's starts
    best = None
    for _ in range(starts):
        result = minimize(objective, rng.uniform(size=7), jac=True, method="BFGS", options={"gtol": gtol})
        if result.success and (best is None or result.fun < best.fun):
            best = result
    if best is None:
        raise RuntimeError(f"none of {starts} starts converged; try more starts or another seed")
    return Fit(Coefficients.from_array(best.x), float(best.fun))


def bootstrap(S: np.ndarray, N: np.ndarray, D: np.ndarray, loss: np.ndarray, *, delta: float,
              residual: str = "raw", resamples: int = 100, starts: int = 5, seed: int = 0,
              level: float = 0.95) -> tuple[Coefficients, Coefficients]:
    """Percentile intervals (low, high) of each coefficient over refits to resampled runs.

    Each resample draws the runs with replacement and refits from `starts` starts; a resample where
    no start converges is skipped. How far the coefficients move tells how much the data pin them.
    """
    S, N, D, loss = _check_runs(S, N, D, loss, delta, residual)
    if not 0 < level < 1:
        raise ValueError(f"level: must lie in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    fits = []
    for _ in range(resamples):
        i = rng.integers(len(loss), size=len(loss))
        try:
            fits.append(fit(S[i], N[i], D[i], loss[i], delta=delta, residual=residual, starts=starts,
                            seed=int(rng.integers(2**31))).coef.to_array())
        except RuntimeError:
            continue
    if not fits:
        raise RuntimeError(f"no resample of {resamples} converged; try more starts")
    tail = 50 * (1 - level)
    low, high = np.percentile(np.array(fits), [tail, 100 - tail], axis=0)
    return Coefficients.from_array(low), Coefficients.from_array(high)


def dense_multiplier(coef: Coefficients, S: np.ndarray) -> np.ndarray:
    """How many times more parameters a dense model needs to match sparsity S at equal non-zeros (D -> inf)."""
    S = _check(S, 1.0, 1.0)[0]
    return ((coef.a + coef.c) / (coef.a * (1 - S) ** coef.b + coef.c)) ** (1 / coef.d)


def train_cost(S: np.ndarray) -> np.ndarray:
    """Training compute of a sparse run relative to a dense run with as many (non-zero) parameters.

    Gradual magnitude pruning trains the model of N / (1-S) parameters dense for the first quarter,
    prunes it on a cubic schedule over the middle half (mean density 1 - 3S/4), and sparse for the
    last quarter, so reaching N non-zeros costs (0.25 + 0.5 (1 - 0.75 S)) / (1 - S) + 0.25.
    """
    S = _check(S, 1.0, 1.0)[0]
    return (0.25 + 0.5 * (1 - 0.75 * S)) / (1 - S) + 0.25


def optimal_sparsity(coef: Coefficients, N: float, D: float, s_max: float) -> float:
    """The sparsity in [0, s_max] with the lowest loss at N non-zeros for the compute of D dense data.

    At fixed non-zeros and fixed data the law only falls with S, so the question is asked at fixed
    compute: D is the data a dense model of N parameters sees for the budget (C = 6 N D), and a run
    at sparsity S sees D / train_cost(S) of it. Keep s_max within the sparsities fitted: beyond them
    the law extrapolates. A grid search, then a bounded search beside the best grid point.
    """
    if not 0 <= s_max < 1:
        raise ValueError(f"s_max: must lie in [0, 1), got {s_max}")
    _check(s_max, N, D)
    if np.ndim(N) or np.ndim(D):
        raise ValueError("N, D: need one number each; optimal_sparsity_grid takes arrays")

    def loss_at(s):
        return law(coef, s, N, D / train_cost(s))

    grid = np.linspace(0, s_max, 201)
    i = int(np.argmin(loss_at(grid)))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    if lo == hi:  # s_max = 0
        return 0.0
    result = minimize_scalar(loss_at, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    return float(min((result.x, grid[i]), key=loss_at))


def optimal_sparsity_grid(coef: Coefficients, N: np.ndarray, D: np.ndarray, s_max: float) -> np.ndarray:
    """optimal_sparsity at every (N[i], D[j]): an array of shape (len(N), len(D)) to draw contours of."""
    return np.array([[optimal_sparsity(coef, n, d, s_max) for d in np.ravel(D)] for n in np.ravel(N)])
