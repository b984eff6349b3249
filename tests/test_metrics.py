"""Metrics against hand-computed values and their degenerate cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sparselab.metrics import (
    METRICS,
    average_ranks,
    compute_metrics,
    metric_mismatch,
)
from sparselab.registry import UnknownNameError

# A binary confusion matrix with tp=3, fn=1, fp=2, tn=4 (10 examples).
LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
PREDICTIONS = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0])


def test_binary_confusion_matrix_by_hand() -> None:
    scores = compute_metrics(["accuracy", "f1", "mcc"], PREDICTIONS, LABELS)
    assert scores["accuracy"] == pytest.approx(7 / 10)
    # F1 = 2 tp / (2 tp + fp + fn) = 6 / 9
    assert scores["f1"] == pytest.approx(6 / 9)
    # MCC = (tp tn - fp fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (12 - 2) / sqrt(5 * 4 * 6 * 5)
    assert scores["mcc"] == pytest.approx(10 / math.sqrt(600))


def test_compute_metrics_keeps_the_order_given() -> None:
    assert list(compute_metrics(["mcc", "accuracy"], PREDICTIONS, LABELS)) == ["mcc", "accuracy"]


def test_metrics_use_the_whole_set_not_batch_averages() -> None:
    # Two batches with F1 1.0 and 0.0 average to 0.5; F1 over the whole set is 2/3.
    predictions, labels = np.array([1, 0, 0, 0]), np.array([1, 0, 1, 0])
    assert METRICS.get("f1")(predictions, labels) == pytest.approx(2 / 3)


def test_mcc_extremes_and_undefined_cases() -> None:
    mcc = METRICS.get("mcc")
    assert mcc(LABELS, LABELS) == pytest.approx(1.0)
    assert mcc(1 - LABELS, LABELS) == pytest.approx(-1.0)
    assert mcc(np.zeros(10), LABELS) == 0.0  # constant predictions: undefined -> 0
    assert mcc(np.ones(4), np.ones(4)) == 0.0  # a single class everywhere


def test_mcc_multiclass_by_hand() -> None:
    # Confusion (rows true, columns predicted): [[2, 1, 0], [0, 2, 0], [1, 0, 1]]
    labels = np.array([0, 0, 0, 1, 1, 2, 2])
    predictions = np.array([0, 0, 1, 1, 1, 0, 2])
    # c = 5 correct, s = 7; t = (3, 2, 2) true, p = (3, 3, 1) predicted
    # MCC = (c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)) = (35 - 17) / sqrt((49 - 19)(49 - 17))
    expected = 18 / math.sqrt(30 * 32)
    assert METRICS.get("mcc")(predictions, labels) == pytest.approx(expected)


def test_f1_degenerate_cases() -> None:
    f1 = METRICS.get("f1")
    assert f1(np.zeros(5), np.zeros(5)) == 0.0  # no positives anywhere
    assert f1(np.ones(3), np.ones(3)) == 1.0
    assert f1(np.zeros(3), np.ones(3)) == 0.0


def test_macro_f1_by_hand() -> None:
    labels = np.array([0, 0, 1, 1, 2])
    predictions = np.array([0, 1, 1, 1, 0])
    # class 0: tp 1, fp 1, fn 1 -> 1/2; class 1: tp 2, fp 1 -> 4/5; class 2: tp 0 -> 0
    assert METRICS.get("macro_f1")(predictions, labels) == pytest.approx((0.5 + 0.8 + 0) / 3)


def test_pearson_by_hand_and_degenerate() -> None:
    pearson = METRICS.get("pearson")
    # deviations (-1.5, -.5, .5, 1.5) and (-1.5, .5, -.5, 1.5): 4 / sqrt(5 * 5)
    assert pearson(np.array([1, 2, 3, 4]), np.array([1, 3, 2, 4])) == pytest.approx(0.8)
    assert pearson(np.array([1.0, 2, 3]), np.array([2.0, 4, 6])) == pytest.approx(1.0)
    assert pearson(np.array([1.0, 2, 3]), np.array([3.0, 2, 1])) == pytest.approx(-1.0)
    assert pearson(np.full(3, 2.0), np.array([1.0, 2, 3])) == 0.0  # constant: undefined -> 0


def test_average_ranks_share_ties() -> None:
    assert average_ranks(np.array([10, 20, 20, 5, 20])).tolist() == [2, 4, 4, 1, 4]
    assert average_ranks(np.array([3.0, 1.0, 2.0])).tolist() == [3, 1, 2]


def test_spearman_by_hand_with_ties() -> None:
    spearman = METRICS.get("spearman")
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert spearman(x**3, x) == pytest.approx(1.0)  # monotone, not linear
    # ranks (1, 2.5, 2.5, 4) and (1, 2, 3, 4): 4.5 / sqrt(4.5 * 5)
    expected = 4.5 / math.sqrt(22.5)
    assert spearman(np.array([1, 2, 2, 3]), np.array([1, 2, 3, 4])) == pytest.approx(expected)
    assert spearman(np.ones(4), x) == 0.0


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        METRICS.get("accuracy")(np.array([1, 0, 1]), np.array([1, 0]))
    with pytest.raises(ValueError, match="no predictions"):
        METRICS.get("accuracy")(np.array([]), np.array([]))
    with pytest.raises(UnknownNameError, match="allowed: accuracy"):
        compute_metrics(["acuracy"], PREDICTIONS, LABELS)


def test_metric_mismatch_explains_misfits() -> None:
    assert metric_mismatch("accuracy", 3) is None
    assert metric_mismatch("pearson", None) is None
    assert "regression metric" in metric_mismatch("spearman", 2)
    assert "classification metric" in metric_mismatch("mcc", None)
    assert "exactly 2 classes" in metric_mismatch("f1", 3)
