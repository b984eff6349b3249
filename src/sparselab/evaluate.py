"""Task metrics on the evaluation split, sparsity recounted from weights, sizes and latency."""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from torch import nn

from sparselab.batches import Encoded, collate
from sparselab.metrics import compute_metrics
from sparselab.modeling import autocast


@torch.no_grad()
def predict(model: nn.Module, data: Encoded, batch_size: int, device: torch.device, precision: str = "fp32") -> np.ndarray:
    """Class ids (argmax of the logits) or, for regression, the single predicted value per example.

    Examples run shortest first so that each batch pads little; predictions come back in file order.
    """
    model.to(device).eval()
    order = sorted(range(len(data)), key=lambda i: len(data.input_ids[i]))
    predictions = torch.empty(len(data))
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = collate(data, indices)
        batch.pop("labels")
        with autocast(device, precision):
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float()  # (batch, num_labels)
        predictions[indices] = (logits[:, 0] if data.regression else logits.argmax(dim=-1)).float().cpu()
    return predictions.numpy()


def task_metrics(
    model: nn.Module, data: Encoded, metrics: list[str], batch_size: int, device: torch.device, precision: str = "fp32"
) -> dict[str, float]:
    """Every metric of the task over the whole split (never averaged per batch)."""
    predictions = predict(model, data, batch_size, device, precision)
    return compute_metrics(metrics, predictions, np.asarray(data.labels))


def count_zeros(weights: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(zeros, total) over the given weights: the achieved sparsity recounted from the checkpoint."""
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    return zeros, sum(w.numel() for w in weights.values())


@torch.no_grad()
def latency_ms(
    model: nn.Module, batch_size: int, length: int, repeats: int, device: torch.device, precision: str = "fp32"
) -> float:
    """Median wall time of one forward pass on a (batch_size, length) batch, after one warm-up.

    The content of the batch does not matter for dense kernels, only its shape; any valid token does.
    """
    model.to(device).eval()
    token = min(1000, model.config.vocab_size - 1)
    input_ids = torch.full((batch_size, length), token, dtype=torch.long, device=device)
    mask = torch.ones_like(input_ids)
    with autocast(device, precision):
        model(input_ids=input_ids, attention_mask=mask)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with autocast(device, precision):
            model(input_ids=input_ids, attention_mask=mask)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
