"""Gradual magnitude pruning (Zhu & Gupta, 2017) during fine-tuning, with the cubic schedule.

The recipe of the sparse scaling-law runs (methods.md section 2: cubic from 25% to 75% of training,
masks updated every 100 steps) and of oBERT's gradual pruning (preset `obert`, methods.md section 4:
a one-shot jump to 70% at epoch 2 of 30, cubic to the target by epoch 26, an update every 4 epochs).
At every update the masks become the magnitude masks of the current weights at the scheduled
sparsity, with the run's allocation. Pruned weights rank last and stay pruned: masks only shrink.
"""

from __future__ import annotations

import math

import torch

from sparselab.masks import build_masks
from sparselab.schedules import cubic_sparsity
from sparselab.sparsifiers.base import SPARSIFIERS, Sparsifier


# oBERT's gradual schedule over 30 epochs: 70% at epoch 2, cubic to the target by epoch 26, masks
# updated every 4 epochs (epochs 2, 6, ..., 26).
PRESETS = {"obert": {"start": 2 / 30, "end": 26 / 30, "interval": 4 / 30, "initial_sparsity": 0.7}}


@SPARSIFIERS.register("gmp")
class GradualMagnitude(Sparsifier):
    """start/end: fractions of training of the cubic ramp; frequency: optimizer steps between mask
    updates, or interval: the fraction of training between them (when > 0, it replaces frequency:
    oBERT's "every 4 of 30 epochs" is 4/30 whatever the data size); initial_sparsity: the sparsity
    of the first update (oBERT jumps to 0.7 at once); preset: a named schedule that replaces start,
    end, interval and initial_sparsity ("" for none)."""

    hyperparameters = {"start": 0.25, "end": 0.75, "frequency": 100, "interval": 0.0, "initial_sparsity": 0.0,
                       "preset": ""}
    allows_nm = False

    def __init__(self, **hyper) -> None:
        super().__init__(**hyper)
        if self.hyper["preset"]:
            if self.hyper["preset"] not in PRESETS:
                raise ValueError(f"gmp preset {self.hyper['preset']!r} is unknown "
                                 f"(allowed: {', '.join(sorted(PRESETS))}, or '' for none)")
            self.hyper.update(PRESETS[self.hyper["preset"]])
        h = self.hyper
        if not 0 <= h["start"] <= h["end"] <= 1 or h["frequency"] < 1 or not 0 <= h["interval"] <= 1:
            raise ValueError(f"gmp schedule start {h['start']}, end {h['end']}, frequency {h['frequency']}, "
                             f"interval {h['interval']} is not possible "
                             "(allowed: 0 <= start <= end <= 1, frequency >= 1, 0 <= interval <= 1)")

    def scheduled_sparsity(self, steps_done: int) -> float:
        h = self.hyper
        return cubic_sparsity(steps_done, self.total_steps, h["start"], h["end"], h["initial_sparsity"],
                              self.target.sparsity)

    def _every(self) -> int:
        """Optimizer steps between mask updates."""
        if self.hyper["interval"] > 0:
            return max(1, round(self.hyper["interval"] * self.total_steps))
        return self.hyper["frequency"]

    def update_steps(self) -> list[int]:
        """Numbers of optimizer steps done after which the masks are updated.

        Every `frequency` steps (or `interval` of training) from the start of the ramp, plus the
        first step at or after its end, so the final sparsity is always reached whatever the
        frequency.
        """
        begin = math.ceil(self.hyper["start"] * self.total_steps)
        finish = min(self.total_steps, math.ceil(self.hyper["end"] * self.total_steps))
        steps = set(range(max(begin, 1), finish, self._every()))
        steps.add(max(finish, 1))
        return sorted(steps)

    def pruning_steps(self) -> list[int]:
        return self.update_steps()

    def begin(self, total_steps: int) -> None:
        super().begin(total_steps)
        self._updates = set(self.update_steps())

    def after_step(self, step: int) -> None:
        steps_done = step + 1
        if steps_done in self._updates:
            # pruned weights score -1, below every live |w| (a live weight can be exactly 0 too)
            scores = {name: torch.where(self.masks[name], w.detach().abs().float(), -1.0)
                      for name, w in self.prunable.items()}
            sparsity = self.scheduled_sparsity(steps_done)
            self.masks = build_masks(scores, sparsity, self.target.allocation, self.target.structure)
        self.apply_masks()
