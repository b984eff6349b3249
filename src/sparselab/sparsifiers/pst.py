"""PST: parameter-efficient sparse training (Li et al., IJCAI 2022; alibaba/AliceMind S4/PST).

methods.md section 5. Every prunable Linear keeps its pretrained weight W (out x in) frozen and
gets two low-rank parts: the weight update and the importance update,

    W' = W + U V                                  U: out x r_w (standard normal), V: r_w x in (0)
    S  = |W'| + A B + (R 1^T + 1 C^T)             A: out x r_m (standard normal), B: r_m x in (0),
                                                  R: out (0), C: in (0)

The layer computes with W' * M, where M keeps the highest round((1 - s) * numel) scores of S in that
matrix (layerwise allocation; ties go to the earlier position, masks.top_k_rows). The mask is a
straight-through estimator: the forward value is W' * M, the gradient with respect to M goes to S
unchanged, so A, B, R, C (and U, V through |W'|) learn which weights to keep. At the start the
learned parts are zero, so S = |W| and the first mask is the per-layer magnitude mask.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparselab.fused import fused
from sparselab.masks import LastThresholds, SelectionWindow, drop_extra_ties, keep_count, row_thresholds, top_k_rows
from sparselab.schedules import cubic_sparsity
from sparselab.sparsifiers.base import SPARSIFIERS, Sparsifier, Target

# U and A are standard normal, as in the official code (torch.randn): V and B start at 0, so W' = W
# and S = |W| at first, and the scale of U, A sets how fast V, B move W' and S (with std 0.02,
# a 79-step run leaves W' = W and the mask = the magnitude mask).
INIT_STD = 1.0

# Scores a matrix's selection window can hold (masks.SelectionWindow): windows are aimed at ~16
# to a few hundred entries, but are wider in the first steps of a ramp; one holding more is a miss.
_WINDOW_CAPACITY = 1 << 14


def _float32(device: torch.device):
    """A context computing in float32 even inside an autocast region (the layer's matmul casts)."""
    return torch.autocast(device.type, enabled=False) if torch.amp.is_autocast_available(device.type) else nullcontext()


@fused
def _straight_through_grads(grad: torch.Tensor, effective: torch.Tensor, mask: torch.Tensor, U: torch.Tensor,
                            V: torch.Tensor, A_ext: torch.Tensor, B_ext: torch.Tensor, d_scores: torch.Tensor,
                            d_effective: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(dU, dV, dA_ext, dB_ext) from G = dL/d(W' * M), (n, out, in), with straight-through M:

        dS = G * W'                      -> dA_ext = dS B_ext^T, dB_ext = A_ext^T dS
        dW' = G * M + sign(W') * dS = G * (M + |W'|)   -> dU = dW' V^T, dV = U^T dW'

    dA_ext's column r_m is dR = dS 1 and dB_ext's row r_m + 1 is dC = 1^T dS. dS and dW' are
    written into the buffers `d_scores` and `d_effective` (n, out, in): one pass computes both, and
    no weight-sized tensor is allocated (a fresh one costs more in page faults than its pass).
    `d_scores` may be `grad` itself: dW' is computed first.
    """
    d_effective.copy_(grad * (mask + effective.abs()))
    d_scores.copy_(grad * effective)
    # (V G^T)^T rather than G V^T: the same product, twice as fast with a thin V on a CPU
    return (V @ d_effective.mT).mT, U.mT @ d_effective, (B_ext @ d_scores.mT).mT, A_ext.mT @ d_scores


def extend(A: torch.Tensor, B: torch.Tensor, R: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A_ext, B_ext) = ([A | R | 1], [B ; 1^T ; C^T]): (n, out, r_m + 2) and (n, r_m + 2, in)."""
    return (torch.cat([A, R[..., None], torch.ones_like(R)[..., None]], -1),
            torch.cat([B, torch.ones_like(C)[..., None, :], C[..., None, :]], -2))


class _MaskedWeights(torch.autograd.Function):
    """(W + U V) * M of a group's n matrices, as n (out, in) outputs, with straight-through
    gradients for S.

    The mask M is a constant of the step; its straight-through gradient goes to S unchanged
    (`_straight_through_grads`, or on a CPU in float32 the one-pass kernel of sparselab.kernels). S
    itself is never formed here: only its gradient is needed.
    W is frozen. W' and W' * M come from the group's cache when its last mask update computed
    them for the current U, V. One output per matrix, so that their gradients arrive one by one:
    the CPU kernel reads them where they are, torch's path stacks them into the group's buffer
    (autograd would stack them into a fresh tensor).
    """

    @staticmethod
    def forward(ctx, weight, U, V, A, B, R, C, group):
        effective, masked = group.cached()
        if effective is None:
            effective = group.effective()  # W' (n, out, in)
            masked = effective * group.mask
        ctx.save_for_backward(effective, U, V, A, B, R, C, group.mask)
        ctx.group = group
        return masked.detach().unbind(0)  # new tensor objects: autograd records its history on them, not on the cache

    @staticmethod
    def backward(ctx, *grads):
        effective, U, V, A, B, R, C, mask = ctx.saved_tensors
        if ctx.group.uses_cpu_kernels:  # G has the dtype of W' * M, the weights'
            from sparselab import kernels  # numba's import (~0.4 s) is for the jobs that use it

            return None, *kernels.straight_through_grads(grads, mask, effective, U, V, A, B), None
        group, rank = ctx.group, A.shape[-1]
        d_scores, d_effective = group.backward_buffers()
        grad = torch.stack(grads, out=d_scores)  # G (n, out, in), overwritten by dS
        with _float32(grad.device):
            dU, dV, dA_ext, dB_ext = _straight_through_grads(grad, effective, mask, U, V, *extend(A, B, R, C),
                                                             d_scores, d_effective)
        return None, dU, dV, dA_ext[..., :rank], dB_ext[:, :rank], dA_ext[..., rank], dB_ext[:, rank + 1], None


class PSTGroup:
    """The PST state of n prunable matrices of one shape (out x in), stacked, so that a step runs
    one batched kernel for all of them instead of one per matrix (a GPU step is otherwise bound
    by kernel launches: ~1,800 per step for MiniLM).

    weight (n, out, in): the frozen W; the Linear weights become views of it.
    U (n, out, r_w), V (n, r_w, in), A (n, out, r_m), B (n, r_m, in), R (n, out), C (n, in): trained.
    mask (n, out, in): bool (a quarter of the bytes a 0/1 float mask would write and read every
    step). `refresh` recomputes it once per optimizer step and keeps W' and W' * M for the forward
    and backward passes that follow, as long as U, V and W stay what they were. All of these are
    buffers written in place, as is the scores buffer (on a CPU written only for the matrices a
    selection window missed; on torch's path S in refresh and dS in a backward pass, which adds
    one for dW'): weight-sized tensors beside W, allocated once (fresh tensors of that size,
    every step, cost more in page faults on a CPU than the passes that fill them).
    """

    def __init__(self, weights: list[nn.Parameter], U: list[torch.Tensor], A: list[torch.Tensor], rank_w: int,
                 rank_m: int) -> None:
        self.weight = torch.stack([w.detach() for w in weights])
        for index, param in enumerate(weights):
            param.data = self.weight[index]  # no second copy of the model's weights
        n, out_features, in_features = self.weight.shape
        like = {"device": self.weight.device, "dtype": self.weight.dtype}
        self.U, self.V = nn.Parameter(torch.stack(U).to(**like)), nn.Parameter(torch.zeros(n, rank_w, in_features, **like))
        self.A, self.B = nn.Parameter(torch.stack(A).to(**like)), nn.Parameter(torch.zeros(n, rank_m, in_features, **like))
        self.R, self.C = nn.Parameter(torch.zeros(n, out_features, **like)), nn.Parameter(torch.zeros(n, in_features, **like))
        self.mask = torch.ones_like(self.weight, dtype=torch.bool)
        self._effective, self._masked = torch.empty_like(self.weight), torch.empty_like(self.weight)
        self._scores = torch.empty_like(self.weight)
        self._d_effective: torch.Tensor | None = None  # dW', only on torch's path of the backward pass
        # where each matrix's next threshold is expected, counted by the scores kernel (CPU, float32);
        # it keeps the last thresholds, beside which the search of a missed matrix starts
        self._window = SelectionWindow(n, _WINDOW_CAPACITY) if self.uses_cpu_kernels else None
        self._cache: tuple | None = None
        self._outputs: tuple[torch.Tensor, ...] | None = None
        self._served: set[int] = set()
        self._grad_mode = True

    def parameters(self) -> list[nn.Parameter]:
        return [self.U, self.V, self.A, self.B, self.R, self.C]

    @property
    def uses_cpu_kernels(self) -> bool:
        """Whether W', S and the straight-through gradients come from sparselab.kernels (float32
        on a CPU: W and its PST parameters share device and dtype) rather than from torch."""
        return self.weight.device.type == "cpu" and self.weight.dtype == torch.float32

    def backward_buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(dS, dW') buffers of torch's backward path, (n, out, in): dS shares the scores' buffer
        (refresh is done with it by then)."""
        if self._d_effective is None:
            self._d_effective = torch.empty_like(self.weight)
        return self._scores, self._d_effective

    @torch.no_grad()
    def effective(self, out: torch.Tensor | None = None, scores: torch.Tensor | None = None,
                  matrices: list[int] | None = None) -> torch.Tensor:
        """W' = W + U V, (n, out, in), into `out` if given; with `scores`, S = |W'| + A B + R 1^T +
        1 C^T into it too; `matrices`: only those (on a CPU in float32; default all). Every W' of
        a run comes from here or from the selection kernel, which computes the same values, so a
        resumed run computes the same values as the run it continues.

        On a CPU in float32, one pass of a compiled kernel (sparselab.kernels); else torch, where
        A B + R 1^T + 1 C^T = [A | R | 1] [B ; 1^T ; C^T] is one rank r_m + 2 product (`extend`).
        """
        out = torch.empty_like(self.weight) if out is None else out
        if self.uses_cpu_kernels:
            from sparselab import kernels  # numba's import (~0.4 s) is for the jobs that use it

            kernels.pst_scores(self.weight, *self.parameters(), out, scores, matrices)
            return out
        with _float32(self.weight.device):
            torch.baddbmm(self.weight, self.U, self.V, out=out)
            if scores is not None:
                torch.abs(out, out=scores).baddbmm_(*extend(self.A, self.B, self.R, self.C))
        return out

    @torch.no_grad()
    def refresh(self, keep: int) -> None:
        """Make `mask` keep the `keep` highest scores S = |W'| + A B + R 1^T + 1 C^T of every matrix.

        Before the ramp (keep = numel) every weight is kept whatever S is: S is not computed, and
        W' * M is W' itself.
        On a CPU in float32, once a selection has been recorded, one kernel pass (kernels.pst_select)
        writes W' and computes S row by row, counts S in a window around each matrix's expected
        threshold (masks.SelectionWindow) and writes M and W' * M for the entries above the window;
        kernels.admit_window adds the window's entries that make the keep highest. S is never
        written out, except for the matrices whose threshold fell outside their window: those get S
        in the scores buffer, a search (masks.row_thresholds) and a pass of kernels.keep_above.
        Elsewhere masks.top_k_rows selects. All keep the `keep` highest, ties to the lower index.
        """
        n, numel = self.mask.shape[0], self.mask[0].numel()
        if keep >= numel:  # W' * M = W': no pass of its own
            self.effective(out=self._effective)
            self.mask.fill_(True)
            self._update_cache(masked=self._effective)
            return
        scores, mask, masked = self._scores.view(n, -1), self.mask.view(n, -1), self._masked.view(n, -1)
        if self._window is None or keep <= 0:
            self.effective(out=self._effective, scores=self._scores)
            top_k_rows(scores, keep, self.mask.dtype, out=mask)
            self._update_cache()
            return
        from sparselab import kernels  # numba's import (~0.4 s) is for the jobs that use it

        aimed = self._window.aim(keep)
        if aimed:
            kernels.pst_select(self.weight, *self.parameters(), self._effective, self.mask, self._masked, self._window)
            threshold, missed = self._window.resolve(keep)
            kernels.admit_window(self._window, threshold, sorted(set(range(n)) - set(missed)), keep,
                                 self._effective.view(n, -1), mask, masked)
        else:
            threshold, missed = torch.empty(n), list(range(n))
        if missed:
            self.effective(out=self._effective, scores=self._scores, matrices=missed)
            last = self._window.last_threshold
            near = None if last is None else LastThresholds(last[missed])
            rows = scores if len(missed) == n else scores[missed]  # (a subset is copied)
            threshold[missed] = row_thresholds([rows], keep, near)[0]
            kept = kernels.keep_above(scores, threshold, self._effective.view(n, -1), mask, masked, missed)
            for row in drop_extra_ties([scores], [mask], threshold, keep, kept.tolist()):
                torch.mul(self._effective[row], self.mask[row], out=self._masked[row])
        self._window.record(threshold, keep, counted=aimed)
        self._update_cache(masked=self._masked)

    @torch.no_grad()
    def restore(self, mask: torch.Tensor) -> None:
        """Set `mask` (bool) as the current mask with the cache that `refresh` would have left for
        it (resuming a run)."""
        self.effective(out=self._effective)
        self.mask.copy_(mask)
        self._update_cache()

    def _update_cache(self, masked: torch.Tensor | None = None) -> None:
        """Mark W' and W' * M current: W' * M is `masked` if given (written already, or W' itself
        while every weight is kept), else computed into its buffer."""
        if masked is None:
            masked = torch.mul(self._effective, self.mask, out=self._masked)
        self._cache = (self._versions(), self._effective, masked)
        self._outputs = None

    def _versions(self) -> tuple[int, int, int]:
        return self.weight._version, self.U._version, self.V._version

    def cached(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(W', W' * M) from the last refresh if W, U and V have not been modified in place since,
        else (None, None).

        In-place edits bump a tensor's version, except a fused optimizer's step; the training loop
        calls the sparsifier's after_step (and so refresh) after every optimizer step, which keeps
        the cache current (the sparsifier protocol, sparsifiers/base.py).
        """
        if self._cache is None or self._cache[0] != self._versions():
            return None, None
        return self._cache[1], self._cache[2]

    def masked_weight(self, index: int) -> torch.Tensor:
        """(W' * M)[index], out x in, for one Linear's forward pass.

        All n matrices are computed at once when the first of them is asked for, and served from
        that batch until one is asked for again (the next forward pass) or grad mode changes.
        """
        grad_mode = torch.is_grad_enabled()
        if self._outputs is None or index in self._served or self._grad_mode != grad_mode:
            self._outputs = _MaskedWeights.apply(self.weight, *self.parameters(), self)
            self._served, self._grad_mode = set(), grad_mode
        self._served.add(index)
        return self._outputs[index]


class PSTWeight(nn.Module):
    """The parametrization of one Linear's weight: W -> (W + U V) * M, served by its group."""

    def __init__(self, group: PSTGroup, index: int) -> None:
        super().__init__()
        self.group, self.index = group, index

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.group.masked_weight(self.index)


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
      the mask at every step, also after the ramp). Beyond a dense step, a PST step computes the
      scores (two rank-r products per matrix), their exact per-layer top-k and the four thin
      products of the straight-through gradients (on a CPU, in numba kernels that read each
      matrix once: sparselab.kernels); it saves the frozen weights' optimizer update and the
      embeddings' gradients (bench/training_step.py).
    - the selection keeps round((1 - s) * numel) weights (the shared convention); the official
      code prunes int(s * numel).
    """

    hyperparameters = {"rank_w": 8, "rank_m": 8, "start": 0.1, "end": 0.7, "train_head": True}
    allowed_allocations = ("layerwise",)
    allows_nm = False
    changes_masks_every_step = True

    def __init__(self, **hyper) -> None:
        super().__init__(**hyper)
        h = self.hyper
        for rank in ("rank_w", "rank_m"):
            if isinstance(h[rank], bool) or not isinstance(h[rank], int) or h[rank] < 1:
                raise ValueError(f"pst: {rank} must be a positive integer, not {h[rank]!r}")
        if not 0.0 <= h["start"] <= h["end"] <= 1.0:
            raise ValueError(f"pst: need 0 <= start <= end <= 1 (fractions of training), got {h['start']}, {h['end']}")
        self._groups: list[PSTGroup] = []
        self.slots: dict[str, tuple[PSTGroup, int]] = {}
        self._masks: dict[str, torch.Tensor] = {}

    # The current masks: while attached they are views of the masks the groups compute with (so
    # they are always current and on the model's device); after finalize, the final masks.
    @property
    def masks(self) -> dict[str, torch.Tensor]:
        if self.slots:
            return {name: group.mask[index].bool() for name, (group, index) in self.slots.items()}
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

        modules = dict(model.named_modules())
        self._linears: dict[str, nn.Linear] = {}
        for name, weight in prunable.items():
            module_name, _, attribute = name.rpartition(".")
            module = modules.get(module_name)
            if attribute != "weight" or not isinstance(module, nn.Linear) or module.weight is not weight:
                raise ValueError(f"pst adapts the weights of nn.Linear modules; {name!r} is not one")
            if parametrize.is_parametrized(module, "weight"):
                raise ValueError(f"{name!r} is parametrized already (is a sparsifier attached twice?)")
            self._linears[name] = module

        # U and A of every matrix in prunable order, drawn on the CPU from a generator seeded by
        # torch's RNG (which it leaves untouched), so the init depends on neither device nor grouping
        generator = torch.Generator()
        generator.set_state(torch.get_rng_state())
        rank_w, rank_m = self.hyper["rank_w"], self.hyper["rank_m"]
        init = {}
        for name, weight in prunable.items():
            U = torch.randn(weight.shape[0], rank_w, generator=generator) * INIT_STD
            init[name] = (U, torch.randn(weight.shape[0], rank_m, generator=generator) * INIT_STD)
        members: dict[tuple, list[str]] = {}  # matrices of one shape, dtype and device form a group
        for name, weight in prunable.items():
            members.setdefault((tuple(weight.shape), weight.dtype, weight.device), []).append(name)
        for names in members.values():
            group = PSTGroup([prunable[n] for n in names], [init[n][0] for n in names], [init[n][1] for n in names],
                             rank_w, rank_m)
            self._groups.append(group)
            for index, name in enumerate(names):
                self.slots[name] = (group, index)
                parametrize.register_parametrization(self._linears[name], "weight", PSTWeight(group, index))
        self.sparsity = 0.0  # the masks are all ones until begin
        self._trainable_count = sum(p.numel() for p in self.trainable_parameters())

    def layer_parameters(self, name: str) -> dict[str, torch.Tensor]:
        """U, V, A, B, R, C of one prunable matrix (views into its group's parameters)."""
        group, index = self.slots[name]
        return {letter: getattr(group, letter)[index] for letter in "UVABRC"}

    def pst_parameters(self) -> list[nn.Parameter]:
        """U, V, A, B, R, C of every group of matrices (empty after finalize)."""
        return [p for group in self._groups for p in group.parameters()]

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
        """Every matrix's mask keeps its round((1 - sparsity) * numel) highest scores."""
        for group in self._groups:
            group.refresh(keep_count(group.mask[0].numel(), sparsity))
        self.sparsity = sparsity

    def begin(self, total_steps: int) -> None:
        self.total_steps = total_steps
        self.update_masks(self.scheduled_sparsity(0))

    def state_dict(self) -> dict:
        """U, V, A, B, R, C and the mask (bool) of every group, and the current sparsity (the
        frozen W and the head are the model's). While attached only: after finalize there is none."""
        state: dict = {"sparsity": self.sparsity}
        for number, group in enumerate(self._groups):
            for letter in "UVABRC":
                state[f"group{number}/{letter}"] = getattr(group, letter).detach()
            state[f"group{number}/mask"] = group.mask.bool()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict`'s values in place (the optimizer keeps its parameters)."""
        self.sparsity = state["sparsity"]
        for number, group in enumerate(self._groups):
            with torch.no_grad():
                for letter in "UVABRC":
                    getattr(group, letter).copy_(state[f"group{number}/{letter}"])
            group.restore(state[f"group{number}/mask"].to(device=group.mask.device, dtype=group.mask.dtype))

    def after_backward(self, step: int) -> None:
        """Nothing to mask: W is frozen and the PST parameters are dense."""

    def after_step(self, step: int) -> None:
        self.update_masks(self.scheduled_sparsity(step + 1))

    def apply_masks(self) -> None:
        """Nothing to do: the masks act through the parametrizations until finalize."""

    @torch.no_grad()
    def finalize(self) -> None:
        """Merge W <- (W + U V) * M, drop the parametrizations and PST parameters, unfreeze all."""
        if not self.slots:
            return
        merged = {id(group): torch.where(group.mask.bool(), group.effective(), 0.0) for group in self._groups}
        final = {}
        for name, (group, index) in self.slots.items():
            parametrize.remove_parametrizations(self._linears[name], "weight", leave_parametrized=False)
            self.prunable[name].data = merged[id(group)][index].clone()  # its own storage, not a view of the group
            final[name] = group.mask[index].bool()
        self._groups, self.slots, self._linears = [], {}, {}
        self._masks = final
        for param in self.model.parameters():
            param.requires_grad_(True)
