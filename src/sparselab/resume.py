"""Resumable fine-tuning: a job that is stopped (SLURM's SIGTERM before a time limit or a preemption,
SIGUSR1 when asked for with `--signal`) saves its whole training state and exits non-zero; the next
run of the same job (SLURM requeue, Snakemake retry or rerun) continues from it, and on a CPU ends
with the same weights and train log, bit for bit, as a run that was never stopped.

Layout: one file beside the job's outputs, `<out_dir>/.resume/state.safetensors`, never a declared
output (Snakemake neither removes it when the job fails nor mistakes it for a result). It holds
every tensor of the state under a prefix (`model/`, `optimizer/<i>/`, `sparsifier/`, `rng/`) and,
in its header, the JSON of everything else: the run's fingerprint, the step counter, the position
in the current epoch, the train log rows and losses so far, the optimizer's parameter groups and
the learning-rate scheduler's state. It is written under a temporary name, synced and renamed
(a half-written state is never seen under its name), and carries the sha256 of its data
(io.check_tensors_file), so a truncated or damaged one is refused with its path and what to do.
A state whose fingerprint (recipe, seed, method settings, data size, model and data records) is
not the run's is stale: the log says so and the run starts over. The job removes the state once
its outputs are written.

Only tensors and JSON are stored (safetensors + a JSON header): nothing is unpickled on load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import struct
import threading
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save

from sparselab.io import CHECKSUM_KEY, CorruptFileError, atomic_path, check_tensors_file

log = logging.getLogger(__name__)

RESUME_DIR = ".resume"
STATE_FILE = "state.safetensors"
FORMAT = 1  # bump when the layout of the state changes: an older state is then stale, not misread
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_HEADER_KEY = "resume"  # header metadata key holding the JSON part of the state


class TrainingInterrupted(RuntimeError):
    """Training stopped on a signal after saving its state; the job must be run again to finish."""


def state_path(out_dir: Path) -> Path:
    """Where the resumable state of the job writing `out_dir` lives."""
    return Path(out_dir) / RESUME_DIR / STATE_FILE


def canonical(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(value, sort_keys=True))


def _differences(saved: Any, expected: Any, where: str = "") -> list[str]:
    """Dotted paths where two JSON values differ (for the log line of a stale state)."""
    if isinstance(saved, dict) and isinstance(expected, dict):
        return [d for key in sorted(set(saved) | set(expected))
                for d in _differences(saved.get(key), expected.get(key), f"{where}.{key}" if where else key)]
    return [] if saved == expected else [where or "(all)"]


class Checkpointing:
    """The resumable state of one training run: where it lives, how often it is saved, what it
    must match, and whether a stop was asked for.

    path: the state file. every: optimizer steps between saves (0: only when stopped by a signal).
    fingerprint: JSON-able identity of the run; a state saved with another one is not resumed.
    """

    def __init__(self, path: str | Path, every: int, fingerprint: dict[str, Any]) -> None:
        if every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (0: save only on a stop signal), not {every}")
        self.path = Path(path)
        self.every = every
        self.fingerprint = canonical(fingerprint)
        self.stop_signal: int | None = None

    # --- stop requests -------------------------------------------------------------------------

    def request_stop(self, signum: int, frame: Any = None) -> None:
        """The signal handler: only note the request; the training loop acts on it between steps."""
        self.stop_signal = signum

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """For the block, SIGTERM and SIGUSR1 ask the loop to stop after its current step (the
        previous handlers are restored afterwards). Outside the main thread, where Python cannot
        install handlers, the block runs without them."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {signum: signal.signal(signum, self.request_stop) for signum in STOP_SIGNALS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def due(self, step: int) -> bool:
        """Whether to save after `step` optimizer steps: on a stop request, or every `every` steps."""
        return self.stop_signal is not None or (self.every > 0 and step % self.every == 0)

    # --- the file ------------------------------------------------------------------------------

    def save(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Write the state atomically: a temporary sibling, synced to disk, then renamed over the
        previous state, so that a crash at any moment leaves the previous state or the new one."""
        header = {"format": FORMAT, "fingerprint": self.fingerprint, **meta}
        blob = save(_unshared(tensors), metadata={_HEADER_KEY: json.dumps(header, sort_keys=True)})
        # the layout of io.save_tensors (sha256 of the data section in the header), so that
        # io.check_tensors_file verifies it; written here to sync it before the rename
        (header_length,) = struct.unpack("<Q", blob[:8])
        data = memoryview(blob)[8 + header_length:]
        parsed = json.loads(blob[8 : 8 + header_length])
        parsed["__metadata__"][CHECKSUM_KEY] = hashlib.sha256(data).hexdigest()
        text = json.dumps(parsed, sort_keys=True, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as handle:
                handle.write(struct.pack("<Q", len(text)))
                handle.write(text)
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        _sync_folder(self.path.parent)

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """(tensors, meta) of the saved state, or None when there is none or it is stale (another
        run's: the log says how it differs, and it is removed). CorruptFileError, naming the file
        and what to do, when it is truncated or damaged."""
        if not self.path.is_file():
            return None
        try:
            metadata = check_tensors_file(self.path)
            header = json.loads(metadata[_HEADER_KEY])
        except (CorruptFileError, KeyError, json.JSONDecodeError) as error:
            detail = str(error).split(": delete ", 1)[0] if isinstance(error, CorruptFileError) else \
                f"{self.path} has no readable resume header ({type(error).__name__}: {error})"
            raise CorruptFileError(
                f"{detail}; it is the resumable state of an interrupted fine-tune and cannot be used: delete "
                f"{self.path} (the run then starts over from step 0) and rerun"
            ) from None
        if header.get("format") != FORMAT or header.get("fingerprint") != self.fingerprint:
            differs = (["format"] if header.get("format") != FORMAT else
                       _differences(header.get("fingerprint"), self.fingerprint))
            log.warning("ignoring the resumable state %s: it was saved by another run (differs in %s); "
                        "starting over from step 0", self.path, ", ".join(differs))
            self.clear()
            return None
        with safe_open(str(self.path), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        return tensors, header

    def clear(self) -> None:
        """Remove the state (and its folder when nothing else is left in it)."""
        folder = self.path.parent
        for stale in [self.path, *folder.glob(f".{self.path.name}.tmp-*")]:
            stale.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()


def _sync_folder(folder: Path) -> None:
    """fsync a folder, so that a rename in it is on disk (not possible on every platform)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors that share no memory (safetensors refuses views of one storage,
    e.g. PST's weights, which are views of their group's stacked weights)."""
    out, seen = {}, set()
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    return out


def split_state(state: dict[str, Any], prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A state dict of tensors and JSON values -> (its tensors under `prefix`, its other values)."""
    tensors = {f"{prefix}{key}": value for key, value in state.items() if isinstance(value, torch.Tensor)}
    others = {key: value for key, value in state.items() if not isinstance(value, torch.Tensor)}
    return tensors, others


def join_state(tensors: dict[str, torch.Tensor], others: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The inverse of `split_state`."""
    return {**{key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}, **others}


def capture(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, sparsifier: Any,
            rng: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON values) of the model, optimizer, scheduler, sparsifier and RNG states."""
    tensors = {f"model/{key}": value for key, value in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    optimizer_values = {}
    for index, values in optimizer_state["state"].items():
        found, others = split_state(values, f"optimizer/{index}/")
        tensors.update(found)
        optimizer_values[str(index)] = others
    meta: dict[str, Any] = {
        "optimizer": {"param_groups": optimizer_state["param_groups"], "values": optimizer_values,
                      "indices": [str(index) for index in optimizer_state["state"]]},
        "scheduler": {key: value for key, value in scheduler.state_dict().items()},
    }
    if sparsifier is not None:
        found, others = split_state(sparsifier.state_dict(), "sparsifier/")
        tensors.update(found)
        meta["sparsifier"] = others
    tensors.update({f"rng/{name}": state for name, state in rng.items()})
    return tensors, meta


def restore(tensors: dict[str, torch.Tensor], meta: dict[str, Any], model: torch.nn.Module,
            optimizer: torch.optim.Optimizer, scheduler: Any, sparsifier: Any) -> dict[str, torch.Tensor]:
    """Load what `capture` saved into a model, optimizer, scheduler and sparsifier built as for a
    fresh run (the sparsifier attached and begun); returns the RNG states for the caller to set."""
    model.load_state_dict({key[len("model/"):]: value for key, value in tensors.items() if key.startswith("model/")})
    if sparsifier is not None:
        sparsifier.load_state_dict(join_state(tensors, meta.get("sparsifier", {}), "sparsifier/"))
    fresh_groups = optimizer.state_dict()["param_groups"]
    groups = []
    for fresh, saved in zip(fresh_groups, meta["optimizer"]["param_groups"], strict=True):
        # JSON turned tuples (betas) into lists: give every value the type it has in a fresh group
        groups.append({key: tuple(value) if isinstance(fresh.get(key), tuple) else value for key, value in saved.items()})
    state = {int(index): join_state(tensors, meta["optimizer"]["values"][index], f"optimizer/{index}/")
             for index in meta["optimizer"]["indices"]}
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scheduler.load_state_dict(dict(meta["scheduler"]))
    return {key[len("rng/"):]: value for key, value in tensors.items() if key.startswith("rng/")}
