"""The sparse scaling law: hand-computed values, the published ViT and T5 fits, derived quantities."""

from __future__ import annotations

from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest

from sparselab.scaling_law import (
    T5_PUBLISHED,
    VIT_PUBLISHED,
    Coefficients,
    bootstrap,
    dense_multiplier,
    fit,
    huber,
    law,
    load_t5,
    load_vit,
    optimal_sparsity,
    optimal_sparsity_grid,
    train_cost,
)

DATA = Path(__file__).parent / "data" / "scaling-laws"

# The held-out T5 run: 75% sparse with as many non-zeros as dense T5-Large has weights,
# 48 * (12 * 1024^2) (millions, as load_t5), after 500k steps (5 in 1e5 steps). The official
# notebook passes this count as N; multiplying it by (1 - S) again would predict ~1.61.
T5_LARGE = dict(S=0.75, N=48 * (12 * 1024**2) / 1e6, D=5.0)
T5_LARGE_LOSS = 1.4827780204906797


@pytest.fixture(scope="module")
def vit():
    return load_vit(DATA / "vit-data.json")


@pytest.fixture(scope="module")
def t5():
    return load_t5(DATA / "t5-data.csv")


@pytest.fixture(scope="module")
def vit_fit(vit):
    return fit(*vit, delta=0.01, residual="raw", starts=25, seed=0)


@pytest.fixture(scope="module")
def t5_fit(t5):
    return fit(*t5, delta=0.001, residual="log", starts=25, seed=1)


def test_loaders_use_the_published_units(vit, t5) -> None:
    assert len(vit.S) == 112 and len(t5.S) == 48
    # ViT row 0: scale 0.25, S 0.75, 225M examples: N = 12 * 12 * 768^2 * 0.25 * 0.25 / 1e6
    assert (vit.S[0], vit.N[0], vit.D[0], vit.loss[0]) == pytest.approx((0.75, 5.308416, 0.225, 6.7818391589))
    # T5 row 3: scale 0.0625, S 0.875, 250k steps: N = 24 * 12 * 768^2 * 0.0625 * 0.125 / 1e6
    assert (t5.S[3], t5.N[3], t5.D[3], t5.loss[3]) == pytest.approx((0.875, 1.327104, 2.5, 2.6937549256441886))


def test_law_by_hand() -> None:
    coef = Coefficients(a=2, b=0.5, c=1, d=0.5, e=3, f=1, g=1.5)
    # S=0.75: (2 * 0.25^0.5 + 1) * 4^-0.5 + 3 / 6 + 1.5 = 1 + 0.5 + 1.5
    # S=0:    (2 + 1) * 4^-0.5 + 3 / 6 + 1.5 = 1.5 + 0.5 + 1.5
    assert law(coef, np.array([0.75, 0.0]), 4.0, 6.0) == pytest.approx([3.0, 3.5])


def test_huber_by_hand() -> None:
    # 0.005 is inside delta: 0.5 * 0.005^2 = 1.25e-5; 0.02 is outside: 0.01 * (0.02 - 0.005) = 1.5e-4
    assert huber(np.array([0.005, -0.02]), delta=0.01) == pytest.approx((1.25e-5 + 1.5e-4) / 2)


@pytest.mark.parametrize("residual, delta", [("raw", 0.01), ("log", 0.001)])
def test_fit_recovers_noiseless_synthetic_coefficients(residual: str, delta: float) -> None:
    truth = Coefficients(a=1.0, b=0.8, c=2.0, d=0.4, e=0.3, f=0.9, g=1.5)
    S, N, D = (v.ravel() for v in np.meshgrid([0, 0.5, 0.75, 0.875], [1, 3, 10, 30, 100], [0.5, 1, 2, 4]))
    result = fit(S, N, D, law(truth, S, N, D), delta=delta, residual=residual, starts=5, seed=0, gtol=1e-9)
    assert result.loss < 1e-12
    assert astuple(result.coef) == pytest.approx(astuple(truth), abs=1e-4)


def test_fit_is_deterministic_for_a_seed(vit) -> None:
    first, second = (fit(*vit, delta=0.01, starts=3, seed=7) for _ in range(2))
    assert first == second


def test_vit_fit_reproduces_the_published_coefficients(vit_fit) -> None:
    assert astuple(vit_fit.coef) == pytest.approx(astuple(VIT_PUBLISHED), abs=1e-3)
    assert vit_fit.loss == pytest.approx(4.929088e-4, rel=1e-5)


def test_t5_fit_is_as_good_as_the_published_one(t5_fit) -> None:
    # At the paper's tolerance BFGS stops on the flat T5 optimum where the last rounding leaves it,
    # which differs between CPUs' vector paths: 7.602e-6 on an AVX-512 machine, 7.760e-6 on an AVX2
    # one (published: 7.604e-6); both predict the held-out run within 1.5% (the test below).
    assert t5_fit.loss <= 7.604e-6 * 1.03


def test_t5_law_predicts_the_held_out_large_model(t5_fit) -> None:
    # A 7x extrapolation in N: the fit predicts 1.4681 (-1.0%), the published coefficients 1.4683.
    assert law(t5_fit.coef, **T5_LARGE) == pytest.approx(T5_LARGE_LOSS, rel=0.015)
    assert law(T5_PUBLISHED, **T5_LARGE) == pytest.approx(T5_LARGE_LOSS, rel=0.015)


