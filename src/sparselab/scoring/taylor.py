"""First-order Taylor saliency |W * G| summed over calibration batches (SNIP-style)."""

from __future__ import annotations

import torch

from sparselab.scoring.base import SCORERS, Scorer, ScoringContext
from sparselab.scoring.calibration import calibration_gradients


@SCORERS.register("taylor")
class TaylorScorer(Scorer):
    """Score = sum over b = 1..num_batches of |W * G_b|, G_b the task-loss gradient of batch b.

    The per-batch magnitudes are summed (SNIP-style accumulation, as SEVEN's "movement" baseline
    is per step), so gradients of opposite sign in different batches do not cancel.
    """

    hyperparameters = {"num_batches": 8, "batch_size": 32, "max_length": 128}
    needs_data = True

    def score(self, ctx: ScoringContext) -> dict[str, torch.Tensor]:
        # name -> (out, in) float32 accumulator
        scores = {name: torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
                  for name, weight in ctx.prunable.items()}
        for grads in calibration_gradients(ctx, "taylor", self.hyper["num_batches"],
                                           self.hyper["batch_size"], self.hyper["max_length"]):
            for name, weight in ctx.prunable.items():
                scores[name] += (weight.detach().float() * grads[name].float()).abs()
        return scores
