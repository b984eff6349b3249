"""Scoring methods, one file each; importing this package registers all of them."""

from sparselab.scoring import magnitude, random  # noqa: F401  (registration side effect)
from sparselab.scoring import seven_pre  # noqa: F401
from sparselab.scoring import taylor  # noqa: F401
from sparselab.scoring import wanda  # noqa: F401
from sparselab.scoring.base import SCORERS, Scorer, ScoringContext

__all__ = ["SCORERS", "Scorer", "ScoringContext"]
