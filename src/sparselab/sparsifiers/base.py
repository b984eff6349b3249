"""The sparsifier interface: what keeps a model sparse while it trains.

A sparsifier owns the masks of the prunable matrices during fine-tuning. The caller `attach`es it
to the model; the training loop calls `begin` with the number of optimizer steps, `after_backward`
after every backward pass (gradients are available), `after_step` after every optimizer step and
`finalize` at the end. A one-shot method uses `FixedMask` (the mask of the prune
stage, held fixed); a during-training method (gmp, seven_dyn, pst) changes the masks on its
schedule. Masks are bool tensors shaped like their weights, True = kept.
"""

from __future__ import annotations

from abc import ABC
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from sparselab.masks import Structure
from sparselab.registry import Configurable, Registry


@dataclass(frozen=True)
class Target:
    """The sparsity a run must reach, and how it is allocated and structured."""

    sparsity: float
    allocation: str
    structure: Structure


class Sparsifier(Configurable, ABC):
    """Base class: masks gradients and weights of the prunable matrices with the current masks.

    Gradients are masked after backward, so AdamW's moments of a pruned weight stay 0 (its update
    0 / (sqrt(0) + eps) = 0); weights are masked after each step, so a weight pruned by a later
    mask update is zero from then on even though its moments are not. Subclasses that train
    something other than the weights (PST) override the three hooks.
    """

    allowed_allocations: ClassVar[tuple[str, ...] | None] = None  # None: every registered allocation
    allows_nm: ClassVar[bool] = True
    # True for a method that changes its masks at every step (of its ramp or window): it has no
    # pruning steps for a cyclic learning rate to restart at
    changes_masks_every_step: ClassVar[bool] = False

    def attach(self, model: nn.Module, prunable: dict[str, nn.Parameter], target: Target) -> None:
        """Bind to `model`; `prunable` maps names to its prunable weights (out x in)."""
        self.model = model
        self.prunable = prunable
        self.target = target
        self.masks = {name: torch.ones_like(weight, dtype=torch.bool) for name, weight in prunable.items()}

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """The current masks: bool tensors shaped like their weights, True = kept."""
        if self._masks is None:
            self._masks = {name: multiplier.bool() for name, multiplier in self._multipliers.items()}
        return self._masks

    @masks.setter
    def masks(self, masks: dict[str, torch.Tensor]) -> None:
        self._masks = masks
        # The same masks as 0/1 in the weights' dtype: multiplying by them is ~10x faster on a CPU
        # than by a bool tensor, which is converted element by element on every use.
        self._multipliers = {name: mask.to(self.prunable[name].dtype) for name, mask in masks.items()}

    def set_multipliers(self, multipliers: dict[str, torch.Tensor]) -> None:
        """Set the masks as 0/1 tensors in the weights' dtype (the bool view is made on demand)."""
        self._multipliers = multipliers
        self._masks = None

    def check_steps(self, total_steps: int) -> None:
        """ValueError if the method's schedule cannot run its course in `total_steps` optimizer
        steps (checked when params.yaml is validated, where the step count is known, and again
        in `begin`)."""

    def begin(self, total_steps: int) -> None:
        """Called by the training loop before the first step."""
        self.check_steps(total_steps)
        self.total_steps = total_steps
        self.apply_masks()

    def pruning_steps(self) -> list[int] | None:
        """Numbers of optimizer steps done after which the masks change (after `begin`), where a
        cyclic learning rate restarts; None for a method that changes them at every step. A fixed
        mask was set before the first step: []."""
        return None if self.changes_masks_every_step else []

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer updates (all parameters unless the method freezes some)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def trainable_count(self) -> int:
        """Parameters the run actually trains: pruned weights never change, so they do not count."""
        pruned = sum(int((~mask).sum()) for mask in self.masks.values())
        return sum(p.numel() for p in self.trainable_parameters()) - pruned

    def after_backward(self, step: int) -> None:
        with torch.no_grad():  # one foreach call, not one multiply per matrix
            names = [name for name, weight in self.prunable.items() if weight.grad is not None]
            if names:
                torch._foreach_mul_([self.prunable[name].grad for name in names],
                                    [self._multipliers[name] for name in names])

    def after_step(self, step: int) -> None:
        self.apply_masks()

    def apply_masks(self) -> None:
        with torch.no_grad():
            torch._foreach_mul_(list(self.prunable.values()), [self._multipliers[name] for name in self.prunable])

    def state_dict(self) -> dict[str, Any]:
        """The sparsifier's state during training, for a resumable checkpoint: tensors and
        JSON-able values by name. With the model, optimizer and step counter it is all that
        `load_state_dict` needs to continue, bit for bit, in a sparsifier attached to a fresh copy
        of the model and begun (`begin`) for the same number of steps. Here: the masks (bool)."""
        return {f"mask/{name}": mask for name, mask in self.masks.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (after `begin`, on the model's device)."""
        self.masks = {name: state[f"mask/{name}"].to(device=weight.device, dtype=torch.bool)
                      for name, weight in self.prunable.items()}

    def finalize(self) -> None:
        """Called after training: leave a plain model whose pruned weights are exactly +0.0 (a
        product with the 0/1 mask leaves -0.0 where w < 0; one zero makes checkpoints canonical)."""
        with torch.no_grad():
            for name, weight in self.prunable.items():
                weight.masked_fill_(~self.masks[name], 0.0)


SPARSIFIERS: Registry[type[Sparsifier]] = Registry("sparsifier")


class FixedMask(Sparsifier):
    """The mask of the prune stage, held fixed for the whole run (one-shot methods)."""

    def __init__(self, masks: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.fixed = masks

    def attach(self, model: nn.Module, prunable: dict[str, nn.Parameter], target: Target) -> None:
        super().attach(model, prunable, target)
        self.masks = {name: self.fixed[name].to(weight.device) for name, weight in prunable.items()}

    def after_step(self, step: int) -> None:
        """Nothing to do: the weights were zeroed in `begin` and their gradients and AdamW moments
        stay zero, so the update of a pruned weight is exactly 0 (weight decay of 0 is 0)."""
