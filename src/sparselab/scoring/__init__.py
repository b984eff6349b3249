"""Scoring methods, one file each; importing this package registers all of them."""

from sparselab.scoring import (  # noqa: F401  (registration side effect)
    magnitude,
    random,
    seven_pre,  # noqa: F401
    taylor,  # noqa: F401
    wanda,  # noqa: F401
)
from sparselab.scoring.base import SCORERS, Scorer, ScoringContext

__all__ = ["SCORERS", "Scorer", "ScoringContext"]
