"""Gradual magnitude pruning (Zhu & Gupta, 2017) during fine-tuning, with the cubic schedule.

The recipe of the sparse scaling-law runs (methods.md section 2: cubic from 25% to 75% of training,
masks updated every 100 steps) and of oBERT's gradual pruning. At every update the masks become the
magnitude masks of the current weights at the scheduled sparsity, with the run's allocation. Pruned
weights rank last and stay pruned: masks only shrink.
"""

from __future__ import annotations

import math

import torch

from sparselab.masks import build_masks
from sparselab.schedules import cubic_sparsity
from sparselab.sparsifiers.base import SPARSIFIERS, Sparsifier


@SPARSIFIERS.register("gmp")
class GradualMagnitude(Sparsifier):
    """start/end: fractions of training of the cubic ramp; frequency: optimizer steps between mask
    updates; initial_sparsity: the sparsity of the first update (oBERT jumps to 0.7 at once)."""

    hyperparameters = {"start": 0.25, "end": 0.75, "frequency": 100, "initial_sparsity": 0.0}
    allows_nm = False

    def scheduled_sparsity(self, steps_done: int) -> float:
        h = self.hyper
        return cubic_sparsity(steps_done, self.total_steps, h["start"], h["end"], h["initial_sparsity"],
                              self.target.sparsity)

    def update_steps(self) -> list[int]:
        """Numbers of optimizer steps done after which the masks are updated.

        Every `frequency` steps from the start of the ramp, plus the first step at or after its end,
        so the final sparsity is always reached whatever the frequency.
        """
        begin = math.ceil(self.hyper["start"] * self.total_steps)
        finish = min(self.total_steps, math.ceil(self.hyper["end"] * self.total_steps))
        steps = set(range(max(begin, 1), finish, self.hyper["frequency"]))
        steps.add(max(finish, 1))
        return sorted(steps)

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
