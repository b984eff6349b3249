"""Benchmark: the sparse scaling-law fit on the two published datasets (ViT/JFT-4B, T5/C4).

For each: the time of the full fit (25 starts, the paper's Huber delta, residual kind and seed;
median of --repeats), its coefficients and mean Huber loss beside the published ones, and two
held-out checks: a refit without the runs of the largest non-zero count, predicting them (an
extrapolation in N), and for T5 the published held-out run (75% sparse, as many non-zeros as
T5-Large has weights, 500k steps, measured 1.48278).

    .venv/bin/python bench/scaling_fit.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import astuple
from pathlib import Path

import numpy as np

from sparselab.scaling_law import T5_PUBLISHED, VIT_PUBLISHED, fit, law, load_t5, load_vit

DATA = Path(__file__).resolve().parents[1] / "tests/data/scaling-laws"
DATASETS = {  # name: (runs, fit settings, published coefficients, published loss)
    "vit": (load_vit(DATA / "vit-data.json"), dict(delta=0.01, residual="raw", seed=0), VIT_PUBLISHED, 4.929e-4),
    "t5": (load_t5(DATA / "t5-data.csv"), dict(delta=0.001, residual="log", seed=1), T5_PUBLISHED, 7.604e-6),
}
T5_LARGE = dict(S=0.75, N=48 * (12 * 1024**2) / 1e6, D=5.0)
T5_LARGE_LOSS = 1.4827780204906797


def show(label: str, coef) -> str:
    return f"{label:<10}" + " ".join(f"{k}={v:.5f}" for k, v in zip("abcdefg", astuple(coef)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for name, (runs, settings, published, published_loss) in DATASETS.items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = fit(*runs, starts=25, **settings)
            times.append(time.perf_counter() - start)
        print(f"== {name}: {len(runs.loss)} runs, {settings}, 25 starts")
        print(f"fit time  {statistics.median(times):.3f} s (median of {args.repeats})")
        print(show("fitted", result.coef) + f"  loss={result.loss:.4e}")
        print(show("published", published) + f"  loss={published_loss:.4e}")
        largest = runs.N == runs.N.max()
        rest = fit(*(v[~largest] for v in runs), starts=25, **settings)
        error = law(rest.coef, runs.S[largest], runs.N[largest], runs.D[largest]) / runs.loss[largest] - 1
        print(f"held out  the {largest.sum()} runs at N={runs.N.max():.1f}M, fitted without them: "
              f"mean |error| {np.mean(np.abs(error)):.2%}, max {np.max(np.abs(error)):.2%}")
        if name == "t5":
            for label, coef in (("fitted", result.coef), ("published", published)):
                pred = float(law(coef, **T5_LARGE))
                print(f"T5-Large  {label}: predicted {pred:.5f}, measured {T5_LARGE_LOSS:.5f}, "
                      f"error {pred / T5_LARGE_LOSS - 1:+.2%}")


if __name__ == "__main__":
    main()
