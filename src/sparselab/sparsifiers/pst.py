"""PST: parameter-efficient sparse training (Li et al., IJCAI 2022; alibaba/AliceMind S4/PST).

methods.md section 5. Every prunable Linear keeps its pretrained weight W (out x in) frozen and
gets two low-rank parts: the weight update and the importance update,

    W' = W + U V                                  U: out x r_w (normal, std 0.02), V: r_w x in (0)
    S  = |W'| + A B + (R 1^T + 1 C^T)             A: out x r_m (normal, std 0.02), B: r_m x in (0),
                                                  R: out (0), C: in (0)

The layer computes with W' * M, where M keeps the highest round((1 - s) * numel) scores of S in that
matrix (layerwise allocation; ties go to the earlier position, masks.top_k_flat). The mask is a
straight-through estimator: the forward value is W' * M, the gradient with respect to M goes to S
unchanged, so A, B, R, C (and U, V through |W'|) learn which weights to keep. At the start the
learned parts are zero, so S = |W| and the first mask is the per-layer magnitude mask.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparselab.masks import keep_count, top_k_flat
from sparselab.schedules import cubic_sparsity
from sparselab.sparsifiers.base import SPARSIFIERS, Sparsifier, Target

INIT_STD = 0.02


class _MaskedStraightThrough(torch.autograd.Function):
    """W' * M_hard in the forward pass; d/dW' = grad * M_hard and d/dS = grad * W' in the backward.

    The same gradients as W' * (M_hard + S - S.detach()), without materialising the extra tensors.
    """

    @staticmethod
    def forward(ctx, effective: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(effective, mask)
        return effective * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        effective, mask = ctx.saved_tensors
        return grad * mask, grad * effective, None


class PSTWeight(nn.Module):
    """The parametrization of one Linear's weight: W -> (W + U V) * M, with M cached in `mask`.

    `mask` is a non-persistent buffer (it follows the model across devices, stays out of the
    state dict); the sparsifier replaces it once per optimizer step.
    """

    def __init__(self, weight: torch.Tensor, rank_w: int, rank_m: int, generator: torch.Generator) -> None:
        super().__init__()
        out_features, in_features = weight.shape

        def normal(*shape: int) -> nn.Parameter:
            # drawn on the CPU from the shared generator, so the init does not depend on the device
            values = torch.randn(shape, generator=generator) * INIT_STD
            return nn.Parameter(values.to(device=weight.device, dtype=weight.dtype))

        def zeros(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.zeros(shape, device=weight.device, dtype=weight.dtype))

        self.U, self.V = normal(out_features, rank_w), zeros(rank_w, in_features)
        self.A, self.B = normal(out_features, rank_m), zeros(rank_m, in_features)
        self.R, self.C = zeros(out_features), zeros(in_features)
        self.register_buffer("mask", torch.ones_like(weight, dtype=torch.bool), persistent=False)

    def effective(self, weight: torch.Tensor) -> torch.Tensor:
        """W' = W + U V (one fused addmm)."""
        return torch.addmm(weight, self.U, self.V)

    def scores(self, effective: torch.Tensor) -> torch.Tensor:
        """S = |W'| + A B + R 1^T + 1 C^T (addmm, then in place: half the time of the plain sum)."""
        return torch.addmm(self.R[:, None], self.A, self.B).add_(self.C).add_(effective.abs())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        effective = self.effective(weight)
        if not torch.is_grad_enabled():  # evaluation: the cached mask, no scores needed
            return effective * self.mask
        return _MaskedStraightThrough.apply(effective, self.scores(effective), self.mask)