def test_a_tighter_t5_fit_has_a_lower_loss_but_extrapolates_worse(t5, t5_fit) -> None:
    """Why the paper's tolerance is the default: the flat T5 optimum goes on falling to 4.880e-6,
    on coefficients that predict the held-out run 1.9% low."""
    tight = fit(*t5, delta=0.001, residual="log", starts=25, seed=1, gtol=1e-9)
    assert tight.loss == pytest.approx(4.880e-6, rel=1e-3) and tight.loss < t5_fit.loss
    assert law(tight.coef, **T5_LARGE) == pytest.approx(T5_LARGE_LOSS * (1 - 0.0187), rel=1e-3)


@pytest.mark.parametrize("coef", [VIT_PUBLISHED, T5_PUBLISHED], ids=["vit", "t5"])
def test_dense_equivalent_multipliers(coef: Coefficients) -> None:
    # By hand, T5 at 75%: 0.25^0.72161 = 0.36775, (2.09044 / (0.56779 * 0.36775 + 1.52265))^(1 / 0.24513)
    # = 1.20733^4.07947 = 2.1568. ViT: 1.596, 2.172, 2.634; T5: 1.586, 2.157, 2.630. Stated: ~1.6,
    # 2.16, 2.63, hence 1% tolerance.
    assert dense_multiplier(coef, np.array([0.5, 0.75, 0.875])) == pytest.approx([1.6, 2.16, 2.63], rel=0.01)
    assert dense_multiplier(coef, 0.0) == pytest.approx(1.0)


def test_bootstrap_intervals_contain_the_point_estimate(vit, vit_fit) -> None:
    low, high = bootstrap(*vit, delta=0.01, resamples=10, starts=2, seed=0)
    assert np.all(low.to_array() <= vit_fit.coef.to_array())
    assert np.all(vit_fit.coef.to_array() <= high.to_array())
    assert np.all(low.to_array() < high.to_array())
    assert bootstrap(*vit, delta=0.01, resamples=10, starts=2, seed=0) == (low, high)
    assert bootstrap(*vit, delta=0.01, resamples=10, starts=2, seed=1) != (low, high)


def test_train_cost_by_hand() -> None:
    # S=0.5: (0.25 + 0.5 * (1 - 0.375)) / 0.5 + 0.25 = 0.5625 / 0.5 + 0.25
    assert train_cost(np.array([0.0, 0.5])) == pytest.approx([1.0, 1.375])


@pytest.mark.parametrize("coef", [VIT_PUBLISHED, T5_PUBLISHED], ids=["vit", "t5"])
def test_optimal_sparsity_rises_with_data_at_fixed_non_zeros(coef: Coefficients) -> None:
    # At fixed non-zeros and fixed data, sparser is always better: the trade-off is the compute.
    S = np.linspace(0, 0.99, 50)
    assert np.all(np.diff(law(coef, S, 100.0, 1.0)) < 0)
    s_opt = optimal_sparsity_grid(coef, np.array([100.0]), np.array([1.0, 10.0, 100.0, 1000.0]), s_max=0.95)[0]
    assert np.all(np.diff(s_opt) >= 0) and s_opt[-1] - s_opt[0] > 0.3
    assert np.all((s_opt >= 0) & (s_opt <= 0.95))
    assert s_opt[1] == optimal_sparsity(coef, 100.0, 10.0, s_max=0.95)


def test_optimal_sparsity_is_a_minimum() -> None:
    s = optimal_sparsity(T5_PUBLISHED, 100.0, 10.0, s_max=0.95)
    assert 0 < s < 0.95

    def loss(x):
        return law(T5_PUBLISHED, x, 100.0, 10.0 / train_cost(x))

    assert loss(s) <= min(loss(s - 0.01), loss(s + 0.01))


@pytest.mark.parametrize("call, argument", [
    (lambda r: fit(r.S[:-1], r.N, r.D, r.loss, delta=0.01), "S, N, D, loss"),
    (lambda r: fit(*r, delta=0.01, residual="squared"), "residual: 'squared' is not one of \\('raw', 'log'\\)"),
    (lambda r: fit(*r, delta=0.0), "delta"),
    (lambda r: fit(*r, delta=0.01, starts=0), "starts"),
    (lambda r: bootstrap(*r, delta=0.01, level=1.5), "level"),
    (lambda r: law(VIT_PUBLISHED, 1.0, 1.0, 1.0), "S: sparsity must lie in \\[0, 1\\)"),
    (lambda r: law(VIT_PUBLISHED, -0.1, 1.0, 1.0), "S: sparsity must lie in \\[0, 1\\)"),
    (lambda r: law(VIT_PUBLISHED, 0.5, 0.0, 1.0), "N: .* must be positive"),
    (lambda r: law(VIT_PUBLISHED, 0.5, 1.0, -1.0), "D: .* must be positive"),
    (lambda r: law(VIT_PUBLISHED, np.zeros(2), np.ones(3), 1.0), "S, N, D: shapes"),
    (lambda r: dense_multiplier(VIT_PUBLISHED, 1.0), "S: sparsity"),
    (lambda r: optimal_sparsity(VIT_PUBLISHED, 100.0, 1.0, s_max=1.0), "s_max: must lie in \\[0, 1\\)"),
    (lambda r: optimal_sparsity(VIT_PUBLISHED, np.ones(2), 1.0, s_max=0.9), "N, D: need one number each"),
], ids=["lengths", "residual", "delta", "starts", "level", "S=1", "S<0", "N", "D", "shapes", "mult S",
        "s_max", "scalar"])
def test_bad_inputs_raise_a_one_line_value_error(t5, call, argument: str) -> None:
    with pytest.raises(ValueError, match=f"^{argument}") as error:
        call(t5)
    assert "\n" not in str(error.value)
