"""The prunable set: the weight matrices a method ranks, chosen by include/exclude regexes."""

from __future__ import annotations

import re

from torch import nn


class PrunableSetError(ValueError):
    """The include/exclude patterns select no matrix of the model."""


def select_prunable(model: nn.Module, include: list[str], exclude: list[str]) -> dict[str, nn.Parameter]:
    """Parameters whose name matches an include pattern and no exclude pattern (re.search).

    Only 2-D weights qualify (biases and LayerNorm vectors are never pruned). The dict keeps the
    model's parameter order, which fixes the deterministic tie-breaking order of the allocators.
    """
    included = [re.compile(p) for p in include]
    excluded = [re.compile(p) for p in exclude]
    chosen = {
        name: param
        for name, param in model.named_parameters()
        if param.dim() == 2
        and any(p.search(name) for p in included)
        and not any(p.search(name) for p in excluded)
    }
    if not chosen:
        raise PrunableSetError(
            f"prunable.include {include} (exclude {exclude}) matches no 2-D weight of the model "
            f"(its weights look like {next(n for n, p in model.named_parameters() if p.dim() == 2)!r})"
        )
    return chosen
