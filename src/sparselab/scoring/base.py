"""The scorer interface: importance scores for every prunable matrix (higher = keep)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from sparselab.batches import CalibrationData
from sparselab.registry import Configurable, Registry


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


class Scorer(Configurable, ABC):
    """One importance-scoring method. Subclasses register with `@SCORERS.register(name)`.

    Hyper-parameters (name -> default in `hyperparameters`) are set in params.yaml next to
    `scorer:`. `needs_data` scorers get labelled calibration batches through the context.
    """

    needs_data: ClassVar[bool] = False
    allowed_allocations: ClassVar[tuple[str, ...] | None] = None  # None: every registered allocation

    @abstractmethod
    def score(self, ctx: ScoringContext) -> dict[str, torch.Tensor]:
        """Float32 scores shaped like each prunable weight; ties are broken by position later."""


SCORERS: Registry[type[Scorer]] = Registry("scorer")
