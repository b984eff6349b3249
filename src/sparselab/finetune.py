"""Fine-tuning under a sparsifier: AdamW with the recipe's schedule, masks kept by the sparsifier.

The sparsifier (sparselab.sparsifiers) decides what stays zero: the prune stage's mask held fixed,
or a during-training method that changes the masks on its schedule. None trains densely.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import signal
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from sparselab import resume
from sparselab.batches import Encoded, iterate_batches
from sparselab.modeling import autocast
from sparselab.resume import Checkpointing, TrainingInterrupted
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
    # optimizer steps between resumable checkpoints (0: only when stopped by a signal); the
    # results do not depend on it, so it is not part of a run's identity (`identity`)
    checkpoint_every: int = 1000

    def identity(self) -> dict:
        """The settings that make the results: every field but checkpoint_every."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "checkpoint_every"}


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


def _epochs(data: Encoded, recipe: Recipe, generator: torch.Generator, skip: int = 0
            ) -> Iterator[tuple[torch.Tensor, int, dict[str, torch.Tensor]]]:
    """(data generator state at the start of the epoch, batches done in the epoch, batch) for
    epoch after epoch, without end; the first `skip` batches of the first epoch are left out.

    An epoch draws its whole order from `generator` before its first batch, so resuming mid-epoch
    sets the generator to the epoch's start state and skips the batches done: the same order, and
    the same generator state afterwards, as a run that was never stopped.
    """
    while True:
        epoch_state = generator.get_state()
        for position, batch in enumerate(iterate_batches(data, recipe.batch_size, generator, recipe.group_by_length), 1):
            if position > skip:
                yield epoch_state, position, batch
        skip = 0


def _rng_states(device: torch.device, epoch_state: torch.Tensor) -> dict[str, torch.Tensor]:
    """The RNG states a resumed run needs: the data order's at its epoch start, torch's (dropout)."""
    states = {"data_epoch": epoch_state, "torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def train(
    model: nn.Module,
    data: Encoded,
    recipe: Recipe,
    seed: int,
    device: torch.device,
    log_path: Path,
    sparsifier: Sparsifier | None = None,
    checkpointing: Checkpointing | None = None,
) -> TrainResult:
    """Train `model` on `data` with AdamW and the recipe's schedule; write one CSV row per step.

    `sparsifier` must be attached to `model` already. The final training loss is the mean over
    the last epoch's steps (at least the last 10%).

    With `checkpointing`, the run is resumable (sparselab.resume): it continues from a saved state
    of the same run if there is one, saves its state every `checkpointing.every` steps, and on
    SIGTERM or SIGUSR1 finishes its current step, saves and raises TrainingInterrupted. A resumed
    run ends with the same weights and log (but for the `seconds` column) as one never stopped,
    on a CPU; its `seconds` and wall_seconds count the training time of the steps kept.
    """
    with checkpointing.signals() if checkpointing is not None else contextlib.nullcontext():
        return _train(model, data, recipe, seed, device, log_path, sparsifier, checkpointing)


def _train(model, data, recipe, seed, device, log_path, sparsifier, checkpointing) -> TrainResult:
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

    step, position, losses, rows, seconds_before = 0, 0, [], [], 0.0
    if checkpointing is not None:
        checkpointing.fingerprint = resume.canonical({
            **checkpointing.fingerprint,
            "recipe": recipe.identity(),
            "seed": seed,
            "train_examples": len(data),
            "total_steps": total_steps,
            "sparsifier": None if sparsifier is None else {
                "class": type(sparsifier).__name__, "hyper": sparsifier.hyper,
                "target": None if sparsifier.target is None else
                [sparsifier.target.sparsity, sparsifier.target.allocation, str(sparsifier.target.structure)]},
        })
        loading = time.perf_counter()
        saved = checkpointing.load()
        if saved is not None:
            tensors, meta = saved
            rng = resume.restore(tensors, meta, model, optimizer, scheduler, sparsifier)
            progress = meta["progress"]
            step, position, losses, rows = progress["step"], progress["position"], progress["losses"], progress["rows"]
            seconds_before = progress["seconds"]
            generator.set_state(rng["data_epoch"])
            torch.set_rng_state(rng["torch"])
            if device.type == "cuda" and "cuda" in rng:
                torch.cuda.set_rng_state(rng["cuda"], device)
            log.info("resuming from %s at step %d of %d (loaded in %.2f s)", checkpointing.path, step, total_steps,
                     time.perf_counter() - loading)

    start = time.perf_counter()
    with open(log_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "epoch", "loss", "learning_rate", "seconds"])
        writer.writerows(rows)
        for epoch_state, position, batch in _epochs(data, recipe, generator, skip=position):
            if step >= total_steps:
                break
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = training_step(model, batch, optimizer, sparsifier, step, recipe.precision)
            scheduler.step()
            step += 1
            losses.append(loss.item())
            row = [step, f"{step / steps_per_epoch:.4f}", f"{loss.item():.6f}",
                   f"{scheduler.get_last_lr()[0]:.6g}", f"{seconds_before + time.perf_counter() - start:.2f}"]
            rows.append(row)
            writer.writerow(row)
            if step == total_steps:
                break
            if checkpointing is not None and checkpointing.due(step):
                saving = time.perf_counter()
                tensors, meta = resume.capture(model, optimizer, scheduler, sparsifier,
                                               _rng_states(device, epoch_state))
                meta["progress"] = {"step": step, "position": position, "losses": losses, "rows": rows,
                                    "seconds": seconds_before + time.perf_counter() - start}
                checkpointing.save(tensors, meta)
                log.info("saved the resumable state at step %d of %d in %.2f s", step, total_steps,
                         time.perf_counter() - saving)
                if checkpointing.stop_signal is not None:
                    name = signal_name(checkpointing.stop_signal)
                    raise TrainingInterrupted(
                        f"fine-tuning stopped by {name} after step {step} of {total_steps}; its state is saved in "
                        f"{checkpointing.path} and the next run of this job resumes from it"
                    )
    if sparsifier is not None:
        sparsifier.finalize()
    tail = max(1, min(steps_per_epoch, len(losses)), len(losses) // 10)
    total = sum(p.numel() for p in model.parameters())
    wall = seconds_before + time.perf_counter() - start
    log.info("trained %d steps in %.1f s, final loss %.4f", step, wall, sum(losses[-tail:]) / tail)
    return TrainResult(
        steps=step,
        final_train_loss=sum(losses[-tail:]) / tail,
        wall_seconds=wall,
        trainable_params=sparsifier.trainable_count() if sparsifier else sum(p.numel() for p in trainable),
        total_params=total,
    )


def signal_name(signum: int) -> str:
    """SIGTERM, SIGUSR1..., or the number of a signal Python does not name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def recipe_from_config(entry: dict) -> Recipe:
    """A Recipe from a params.yaml recipe entry (validated already)."""
    return Recipe(**{f.name: entry[f.name] for f in fields(Recipe) if f.name in entry})
