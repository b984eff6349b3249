"""Task metrics on a whole evaluation set (never averaged per batch), in plain numpy.

Classification metrics take predicted class ids and true class ids; regression metrics take
predicted and true values. Each is registered in METRICS under the name tasks use in task.json.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from sparselab.registry import Registry

Metric = Callable[[np.ndarray, np.ndarray], float]

METRICS: Registry[Metric] = Registry("metric")

REGRESSION_METRICS = frozenset({"pearson", "spearman"})
BINARY_METRICS = frozenset({"f1"})  # positive class 1


def _pair(predictions: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays flattened, checked to be non-empty and of equal length."""
    predictions, labels = np.asarray(predictions).ravel(), np.asarray(labels).ravel()
    if predictions.shape != labels.shape:
        raise ValueError(f"{predictions.size} predictions for {labels.size} labels")
    if predictions.size == 0:
        raise ValueError("no predictions to score")
    return predictions, labels


@METRICS.register("accuracy")
def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of predictions equal to the label."""
    predictions, labels = _pair(predictions, labels)
    return float(np.mean(predictions == labels))


@METRICS.register("f1")
def f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 of the positive class 1; 0 when there are no positives predicted or true."""
    predictions, labels = _pair(predictions, labels)
    true_pos = np.sum((predictions == 1) & (labels == 1))
    false_pos = np.sum((predictions == 1) & (labels != 1))
    false_neg = np.sum((predictions != 1) & (labels == 1))
    denominator = 2 * true_pos + false_pos + false_neg
    return float(2 * true_pos / denominator) if denominator else 0.0


@METRICS.register("macro_f1")
def macro_f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Unweighted mean of the per-class F1 over every class in predictions or labels."""
    predictions, labels = _pair(predictions, labels)
    classes = np.unique(np.concatenate([predictions, labels]))
    return float(np.mean([f1(predictions == c, labels == c) for c in classes]))


@METRICS.register("mcc")
def mcc(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation (multi-class form, equal to the binary one for two classes).

    0 when undefined, i.e. when predictions or labels take a single value.
    """
    predictions, labels = _pair(predictions, labels)
    classes, codes = np.unique(np.concatenate([predictions, labels]), return_inverse=True)
    pred_codes, label_codes = codes[: predictions.size], codes[predictions.size :]
    confusion = np.zeros((classes.size, classes.size), dtype=np.float64)
    np.add.at(confusion, (label_codes, pred_codes), 1.0)
    true_per_class, pred_per_class = confusion.sum(axis=1), confusion.sum(axis=0)
    total, correct = confusion.sum(), np.trace(confusion)
    numerator = correct * total - true_per_class @ pred_per_class
    denominator = np.sqrt(
        (total**2 - pred_per_class @ pred_per_class) * (total**2 - true_per_class @ true_per_class)
    )
    return float(numerator / denominator) if denominator else 0.0


@METRICS.register("pearson")
def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Pearson correlation; 0 when undefined (constant predictions or labels)."""
    predictions, labels = _pair(predictions, labels)
    x = predictions.astype(np.float64) - predictions.mean(dtype=np.float64)
    y = labels.astype(np.float64) - labels.mean(dtype=np.float64)
    denominator = np.sqrt((x @ x) * (y @ y))
    return float(np.clip((x @ y) / denominator, -1.0, 1.0)) if denominator else 0.0


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, ties sharing the mean of the ranks they span."""
    values = np.asarray(values).ravel()
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts_group = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.append(starts[1:], values.size)
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = ((starts + 1 + ends) / 2.0)[group]
    return ranks


@METRICS.register("spearman")
def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Spearman rank correlation (Pearson of average ranks); 0 when undefined."""
    predictions, labels = _pair(predictions, labels)
    return pearson(average_ranks(predictions), average_ranks(labels))


def compute_metrics(
    names: list[str], predictions: np.ndarray, labels: np.ndarray
) -> dict[str, float]:
    """Every named metric on the whole evaluation set, in the order given."""
    return {name: METRICS.get(name)(predictions, labels) for name in names}


def metric_mismatch(name: str, num_labels: int | None) -> str | None:
    """Why metric `name` does not fit a task with `num_labels` classes (None: regression).

    None when it fits, so that configuration checks can report a one-line reason.
    """
    if name in REGRESSION_METRICS and num_labels is not None:
        return f"{name} is a regression metric but the task has {num_labels} classes"
    if name not in REGRESSION_METRICS and num_labels is None:
        return f"{name} is a classification metric but the task is a regression"
    if name in BINARY_METRICS and num_labels != 2:
        return f"{name} needs exactly 2 classes but the task has {num_labels}"
    return None
