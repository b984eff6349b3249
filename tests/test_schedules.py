"""Sparsity schedules, checked by hand."""

from __future__ import annotations

import pytest

from sparselab.schedules import cubic_sparsity, seven_keep_fraction


@pytest.mark.parametrize(
    "step, expected",
    [(0, 0.0), (9, 0.0), (10, 0.0), (40, 0.9 - 0.9 * 0.5**3), (70, 0.9), (99, 0.9)],
)
def test_cubic_from_10_to_70_percent(step, expected):
    # PST's schedule: 0 until 10% of 100 steps, cubic ramp, the target from 70% on
    assert cubic_sparsity(step, 100, 0.1, 0.7, 0.0, 0.9) == pytest.approx(expected)


def test_cubic_is_monotone_and_steep_early():
    values = [cubic_sparsity(s, 1000, 0.25, 0.75, 0.0, 0.875) for s in range(1000)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert values[375] - values[250] > values[750 - 1] - values[625]


def test_seven_keep_fraction_start_middle_end():
    assert seven_keep_fraction(0, 4, 0.6) == pytest.approx(0.4 + 0.6 * 0.75**3)
    assert seven_keep_fraction(1, 4, 0.6) == pytest.approx(0.4 + 0.6 * 0.5**3)
    assert seven_keep_fraction(3, 4, 0.6) == pytest.approx(0.4)
