"""SEVEN during fine-tuning (SEVEN-dyn, the released variant of Xiao et al., IJCNN 2024).

Inside a window of T optimizer steps starting at `window_start`, every step feeds the current
batch's gradients to a SevenState over all prunable weights (EMA of |G| and G^2 with bias
correction, cumulative score), then keeps the global top keep(t) fraction of the scores,
keep(t) = k + (1-k)(1-(t+1)/T)^3 with k = 1 - target sparsity. Pruned weights never come back;
after the window the mask is frozen. The official code zeroes a pruned weight's score; a live
score can be 0 too (a weight whose gradient stayed 0), and a tie at 0 could then revive a pruned
weight. Here a pruned score is -1, below every live score (>= 0), so the kept set only shrinks and
holds exactly k weights. A window that does not fit in the run is an error, not a silently
under-pruned model (the official RTE and STS-B settings end before their windows do).
"""

from __future__ import annotations

import torch

from sparselab.masks import LastThresholds, keep_count, top_k_flat
from sparselab.schedules import seven_keep_fraction
from sparselab.scoring.seven_pre import SevenState, check_decays
from sparselab.sparsifiers.base import SPARSIFIERS, Sparsifier

# The official per-task windows: (start step, length, target sparsity) at batch 32, 10 epochs.
OFFICIAL_WINDOWS = {
    "sst2": (1000, 4000, 0.6),
    "mrpc": (300, 600, 0.5),
    "rte": (200, 1000, 0.6),
    "qnli": (2000, 12000, 0.7),
    "mnli": (5400, 16600, 0.7),
    "qqp": (5400, 16600, 0.9),
    "cola": (500, 1000, 0.5),
    "stsb": (500, 2000, 0.5),
}


@SPARSIFIERS.register("seven_dyn")
class SevenDynamic(Sparsifier):
    """window_start, window_length: optimizer steps; a1, a2: the EMA rates of |G| and G^2;
    preset: a GLUE task name whose official window replaces window_start and window_length
    ("" for none; the target sparsity is always the run's)."""

    hyperparameters = {"window_start": 0, "window_length": 100, "a1": 0.8, "a2": 0.9, "preset": ""}
    allowed_allocations = ("global",)
    allows_nm = False
    changes_masks_every_step = True

    def __init__(self, **hyper) -> None:
        super().__init__(**hyper)
        h = self.hyper
        if h["preset"] and h["preset"] not in OFFICIAL_WINDOWS:
            raise ValueError(f"seven_dyn preset {h['preset']!r} is unknown "
                             f"(allowed: {', '.join(sorted(OFFICIAL_WINDOWS))}, or '' for none)")
        check_decays(h["a1"], h["a2"])
        self._last = LastThresholds()  # each step's selection starts its search beside the last one's

    def window(self) -> tuple[int, int]:
        """(first step, length) of the pruning window."""
        if self.hyper["preset"]:
            start, length, _ = OFFICIAL_WINDOWS[self.hyper["preset"]]
            return start, length
        return self.hyper["window_start"], self.hyper["window_length"]

    def check_steps(self, total_steps: int) -> None:
        start, length = self.window()
        if length < 1 or start + length > total_steps:
            raise ValueError(
                f"seven_dyn window (start {start}, length {length}) ends at step {start + length}, after the "
                f"run's {total_steps} optimizer steps: the model would never reach its target sparsity "
                f"(allowed: window_start + window_length <= {total_steps}; train longer or shorten the window)"
            )

    def begin(self, total_steps: int) -> None:
        super().begin(total_steps)
        # one state over all prunable weights, flat (N,): the global top-k needs no copy
        self.state = SevenState(float(self.hyper["a1"]), float(self.hyper["a2"]))
        self._kept: torch.Tensor | None = None  # (N,) 0/1, rewritten by every selection of the window

    def state_dict(self) -> dict:
        """The masks and SEVEN's running statistics (EMAs, scores with the pruned ones at -1)."""
        return {**super().state_dict(), **{f"seven/{key}": value for key, value in self.state.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        device = next(iter(self.prunable.values())).device
        self.state.load_state_dict({key[len("seven/"):]: value for key, value in state.items()
                                    if key.startswith("seven/")}, device)

    def _in_window(self, step: int) -> bool:
        start, length = self.window()
        return start <= step < start + length

    def after_backward(self, step: int) -> None:
        if self._in_window(step):
            self.state.update(list(self.prunable.values()), [w.grad for w in self.prunable.values()])
        super().after_backward(step)

    def after_step(self, step: int) -> None:
        if self._in_window(step):
            start, length = self.window()
            keep = seven_keep_fraction(step - start, length, self.target.sparsity)
            score = self.state.score  # (N,)
            if self._kept is None:
                # one buffer for the whole window: a fresh (N,) tensor every step costs more in page
                # faults on a CPU than the selection that fills it (tens of MB)
                self._kept = torch.empty_like(score)
            kept = top_k_flat(score, keep_count(score.numel(), 1.0 - keep), score.dtype, self._last, self._kept)
            score.mul_(kept).add_(kept).sub_(1.0)  # pruned for good: -1, below every live score
            views = kept.split([w.numel() for w in self.prunable.values()])
            self.set_multipliers({name: view.view(w.shape).to(w.dtype)
                                  for (name, w), view in zip(self.prunable.items(), views)})
        self.apply_masks()
