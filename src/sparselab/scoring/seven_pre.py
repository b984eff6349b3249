"""SEVEN-pre: SEVEN's sentinel score accumulated over calibration batches on the pretrained model.

`SevenState` holds SEVEN's running statistics and is shared with SEVEN during fine-tuning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from sparselab.fused import fused
from sparselab.scoring.base import SCORERS, Scorer, ScoringContext
from sparselab.scoring.calibration import calibration_gradients


def check_decays(a1: float, a2: float) -> None:
    """ValueError unless 0 <= a1, a2 < 1 (the EMA rates of SEVEN; 1 would divide by zero)."""
    if not (0.0 <= a1 < 1.0 and 0.0 <= a2 < 1.0):
        raise ValueError(f"SEVEN needs 0 <= a1, a2 < 1 (got a1={a1}, a2={a2})")


@fused
def _seven_step(weight: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, score: torch.Tensor,
                a1: float, a2: float, scale: torch.Tensor, eps: torch.Tensor) -> None:
    """One SEVEN step in place over flat (N,) tensors, in one fused pass.

    With c1, c2 the bias corrections, m^ / (sqrt(v^) + eps) = (sqrt(c2) / c1) m / (sqrt(v) + eps
    sqrt(c2)): `scale` = sqrt(c2) / c1 and `eps` = eps sqrt(c2) (0-d tensors, new every step).
    """
    g = grad.float().abs()
    m.lerp_(g, 1.0 - a1)  # m = a1 m + (1 - a1) g
    v.mul_(a2).addcmul_(g, g, value=1.0 - a2)
    score.add_(weight.float().abs() * g * m / (v.sqrt() + eps) * scale)  # every factor is >= 0


class SevenState:
    """SEVEN's running statistics of a list of weight matrices (methods.md, section 3).

    At step t = 0, 1, ... with g = |G|, for every weight:
        m_t = a1 m_{t-1} + (1 - a1) g            v_t = a2 v_{t-1} + (1 - a2) g^2
        m^ = m_t / (1 - a1^(t+1))                v^ = v_t / (1 - a2^(t+1))
        I_t = I_{t-1} + |W * g * m^ / (sqrt(v^) + eps)|
    m^ / sqrt(v^) is 1 for a steady gradient and small for a noisy one (the "sentinel" preference).
    m, v and score are float32 and flat, (N,) over the N entries of all the matrices in order (a
    global top-k on the score needs no copy); None before the first update. `steps` counts the
    updates so far.
    """

    def __init__(self, a1: float = 0.8, a2: float = 0.9, eps: float = 1e-9) -> None:
        check_decays(a1, a2)
        self.a1, self.a2, self.eps = a1, a2, eps
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.score: torch.Tensor | None = None
        self.steps = 0
        self._flat: tuple[torch.Tensor, torch.Tensor] | None = None  # gather buffers, made at the first update

    @property
    def m_hat(self) -> torch.Tensor:
        """Bias-corrected first moment of |G| after the latest update, (N,)."""
        return self.m / (1.0 - self.a1**self.steps)

    @property
    def v_hat(self) -> torch.Tensor:
        """Bias-corrected second moment of |G| after the latest update, (N,)."""
        return self.v / (1.0 - self.a2**self.steps)

    @torch.no_grad()
    def update(self, weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """One SEVEN step with the weights W and their gradients G (the same shapes every step);
        returns the accumulated score I_t, (N,).

        The weights and gradients are first gathered into two reused flat buffers (one copy
        kernel each, whatever the number of matrices), then updated by one fused kernel: on a
        GPU a step is bound by launches, and one compiled call per matrix costs ~4x more there.
        """
        numel, device = sum(w.numel() for w in weights), weights[0].device
        if self.steps == 0:
            self.m, self.v, self.score = (torch.zeros(numel, device=device) for _ in range(3))
        if self.steps == 0 or self._flat is None:  # also after load_state_dict
            self._flat = (torch.empty(numel, device=device, dtype=weights[0].dtype),
                          torch.empty(numel, device=device, dtype=grads[0].dtype))
        flat_weights, flat_grads = self._flat
        torch.cat([w.detach().reshape(-1) for w in weights], out=flat_weights)
        torch.cat([g.reshape(-1) for g in grads], out=flat_grads)
        self.steps += 1
        root_c2 = math.sqrt(1.0 - self.a2**self.steps)
        scale = torch.tensor(root_c2 / (1.0 - self.a1**self.steps), device=self.score.device)
        eps = torch.tensor(self.eps * root_c2, device=self.score.device)
        _seven_step(flat_weights, flat_grads, self.m, self.v, self.score, self.a1, self.a2, scale, eps)
        return self.score

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        """m, v, score (when updated once at least) and the update count, for a resumable checkpoint."""
        state: dict[str, torch.Tensor | int] = {"steps": self.steps}
        if self.steps:
            state.update(m=self.m, v=self.v, score=self.score)
        return state

    def load_state_dict(self, state: dict, device: torch.device | None = None) -> None:
        """Continue from `state_dict`'s values (moved to `device`); the next update goes on bit for bit."""
        self.steps = int(state["steps"])
        self.m, self.v, self.score = (state[key].to(device, torch.float32, copy=True) if self.steps else None
                                      for key in ("m", "v", "score"))
        self._flat = None


@SCORERS.register("seven_pre")
class SevenPreScorer(Scorer):
    """SEVEN-pre: `SevenState` fed the task-loss gradients of `window` calibration batches (fewer
    if the calibration rows run out) on the pretrained model in eval mode; weights not updated.
    The score is I_{T-1}, the sum of the per-step increments.
    """

    hyperparameters = {"window": 32, "a1": 0.8, "a2": 0.9, "batch_size": 32, "max_length": 128}
    needs_data = True

    def __init__(self, **hyper) -> None:
        super().__init__(**hyper)
        check_decays(self.hyper["a1"], self.hyper["a2"])  # at config time, not in the job

    def score(self, ctx: ScoringContext) -> dict[str, torch.Tensor]:
        state = SevenState(float(self.hyper["a1"]), float(self.hyper["a2"]))
        for grads in calibration_gradients(ctx, "seven_pre", self.hyper["window"],
                                           self.hyper["batch_size"], self.hyper["max_length"]):
            state.update(list(ctx.prunable.values()), [grads[name] for name in ctx.prunable])
        parts = state.score.split([w.numel() for w in ctx.prunable.values()])
        return {name: part.view(w.shape) for (name, w), part in zip(ctx.prunable.items(), parts)}
