"""Scoring methods, one file each; importing this package registers all of them."""

from sparselab.scoring import magnitude, random, seven_pre, taylor, wanda  # noqa: F401  (registration)
from sparselab.scoring.base import SCORERS, Scorer, ScoringContext

__all__ = ["SCORERS", "Scorer", "ScoringContext"]
