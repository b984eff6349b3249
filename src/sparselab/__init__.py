"""sparselab: a reproducible workflow for pruning pretrained transformers."""

__version__ = "0.1.0"
