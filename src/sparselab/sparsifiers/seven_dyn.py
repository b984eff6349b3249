"""SEVEN during fine-tuning (SEVEN-dyn, the released variant of Xiao et al., IJCNN 2024).

Inside a window of T optimizer steps starting at `window_start`, every step feeds the current
batch's gradients to each matrix's SevenState (EMA of |G| and G^2 with bias correction, cumulative
score), then keeps the global top keep(t) fraction of the scores, keep(t) = k + (1-k)(1-(t+1)/T)^3
with k = 1 - target sparsity. Pruned weights get their score zeroed and never come back; after the
window the mask is frozen. A window that does not fit in the run is an error, not a silently
under-pruned model (the official RTE and STS-B settings end before their windows do).
"""

from __future__ import annotations

from sparselab.masks import build_masks
from sparselab.schedules import seven_keep_fraction
from sparselab.scoring.seven_pre import SevenState
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

    def window(self) -> tuple[int, int]:
        """(first step, length) of the pruning window."""
        if self.hyper["preset"]:
            if self.hyper["preset"] not in OFFICIAL_WINDOWS:
                raise ValueError(f"seven_dyn preset {self.hyper['preset']!r} is unknown "
                                 f"(allowed: {', '.join(sorted(OFFICIAL_WINDOWS))})")
            start, length, _ = OFFICIAL_WINDOWS[self.hyper["preset"]]
            return start, length
        return self.hyper["window_start"], self.hyper["window_length"]

    def begin(self, total_steps: int) -> None:
        start, length = self.window()
        if length < 1 or start + length > total_steps:
            raise ValueError(
                f"seven_dyn window (start {start}, length {length}) ends at step {start + length}, after the "
                f"run's {total_steps} optimizer steps: the model would never reach sparsity "
                f"{self.target.sparsity:g} (allowed: window_start + window_length <= {total_steps}; train "
                f"longer or shorten the window)"
            )
        super().begin(total_steps)
        self.states = {name: SevenState(float(self.hyper["a1"]), float(self.hyper["a2"])) for name in self.prunable}

    def _in_window(self, step: int) -> bool:
        start, length = self.window()
        return start <= step < start + length

    def after_backward(self, step: int) -> None:
        if self._in_window(step):
            for name, weight in self.prunable.items():
                self.states[name].update(weight, weight.grad)
        super().after_backward(step)

    def after_step(self, step: int) -> None:
        if self._in_window(step):
            start, length = self.window()
            keep = seven_keep_fraction(step - start, length, self.target.sparsity)
            scores = {}
            for name, state in self.states.items():
                state.score.mul_(self.masks[name])  # pruned weights lose their score for good
                scores[name] = state.score.cpu()
            fresh = build_masks(scores, 1.0 - keep, "global", self.target.structure)
            self.masks = {name: fresh[name].to(self.masks[name].device) & self.masks[name] for name in self.masks}
        self.apply_masks()
