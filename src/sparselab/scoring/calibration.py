"""Calibration helpers shared by the data-driven scorers: the missing-data error and the
per-batch gradients of the task loss."""

from __future__ import annotations

from typing import Iterator

import torch

from sparselab.batches import CalibrationData
from sparselab.scoring.base import ScoringContext


def require_calibration(ctx: ScoringContext, scorer: str) -> CalibrationData:
    """The context's calibration data, or a one-line ValueError naming the scorer."""
    if ctx.calibration is None:
        raise ValueError(f"scorer {scorer!r} needs calibration data, but the scoring context has none")
    return ctx.calibration


def calibration_gradients(
    ctx: ScoringContext, scorer: str, num_batches: int, batch_size: int, max_length: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Per calibration batch, the gradient of the task loss `model(**batch).loss` for every
    prunable weight (name -> tensor shaped like the weight, in prunable order).

    The model runs in eval mode (no dropout: the same seed gives the same gradients) with
    requires_grad on the prunable weights only, so no graph is built for the rest. Gradients come
    from torch.autograd.grad and are never stored in `.grad`; no optimizer step is taken. The
    training mode and every requires_grad flag are restored once the batches are consumed.
    """
    calibration = require_calibration(ctx, scorer)
    model = ctx.model
    names = list(ctx.prunable)
    weights = list(ctx.prunable.values())
    device = weights[0].device
    was_training = model.training
    flags = [(param, param.requires_grad) for param in model.parameters()]
    try:
        model.eval()
        for param, _ in flags:
            param.requires_grad_(False)
        for weight in weights:
            weight.requires_grad_(True)
        drawn = 0
        for batch in calibration.batches(num_batches, batch_size, max_length):
            # input_ids, token_type_ids, attention_mask: (batch, length); labels: (batch,)
            batch = {key: value.to(device) for key, value in batch.items()}
            with torch.enable_grad():
                loss = model(**batch).loss
                # a weight the loss does not reach gets a zero gradient
                grads = torch.autograd.grad(loss, weights, allow_unused=True, materialize_grads=True)
            drawn += 1
            yield dict(zip(names, grads))
        if drawn == 0:
            raise ValueError(f"scorer {scorer!r} drew no calibration batch (num_batches={num_batches})")
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
        model.train(was_training)
