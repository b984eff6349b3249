"""AC/DC: alternating compressed and decompressed training (Peste et al., NeurIPS 2021).

methods.md section 4: a dense warm-up of `warmup` of training, then sparse and dense phases of
`phase` of training each, in turn, and a final sparse phase of `final` of training. Each sparse
phase starts by taking the magnitude mask of the current weights at the run's sparsity, with its
allocation and structure, and holds it for the phase (gradients and weights masked, as a fixed
mask). In a dense phase every weight trains: the pruned ones restart from zero. The run ends sparse,
with the mask of the last sparse phase.
"""

from __future__ import annotations

import torch

from sparselab.masks import build_masks
from sparselab.sparsifiers.base import SPARSIFIERS, Sparsifier


@SPARSIFIERS.register("acdc")
class AlternatingSparseDense(Sparsifier):
    """warmup, phase, final: fractions of training of the dense warm-up, of each alternating phase
    and of the final sparse phase (the defaults are methods.md's 10%, 5% and 15%)."""

    hyperparameters = {"warmup": 0.1, "phase": 0.05, "final": 0.15}

    def __init__(self, **hyper) -> None:
        super().__init__(**hyper)
        h = self.hyper
        if not (0 <= h["warmup"] and 0 < h["phase"] and 0 < h["final"] and h["warmup"] + h["final"] <= 1):
            raise ValueError(f"acdc phases warmup {h['warmup']}, phase {h['phase']}, final {h['final']} are not "
                             "possible (allowed: warmup >= 0, phase > 0, final > 0, warmup + final <= 1)")

    def phases(self, total_steps: int) -> list[tuple[int, bool]]:
        """(first step, sparse?) of every phase, in order, with neighbours of the same kind merged."""
        h = self.hyper
        bounds = [(0, False)]
        position, sparse = h["warmup"], True
        while position < 1 - h["final"] - 1e-9:
            bounds.append((round(position * total_steps), sparse))
            position, sparse = position + h["phase"], not sparse
        bounds.append((round((1 - h["final"]) * total_steps), True))
        merged: list[tuple[int, bool]] = []
        for start, kind in bounds:
            if merged and merged[-1][0] == start:
                merged.pop()  # a phase of no steps
            if not merged or merged[-1][1] != kind:
                merged.append((start, kind))
        return merged

    def check_steps(self, total_steps: int) -> None:
        if len(self.phases(total_steps)) != len(self.phases(10**9)):  # a phase rounded to no steps
            raise ValueError(
                f"acdc phases of {self.hyper['phase']} of training are shorter than one of the run's "
                f"{total_steps} optimizer steps (allowed: phase * steps >= 1; train longer or lengthen the phases)"
            )

    def begin(self, total_steps: int) -> None:
        super().begin(total_steps)
        self._starts = dict(self.phases(total_steps))
        if self._starts[0]:  # no warm-up: sparse from the first step
            self._prune()

    def pruning_steps(self) -> list[int]:
        """The first step of every sparse phase: a new mask, where a cyclic learning rate restarts."""
        return [start for start, sparse in self._starts.items() if sparse]

    def _sparse_at(self, step: int) -> bool:
        return [sparse for start, sparse in self._starts.items() if start <= step][-1]

    def _prune(self) -> None:
        """The magnitude mask of the current weights at the run's sparsity, applied."""
        scores = {name: w.detach().abs().float() for name, w in self.prunable.items()}
        self.masks = build_masks(scores, self.target.sparsity, self.target.allocation, self.target.structure)
        self.apply_masks()

    def after_backward(self, step: int) -> None:
        if self._sparse_at(step):
            super().after_backward(step)

    def after_step(self, step: int) -> None:
        if self._sparse_at(step):  # the step just taken was sparse: its pruned weights stay zero
            self.apply_masks()
        steps_done = step + 1
        if steps_done < self.total_steps and steps_done in self._starts:
            if self._starts[steps_done]:
                self._prune()
            else:
                self.masks = {name: torch.ones_like(w, dtype=torch.bool) for name, w in self.prunable.items()}
