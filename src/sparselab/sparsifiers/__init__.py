"""Sparsifiers keep a model sparse while it trains; importing this package registers all of them."""

from sparselab.sparsifiers import acdc, gmp, pst, seven_dyn  # noqa: F401  (registration side effect)
from sparselab.sparsifiers.base import SPARSIFIERS, FixedMask, Sparsifier, Target

__all__ = ["SPARSIFIERS", "FixedMask", "Sparsifier", "Target"]
