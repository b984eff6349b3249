"""Task metrics on the evaluation split, sparsity recounted from weights, sizes and latency."""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from torch import nn

from sparselab.batches import Encoded, ImageEncoded
from sparselab.metrics import compute_metrics
from sparselab.modeling import autocast


@torch.no_grad()
def forward_logits(model: nn.Module, data: Encoded | ImageEncoded, batch_size: int, device: torch.device,
                   precision: str = "fp32") -> torch.Tensor:
    """The model's logits on every example, (examples, classes) float32 on the CPU, in file order.

    The model runs in eval mode, examples shortest first so that each batch pads little (images: in
    file order): file-order batches of short reviews pad to about twice their mean length. The
    batches depend only on the data and `batch_size`, so the logits are the same in every run.
    """
    model.to(device).eval()
    lengths = data.lengths()
    order = sorted(range(len(data)), key=lambda i: lengths[i])
    outputs = torch.empty(len(data), model.config.num_labels)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = data.collate(indices)
        batch.pop("labels")
        with autocast(device, precision):
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()  # (batch, classes)
        outputs[indices] = logits
    return outputs


def predict(model: nn.Module, data: Encoded | ImageEncoded, batch_size: int, device: torch.device, precision: str = "fp32") -> np.ndarray:
    """Class ids (argmax of the logits) or, for regression, the single predicted value per example,
    in file order."""
    logits = forward_logits(model, data, batch_size, device, precision)
    return (logits[:, 0] if data.regression else logits.argmax(dim=-1)).float().numpy()


def task_metrics(
    model: nn.Module, data: Encoded | ImageEncoded, metrics: list[str], batch_size: int, device: torch.device, precision: str = "fp32"
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
    model: nn.Module, batch: dict[str, torch.Tensor], repeats: int, device: torch.device, precision: str = "fp32"
) -> float:
    """Median wall time of one forward pass on `batch` (an input pipeline's `latency_batch`), after
    one warm-up. The content of the batch does not matter for dense kernels, only its shape."""
    model.to(device).eval()
    inputs = {key: value.to(device) for key, value in batch.items()}
    with autocast(device, precision):
        model(**inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with autocast(device, precision):
            model(**inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