@SPARSIFIERS.register("pst")
class ParameterEfficientSparseTraining(Sparsifier):
    """PST: frozen pretrained weights, low-rank weight and importance updates, per-layer masks.

    Hyper-parameters: rank_w, rank_m (the ranks of U V and A B); start, end (fractions of training
    of the cubic sparsity ramp: 0 until `start`, the target from `end` on, per optimizer step);
    train_head (whether the task head, i.e. the parameters outside `model.base_model`, is trained).

    Only the PST parameters (U, V, A, B, R, C of every prunable matrix) and, with train_head, the
    head are trained; everything else is frozen (the pooler belongs to the base model and stays
    frozen). `trainable_count` is their number of elements: 17 * (out + in) per matrix at ranks
    8/8, 2,820,096 for BERT-base (2.58% of its 109,482,240 base-model parameters), plus the head.
    `finalize` merges W <- (W + U V) * M with the last mask, removes the parametrizations and the
    PST parameters and makes every parameter trainable again: the model is then an ordinary sparse
    checkpoint with exactly the target sparsity in every prunable matrix.

    Differences from the official code (methods.md section 5):
    - the head is trained by default (train_head: true). The official code leaves it out of the
      optimizer, so it stays at its random init; train_head: false reproduces that.
    - the mask is cached: it is recomputed once per optimizer step (`after_step`, for the sparsity
      of the next step) instead of re-sorting the scores on every forward pass. Training sees the
      same masks, since the scores only change at optimizer steps; evaluation and any extra forward
      pass reuse the cached mask.
    """

    hyperparameters = {"rank_w": 8, "rank_m": 8, "start": 0.1, "end": 0.7, "train_head": True}
    allowed_allocations = ("layerwise",)
    allows_nm = False

    def __init__(self, **hyper) -> None:
        super().__init__(**hyper)
        h = self.hyper
        for rank in ("rank_w", "rank_m"):
            if isinstance(h[rank], bool) or not isinstance(h[rank], int) or h[rank] < 1:
                raise ValueError(f"pst: {rank} must be a positive integer, not {h[rank]!r}")
        if not 0.0 <= h["start"] <= h["end"] <= 1.0:
            raise ValueError(f"pst: need 0 <= start <= end <= 1 (fractions of training), got {h['start']}, {h['end']}")
        self._layers: dict[str, PSTWeight] = {}
        self._masks: dict[str, torch.Tensor] = {}

    # The current masks: while attached they are the buffers the layers compute with (so they are
    # always current and on the model's device); after finalize, the final masks.
    @property
    def masks(self) -> dict[str, torch.Tensor]:
        if self._layers:
            return {name: layer.mask for name, layer in self._layers.items()}
        return self._masks

    @masks.setter
    def masks(self, value: dict[str, torch.Tensor]) -> None:
        self._masks = value

    def attach(self, model: nn.Module, prunable: dict[str, nn.Parameter], target: Target) -> None:
        if target.allocation not in self.allowed_allocations or target.structure.is_nm:
            raise ValueError(
                f"pst prunes every matrix to the same unstructured sparsity (allocation: layerwise, "
                f"structure: unstructured), not {target.allocation} / {target.structure}"
            )
        super().attach(model, prunable, target)
        in_base = {id(p) for p in getattr(model, "base_model", model).parameters()}
        self.head = [p for p in model.parameters() if id(p) not in in_base] if self.hyper["train_head"] else []
        for param in model.parameters():
            param.requires_grad_(False)
        for param in self.head:
            param.requires_grad_(True)

        generator = torch.Generator()
        generator.set_state(torch.get_rng_state())  # seeded by torch's RNG, which it leaves untouched
        modules = dict(model.named_modules())
        self._linears: dict[str, nn.Linear] = {}
        layers = {}
        for name, weight in prunable.items():
            module_name, _, attribute = name.rpartition(".")
            module = modules.get(module_name)
            if attribute != "weight" or not isinstance(module, nn.Linear) or module.weight is not weight:
                raise ValueError(f"pst adapts the weights of nn.Linear modules; {name!r} is not one")
            if parametrize.is_parametrized(module, "weight"):
                raise ValueError(f"{name!r} is parametrized already (is a sparsifier attached twice?)")
            layer = PSTWeight(weight, self.hyper["rank_w"], self.hyper["rank_m"], generator)
            parametrize.register_parametrization(module, "weight", layer)
            self._linears[name] = module
            layers[name] = layer
        self._layers = layers
        self.sparsity = 0.0  # the masks are all ones until begin
        self._trainable_count = sum(p.numel() for p in self.trainable_parameters())

    def pst_parameters(self) -> list[nn.Parameter]:
        """U, V, A, B, R, C of every prunable matrix, in prunable order (empty after finalize)."""
        return [p for layer in self._layers.values() for p in layer.parameters()]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.pst_parameters() + list(self.head)

    def trainable_count(self) -> int:
        """Elements of the PST parameters (+ head): W is frozen, so pruned weights do not enter.

        Fixed at attach, so it still answers after finalize has removed the PST parameters.
        """
        return self._trainable_count

    def scheduled_sparsity(self, steps_done: int) -> float:
        h = self.hyper
        return cubic_sparsity(steps_done, self.total_steps, h["start"], h["end"], 0.0, self.target.sparsity)

    @torch.no_grad()
    def update_masks(self, sparsity: float) -> None:
        """Every layer's mask keeps its round((1 - sparsity) * numel) highest scores."""
        for name, layer in self._layers.items():
            numel = layer.mask.numel()
            keep = keep_count(numel, sparsity)
            if keep >= numel:
                layer.mask = torch.ones_like(layer.mask)
                continue
            scores = layer.scores(layer.effective(self.prunable[name]))
            layer.mask = top_k_flat(scores.flatten().float(), keep).reshape(scores.shape).to(layer.mask.device)
        self.sparsity = sparsity

    def begin(self, total_steps: int) -> None:
        self.total_steps = total_steps
        self.update_masks(self.scheduled_sparsity(0))

    def after_backward(self, step: int) -> None:
        """Nothing to mask: W is frozen and the PST parameters are dense."""

    def after_step(self, step: int) -> None:
        self.update_masks(self.scheduled_sparsity(step + 1))

    def apply_masks(self) -> None:
        """Nothing to do: the masks act through the parametrizations until finalize."""

    @torch.no_grad()
    def finalize(self) -> None:
        """Merge W <- (W + U V) * M, drop the parametrizations and PST parameters, unfreeze all."""
        if not self._layers:
            return
        final = {}
        for name, layer in self._layers.items():
            weight = self.prunable[name]
            merged = layer.effective(weight) * layer.mask
            parametrize.remove_parametrizations(self._linears[name], "weight", leave_parametrized=False)
            weight.copy_(merged)
            final[name] = layer.mask
        self._layers, self._linears = {}, {}
        self._masks = final
        for param in self.model.parameters():
            param.requires_grad_(True)
