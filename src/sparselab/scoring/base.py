"""The scorer interface: importance scores for every prunable matrix (higher = keep)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from sparselab.batches import CalibrationData
from sparselab.registry import Registry


@dataclass
class ScoringContext:
    """What a scorer may look at.

    model: the model in eval mode (sequence classification, head included).
    prunable: name -> weight parameter (out x in) of every prunable matrix.
    calibration: labelled training rows to draw batches from, or None when the run has no data
        (only scorers with needs_data = False work then).
    generator: a seeded CPU generator for any randomness in the scorer.
    """

    model: nn.Module
    prunable: dict[str, nn.Parameter]
    calibration: CalibrationData | None
    generator: torch.Generator


class Scorer(ABC):
    """One importance-scoring method. Subclasses register with `@SCORERS.register(name)`.

    `hyperparameters` maps each accepted hyper-parameter to its default; params.yaml sets them
    in the method entry next to `scorer:`.
    """

    hyperparameters: ClassVar[dict[str, Any]] = {}
    needs_data: ClassVar[bool] = False

    def __init__(self, **hyper: Any) -> None:
        unknown = sorted(set(hyper) - set(self.hyperparameters))
        if unknown:
            allowed = ", ".join(sorted(self.hyperparameters)) or "none"
            raise ValueError(f"unknown hyper-parameter {unknown[0]!r} (allowed: {allowed})")
        self.hyper = {**self.hyperparameters, **hyper}

    @abstractmethod
    def score(self, ctx: ScoringContext) -> dict[str, torch.Tensor]:
        """Float32 scores shaped like each prunable weight; ties are broken by position later."""


SCORERS: Registry[type[Scorer]] = Registry("scorer")
