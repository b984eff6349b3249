"""Fine-tuning under a sparsifier: AdamW with the recipe's schedule, masks kept by the sparsifier.

The sparsifier (sparselab.sparsifiers) decides what stays zero: the prune stage's mask held fixed,
or a during-training method that changes the masks on its schedule. None trains densely.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from sparselab.batches import Encoded, iterate_batches
from sparselab.modeling import autocast
from sparselab.schedules import total_training_steps
from sparselab.sparsifiers import Sparsifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """A fine-tuning recipe (params.yaml `recipes.<name>`)."""

    epochs: float
    batch_size: int
    learning_rate: float
    lr_schedule: str = "linear"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    max_length: int = 128
    max_train_examples: int | None = None
    group_by_length: bool = True
    precision: str = "fp32"


LR_SCHEDULES = {
    "linear": lambda progress: max(0.0, 1.0 - progress),
    "constant": lambda progress: 1.0,
}


def lr_factor(step: int, total_steps: int, recipe: Recipe) -> float:
    """Multiplier of the peak learning rate at `step`: linear warm-up, then the recipe's decay."""
    warmup = int(recipe.warmup_ratio * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return LR_SCHEDULES[recipe.lr_schedule](progress)


def training_step(
    model: nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
    sparsifier: Sparsifier | None, step: int, precision: str,
) -> torch.Tensor:
    """One optimizer step with the sparsifier's hooks around it; returns the (detached) loss."""
    with autocast(batch["input_ids"].device, precision):
        loss = model(**batch).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if sparsifier is not None:
        sparsifier.after_backward(step)
    optimizer.step()
    if sparsifier is not None:
        sparsifier.after_step(step)
    return loss.detach()


@dataclass
class TrainResult:
    steps: int
    final_train_loss: float
    wall_seconds: float
    trainable_params: int
    total_params: int


def train(
    model: nn.Module,
    data: Encoded,
    recipe: Recipe,
    seed: int,
    device: torch.device,
    log_path: Path,
    sparsifier: Sparsifier | None = None,
) -> TrainResult:
    """Train `model` on `data` with AdamW and the recipe's schedule; write one CSV row per step.

    `sparsifier` must be attached to `model` already. The final training loss is the mean over
    the last epoch's steps (at least the last 10%).
    """
    model.to(device).train()
    steps_per_epoch = math.ceil(len(data) / recipe.batch_size)
    total_steps = total_training_steps(len(data), recipe.epochs, recipe.batch_size)
    if sparsifier is not None:
        sparsifier.begin(total_steps)
    trainable = sparsifier.trainable_parameters() if sparsifier else [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.learning_rate,
        eps=recipe.adam_epsilon,
        fused=True,  # one kernel per parameter group: the step costs a fifth of the loop's on CPU
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, recipe))
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout

    losses: list[float] = []
    start = time.perf_counter()
    with open(log_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "epoch", "loss", "learning_rate", "seconds"])
        step = 0
        while step < total_steps:
            for batch in iterate_batches(data, recipe.batch_size, generator, recipe.group_by_length):
                batch = {k: v.to(device) for k, v in batch.items()}
                loss = training_step(model, batch, optimizer, sparsifier, step, recipe.precision)
                scheduler.step()
                step += 1
                losses.append(loss.item())
                writer.writerow([step, f"{step / steps_per_epoch:.4f}", f"{loss.item():.6f}",
                                 f"{scheduler.get_last_lr()[0]:.6g}", f"{time.perf_counter() - start:.2f}"])
                if step == total_steps:
                    break
    if sparsifier is not None:
        sparsifier.finalize()
    tail = max(1, min(steps_per_epoch, len(losses)), len(losses) // 10)
    total = sum(p.numel() for p in model.parameters())
    log.info("trained %d steps in %.1f s, final loss %.4f", step, time.perf_counter() - start, sum(losses[-tail:]) / tail)
    return TrainResult(
        steps=step,
        final_train_loss=sum(losses[-tail:]) / tail,
        wall_seconds=time.perf_counter() - start,
        trainable_params=sparsifier.trainable_count() if sparsifier else sum(p.numel() for p in trainable),
        total_params=total,
    )


def recipe_from_config(entry: dict) -> Recipe:
    """A Recipe from a params.yaml recipe entry (validated already)."""
    return Recipe(**{f.name: entry[f.name] for f in fields(Recipe) if f.name in entry})
