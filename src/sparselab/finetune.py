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
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from sparselab import resume
from sparselab.batches import Encoded, ImageEncoded, iterate_batches
from sparselab.distillation import Distillation
from sparselab.modeling import autocast
from sparselab.resume import Checkpointing, TrainingInterrupted
from sparselab.schedules import total_training_steps
from sparselab.sparsifiers import Sparsifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """A fine-tuning recipe (params.yaml `recipes.<name>`, its base or preset resolved)."""

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
    # the training budget: epochs x this (1x, 2x, 4x of the base schedule); schedules of
    # during-training methods are fractions of training, so they stretch with it
    epochs_multiplier: float = 1.0
    # the learning rate decays to peak x this (oBERT: 5e-5 -> 5e-6 is 0.1)
    final_lr_ratio: float = 0.0
    distillation: Distillation | None = None
    # optimizer steps between resumable checkpoints (0: only when stopped by a signal); the
    # results do not depend on it, so it is not part of a run's identity (`identity`)
    checkpoint_every: int = 1000

    @property
    def total_epochs(self) -> float:
        return self.epochs * self.epochs_multiplier

    def identity(self) -> dict:
        """The settings that make the results: every field but checkpoint_every."""
        return {key: value for key, value in asdict(self).items() if key != "checkpoint_every"}


# The built-in recipes of methods.md section 4 (params.yaml `preset:`); both distil from a dense
# teacher with hardness 1.0 and temperature 2.0, whose recipe the user names.
_OBERT_DISTILLATION = {"temperature": 2.0, "hardness": 1.0}
RECIPE_PRESETS = {
    # oBERT's downstream gradual pruning (with a gmp method of preset `obert`): 30 epochs, the
    # learning rate 5e-5 -> 5e-6 restarted at each pruning step
    "obert_gradual": {"epochs": 30, "batch_size": 32, "learning_rate": 5.0e-5, "lr_schedule": "cyclic",
                      "final_lr_ratio": 0.1, "max_length": 128, "distillation": _OBERT_DISTILLATION},
    # sparse transfer: an upstream-pruned model fine-tuned with its mask fixed
    "sparse_transfer": {"epochs": 8, "batch_size": 32, "learning_rate": 1.5e-4, "lr_schedule": "linear",
                        "max_length": 128, "distillation": _OBERT_DISTILLATION},
}


def _decay(step: int, start: int, end: int, final: float) -> float:
    """Linear from 1 at `start` to `final` at `end`."""
    return 1.0 - (1.0 - final) * (step - start) / max(1, end - start)


def _cycle(step: int, warmup: int, total: int, restarts: Sequence[int]) -> tuple[int, int]:
    """(first, end) step of the cycle holding `step`: cycles start after the warm-up and at every
    restart, and the last ends with training."""
    start = max([warmup, *(r for r in restarts if r <= step)])
    return start, min([total, *(r for r in restarts if r > step)])


# factor(step, warm-up steps, total steps, restarts, final ratio) after the warm-up
LR_SCHEDULES: dict[str, Callable[[int, int, int, Sequence[int], float], float]] = {
    "linear": lambda step, warmup, total, restarts, final: _decay(step, warmup, total, final),
    "constant": lambda step, warmup, total, restarts, final: 1.0,
    # linear decay restarted at each pruning step (oBERT's gradual recipe)
    "cyclic": lambda step, warmup, total, restarts, final: _decay(step, *_cycle(step, warmup, total, restarts), final),
}


def lr_factor(step: int, total_steps: int, recipe: Recipe, restarts: Sequence[int] = ()) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based): linear warm-up, then
    the recipe's schedule. `restarts`: the steps whose masks are new (the sparsifier's
    pruning_steps), where a cyclic schedule starts over."""
    warmup = int(recipe.warmup_ratio * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    return LR_SCHEDULES[recipe.lr_schedule](step, warmup, total_steps, restarts, recipe.final_lr_ratio)


LossFunction = Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


def supervised_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own loss on the labels: the objective and the task loss at once."""
    loss = model(**batch).loss
    return loss, loss


