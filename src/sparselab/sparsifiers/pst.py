"""PST: parameter-efficient sparse training (Li et al., IJCAI 2022; alibaba/AliceMind S4/PST).

methods.md section 5. Every prunable Linear keeps its pretrained weight W (out x in) frozen and
gets two low-rank parts: the weight update and the importance update,

    W' = W + U V                                  U: out x r_w (standard normal), V: r_w x in (0)
    S  = |W'| + A B + (R 1^T + 1 C^T)             A: out x r_m (standard normal), B: r_m x in (0),
                                                  R: out (0), C: in (0)

The layer computes with W' * M, where M keeps the highest round((1 - s) * numel) scores of S in that
matrix (layerwise allocation; ties go to the earlier position, masks.top_k_flat). The mask is a
straight-through estimator: the forward value is W' * M, the gradient with respect to M goes to S
unchanged, so A, B, R, C (and U, V through |W'|) learn which weights to keep. At the start the
learned parts are zero, so S = |W| and the first mask is the per-layer magnitude mask.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparselab.masks import keep_count, top_k_flat
from sparselab.schedules import cubic_sparsity
from sparselab.sparsifiers.base import SPARSIFIERS, Sparsifier, Target

# U and A are standard normal, as in the official code (torch.randn): V and B start at 0, so W' = W
# and S = |W| at first, and the scale of U, A sets how fast V, B move W' and S (with std 0.02,
# a 79-step run leaves W' = W and the mask = the magnitude mask).
INIT_STD = 1.0


def _float32(device: torch.device):
    """A context computing in float32 even inside an autocast region (the layer's matmul casts)."""
    return torch.autocast(device.type, enabled=False) if torch.amp.is_autocast_available(device.type) else nullcontext()


class _PSTMaskedWeight(torch.autograd.Function):
    """(W + U V) * M in the forward pass, with straight-through gradients for the importance S.

    The mask M is a constant of the step; its straight-through gradient goes to S unchanged, so with
    G = dL/d(W' * M) (out x in):
        dS  = G * W'                         -> dA = dS B^T, dB = A^T dS, dR = dS 1, dC = dS^T 1
        dW' = G * M + sign(W') * dS = G * (M + |W'|)   -> dU = dW' V^T, dV = U^T dW'
    S itself is never formed here: only its gradient is needed. W is frozen. W' and M + |W'| come
    from the layer's cache when the last mask update computed them for the current U, V.
    """

    @staticmethod
    def forward(ctx, weight, U, V, A, B, R, C, layer):
        effective, slope = layer.cached(weight)
        if effective is None:
            with _float32(weight.device):
                effective = torch.addmm(weight, U, V)  # W' (out x in)
        ctx.save_for_backward(effective, U, V, A, B, layer.mask)
        ctx.slope = slope
        return effective * layer.mask

    @staticmethod
    def backward(ctx, grad):
        effective, U, V, A, B, mask = ctx.saved_tensors
        d_scores = grad * effective
        slope = ctx.slope if ctx.slope is not None else effective.abs().add_(mask)
        d_effective = slope * grad
        # (V G^T)^T rather than G V^T: the same product, twice as fast with a thin V on a CPU
        return (None, (V @ d_effective.T).T, U.T @ d_effective, (B @ d_scores.T).T, A.T @ d_scores,
                d_scores.sum(1), d_scores.sum(0), None)


class PSTWeight(nn.Module):
    """The parametrization of one Linear's weight: W -> (W + U V) * M, with M cached in `mask`.

    `mask` is a non-persistent buffer of 0/1 in the weight's dtype (it follows the model across
    devices, stays out of the state dict); `refresh` replaces it once per optimizer step and keeps
    W' and M + |W'| for the forward and backward passes that follow (two extra weight-sized
    tensors per layer), as long as U, V and W stay what they were.
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
        self.register_buffer("mask", torch.ones_like(weight), persistent=False)
        self._cache: tuple | None = None

    def effective(self, weight: torch.Tensor) -> torch.Tensor:
        """W' = W + U V (one fused addmm)."""
        return torch.addmm(weight, self.U, self.V)

    @torch.no_grad()
    def refresh(self, weight: torch.Tensor, keep: int) -> None:
        """Make `mask` keep the `keep` highest scores S = |W'| + A B + R 1^T + 1 C^T of the layer.

        S is one addmm: A B + R 1^T + 1 C^T = [A | R | 1] [B ; 1^T ; C^T], a rank r_m + 2 product.
        """
        with _float32(weight.device):
            effective = self.effective(weight)
            magnitude = effective.abs()
            ones_out = torch.ones_like(self.R)[:, None]
            ones_in = torch.ones_like(self.C)[None, :]
            scores = torch.addmm(magnitude, torch.cat([self.A, self.R[:, None], ones_out], 1),
                                 torch.cat([self.B, ones_in, self.C[None, :]], 0))
        if keep >= scores.numel():
            self.mask = torch.ones_like(self.mask)
        else:
            self.mask = top_k_flat(scores.flatten(), keep, self.mask.dtype).view_as(scores)
        self._cache = (self._versions(weight), effective, magnitude.add_(self.mask))

    def _versions(self, weight: torch.Tensor) -> tuple[int, int, int]:
        return weight._version, self.U._version, self.V._version

    def cached(self, weight: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(W', M + |W'|) from the last refresh if W, U and V have not been modified in place since,
        else (None, None).

        In-place edits bump a tensor's version, except a fused optimizer's step; the training loop
        calls the sparsifier's after_step (and so refresh) after every optimizer step, which keeps
        the cache current (the sparsifier protocol, sparsifiers/base.py).
        """
        if self._cache is None or self._cache[0] != self._versions(weight):
            return None, None
        return self._cache[1], self._cache[2]

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _PSTMaskedWeight.apply(weight, self.U, self.V, self.A, self.B, self.R, self.C, self)


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
      pass reuse the cached mask. The official per-step update is kept (the learned scores move
      the mask at every step, also after the ramp); its exact per-layer top-k is most of what a
      PST step costs beyond a dense one on a CPU (bench/training_step.py).
    - the selection keeps round((1 - s) * numel) weights (the shared convention); the official
      code prunes int(s * numel).
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
            return {name: layer.mask.bool() for name, layer in self._layers.items()}
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

    def update_masks(self, sparsity: float) -> None:
        """Every layer's mask keeps its round((1 - sparsity) * numel) highest scores."""
        for name, layer in self._layers.items():
            layer.refresh(self.prunable[name], keep_count(layer.mask.numel(), sparsity))
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
            final[name] = layer.mask.bool()
        self._layers, self._linears = {}, {}
        self._masks = final
        for param in self.model.parameters():
            param.requires_grad_(True)
