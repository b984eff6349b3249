"""SEVEN-pre: SEVEN's sentinel score accumulated over calibration batches on the pretrained model.

`SevenState` holds the per-matrix SEVEN update and is shared with SEVEN during fine-tuning.
"""

from __future__ import annotations

import math

import torch

from sparselab.scoring.base import SCORERS, Scorer, ScoringContext
from sparselab.scoring.calibration import calibration_gradients


# Elements per chunk of a CPU update: its 7 float32 chunks (7 MiB) stay in cache between passes.
_CPU_CHUNK = 1 << 18


def check_decays(a1: float, a2: float) -> None:
    """ValueError unless 0 <= a1, a2 < 1 (the EMA rates of SEVEN; 1 would divide by zero)."""
    if not (0.0 <= a1 < 1.0 and 0.0 <= a2 < 1.0):
        raise ValueError(f"SEVEN needs 0 <= a1, a2 < 1 (got a1={a1}, a2={a2})")


class SevenState:
    """SEVEN's running statistics of one weight matrix (methods.md, section 3).

    At step t = 0, 1, ... with g = |G|:
        m_t = a1 m_{t-1} + (1 - a1) g            v_t = a2 v_{t-1} + (1 - a2) g^2
        m^ = m_t / (1 - a1^(t+1))                v^ = v_t / (1 - a2^(t+1))
        I_t = I_{t-1} + |W * g * m^ / (sqrt(v^) + eps)|
    m^ / sqrt(v^) is 1 for a steady gradient and small for a noisy one (the "sentinel" preference).
    m, v and score are float32 tensors shaped like the weight (out x in), None before the first
    update; `steps` counts the updates so far.
    """

    def __init__(self, a1: float = 0.8, a2: float = 0.9, eps: float = 1e-9) -> None:
        check_decays(a1, a2)
        self.a1, self.a2, self.eps = a1, a2, eps
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.score: torch.Tensor | None = None
        self.steps = 0

    @property
    def m_hat(self) -> torch.Tensor:
        """Bias-corrected first moment of |G| after the latest update, (out x in)."""
        return self.m / (1.0 - self.a1**self.steps)

    @property
    def v_hat(self) -> torch.Tensor:
        """Bias-corrected second moment of |G| after the latest update, (out x in)."""
        return self.v / (1.0 - self.a2**self.steps)

    @torch.no_grad()
    def update(self, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """One SEVEN step with the weight W and its gradient G (same shape); returns the
        accumulated score I_t (float32, that shape).

        Computed in place, ten passes: with c1, c2 the bias corrections,
        m^ / (sqrt(v^) + eps) = (sqrt(c2) / c1) * m / (sqrt(v) + eps sqrt(c2)). On a CPU the ten
        passes run chunk by chunk, so that each chunk stays in cache (over all the prunable weights
        at once, every pass would go to memory); two scratch tensors are kept between steps.
        """
        if self.steps == 0:
            self.m, self.v, self.score = (torch.zeros_like(grad, dtype=torch.float32) for _ in range(3))
            self._scratch = (torch.empty_like(self.m), torch.empty_like(self.m))
        self.steps += 1
        root_c2 = math.sqrt(1.0 - self.a2**self.steps)
        scale = root_c2 / (1.0 - self.a1**self.steps)
        chunk = _CPU_CHUNK if grad.device.type == "cpu" else grad.numel()
        flat = [t.view(-1) for t in (weight, grad, self.m, self.v, self.score, *self._scratch)]
        for start in range(0, grad.numel(), chunk):
            w, g_in, m, v, score, g, other = (t[start : start + chunk] for t in flat)
            torch.abs(g_in, out=g)
            m.lerp_(g, 1.0 - self.a1)  # m = a1 m + (1 - a1) g
            v.mul_(self.a2).addcmul_(g, g, value=1.0 - self.a2)
            g.mul_(m).mul_(torch.abs(w, out=other))  # |W| g m: every factor but W is >= 0
            score.addcdiv_(g, torch.sqrt(v, out=other).add_(self.eps * root_c2), value=scale)
        return self.score


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
        states = {name: SevenState(float(self.hyper["a1"]), float(self.hyper["a2"])) for name in ctx.prunable}
        for grads in calibration_gradients(ctx, "seven_pre", self.hyper["window"],
                                           self.hyper["batch_size"], self.hyper["max_length"]):
            for name, weight in ctx.prunable.items():
                states[name].update(weight, grads[name])
        return {name: state.score for name, state in states.items()}