def training_step(
    model: nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
    sparsifier: Sparsifier | None, step: int, precision: str, loss_fn: LossFunction = supervised_loss,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step with the sparsifier's hooks around it; the (detached) objective and task
    loss (they differ under distillation)."""
    with autocast(next(iter(batch.values())).device, precision):
        loss, task_loss = loss_fn(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if sparsifier is not None:
        sparsifier.after_backward(step)
    optimizer.step()
    if sparsifier is not None:
        sparsifier.after_step(step)
    return loss.detach(), task_loss.detach()


@dataclass
class TrainResult:
    steps: int
    final_train_loss: float
    final_task_loss: float
    wall_seconds: float
    trainable_params: int
    total_params: int


def _epochs(data: Encoded | ImageEncoded, recipe: Recipe, generator: torch.Generator, skip: int = 0
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
    data: Encoded | ImageEncoded,
    recipe: Recipe,
    seed: int,
    device: torch.device,
    log_path: Path,
    sparsifier: Sparsifier | None = None,
    checkpointing: Checkpointing | None = None,
    loss_fn: LossFunction = supervised_loss,
) -> TrainResult:
    """Train `model` on `data` with AdamW and the recipe's schedule; write one CSV row per step.

    `sparsifier` must be attached to `model` already. `loss_fn` gives the objective and the task
    loss of a batch (sparselab.distillation for a distilled run). The final training and task
    losses are means over the last epoch's steps (at least the last 10%).

    With `checkpointing`, the run is resumable (sparselab.resume): it continues from a saved state
    of the same run if there is one, saves its state every `checkpointing.every` steps, and on
    SIGTERM or SIGUSR1 finishes its current step, saves and raises TrainingInterrupted. A resumed
    run ends with the same weights and log (but for the `seconds` column) as one never stopped,
    on a CPU; its `seconds` and wall_seconds count the training time of the steps kept.
    """
    with checkpointing.signals() if checkpointing is not None else contextlib.nullcontext():
        return _train(model, data, recipe, seed, device, log_path, sparsifier, checkpointing, loss_fn)


def _train(model, data, recipe, seed, device, log_path, sparsifier, checkpointing, loss_fn) -> TrainResult:
    model.to(device).train()
    steps_per_epoch = math.ceil(len(data) / recipe.batch_size)
    total_steps = total_training_steps(len(data), recipe.total_epochs, recipe.batch_size)
    restarts: list[int] = []
    if sparsifier is not None:
        sparsifier.begin(total_steps)
        restarts = sparsifier.pruning_steps()
        if restarts is None and recipe.lr_schedule == "cyclic":
            raise ValueError(f"lr_schedule 'cyclic' restarts at each pruning step, but {type(sparsifier).__name__} "
                             "changes its masks at every step (allowed: linear or constant with this method)")
    trainable = sparsifier.trainable_parameters() if sparsifier else [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.learning_rate,
        eps=recipe.adam_epsilon,
        fused=True,  # one kernel per parameter group: the step costs a fifth of the loop's on CPU
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, recipe, restarts))
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout

    step, position, losses, task_losses, rows, seconds_before = 0, 0, [], [], [], 0.0
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
            step, position, rows = progress["step"], progress["position"], progress["rows"]
            losses, task_losses = progress["losses"], progress["task_losses"]
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
        writer.writerow(["step", "epoch", "loss", "task_loss", "learning_rate", "seconds"])
        writer.writerows(rows)
        for epoch_state, position, batch in _epochs(data, recipe, generator, skip=position):
            if step >= total_steps:
                break
            batch = {k: v.to(device) for k, v in batch.items()}
            loss, task_loss = training_step(model, batch, optimizer, sparsifier, step, recipe.precision, loss_fn)
            scheduler.step()
            step += 1
            losses.append(loss.item())
            task_losses.append(task_loss.item())
            row = [step, f"{step / steps_per_epoch:.4f}", f"{losses[-1]:.6f}", f"{task_losses[-1]:.6f}",
                   f"{scheduler.get_last_lr()[0]:.6g}", f"{seconds_before + time.perf_counter() - start:.2f}"]
            rows.append(row)
            writer.writerow(row)
            if step == total_steps:
                break
            if checkpointing is not None and checkpointing.due(step):
                saving = time.perf_counter()
                tensors, meta = resume.capture(model, optimizer, scheduler, sparsifier,
                                               _rng_states(device, epoch_state))
                meta["progress"] = {"step": step, "position": position, "losses": losses,
                                    "task_losses": task_losses, "rows": rows,
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
        final_task_loss=sum(task_losses[-tail:]) / tail,
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
    """A Recipe from a params.yaml recipe entry (validated, its base or preset resolved)."""
    values = {f.name: entry[f.name] for f in fields(Recipe) if f.name in entry}
    if values.get("distillation") is not None:
        values["distillation"] = Distillation(**values["distillation"])
    return Recipe(**values)
