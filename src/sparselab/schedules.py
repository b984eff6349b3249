"""Sparsity schedules of during-training methods: the target sparsity at each optimizer step."""

from __future__ import annotations

import math


def total_training_steps(examples: int, epochs: float, batch_size: int) -> int:
    """Optimizer steps of a run: epochs x ceil(examples / batch size), at least one."""
    return max(1, round(epochs * math.ceil(examples / batch_size)))


def cubic_sparsity(step: int, total_steps: int, start: float, end: float, initial: float, final: float) -> float:
    """Zhu & Gupta's cubic ramp, as used by gradual magnitude pruning and PST.

    `start` and `end` are fractions of training: before start the sparsity is `initial`, after end
    it is `final`, and in between s(t) = final + (initial - final) * (1 - p)^3 with p the progress
    through [start, end]. The ramp is steep early, when many weights are redundant, and flat late.
    """
    begin, finish = start * total_steps, end * total_steps
    if step < begin:
        return initial
    if step >= finish or finish <= begin:
        return final
    progress = (step - begin) / (finish - begin)
    return final + (initial - final) * (1.0 - progress) ** 3


def seven_keep_fraction(t: int, window: int, target_sparsity: float) -> float:
    """SEVEN's kept fraction at pruning step t = 0..T-1 inside its window of T steps.

    keep(t) = k + (1 - k) (1 - (t + 1) / T)^3 with k = 1 - target sparsity; keep(T - 1) = k.
    """
    keep = 1.0 - target_sparsity
    return keep + (1.0 - keep) * (1.0 - (t + 1) / window) ** 3
