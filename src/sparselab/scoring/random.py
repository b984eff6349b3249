"""Random scores: the random-pruning baseline, reproducible from the run's seed."""

from __future__ import annotations

import torch

from sparselab.scoring.base import SCORERS, Scorer, ScoringContext


@SCORERS.register("random")
class RandomScorer(Scorer):
    """Uniform random scores drawn from the context's seeded generator, in prunable order."""

    def score(self, ctx: ScoringContext) -> dict[str, torch.Tensor]:
        return {
            name: torch.rand(weight.shape, generator=ctx.generator)
            for name, weight in ctx.prunable.items()
        }
