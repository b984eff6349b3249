"""Magnitude scores |W|: the one-shot magnitude pruning of the essential-sparsity paper."""

from __future__ import annotations

import torch

from sparselab.scoring.base import SCORERS, Scorer, ScoringContext


@SCORERS.register("magnitude")
class MagnitudeScorer(Scorer):
    """|W| of every prunable matrix, from the weights alone."""

    def score(self, ctx: ScoringContext) -> dict[str, torch.Tensor]:
        return {name: weight.detach().abs().float() for name, weight in ctx.prunable.items()}
