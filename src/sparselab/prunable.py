"""The prunable set: the weight matrices a method ranks, chosen by include/exclude regexes."""

from __future__ import annotations

import re
from typing import Iterable

from torch import nn


class PrunableSetError(ValueError):
    """The include/exclude patterns select no matrix of the model."""


def prunable_names(names: Iterable[str], include: list[str], exclude: list[str]) -> list[str]:
    """The names that match an include pattern and no exclude pattern (re.search), in order."""
    included = [re.compile(p) for p in include]
    excluded = [re.compile(p) for p in exclude]
    return [n for n in names if any(p.search(n) for p in included) and not any(p.search(n) for p in excluded)]


def select_prunable(model: nn.Module, include: list[str], exclude: list[str]) -> dict[str, nn.Parameter]:
    """Parameters whose name matches an include pattern and no exclude pattern (re.search).

    Only 2-D weights qualify (biases and LayerNorm vectors are never pruned). The dict keeps the
    model's parameter order, which fixes the deterministic tie-breaking order of the allocators.
    """
    matrices = {name: param for name, param in model.named_parameters() if param.dim() == 2}
    chosen = {name: matrices[name] for name in prunable_names(matrices, include, exclude)}
    if not chosen:
        raise PrunableSetError(
            f"prunable.include {include} (exclude {exclude}) matches no 2-D weight of the model "
            f"(its weights look like {next(n for n, p in model.named_parameters() if p.dim() == 2)!r})"
        )
    return chosen
