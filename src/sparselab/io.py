"""Atomic file output, self-checking tensor files and compact storage of masks and sparse weights.

Every output is written under a temporary sibling name and renamed into place, so a job that is
killed leaves either its complete output or none. Tensor files carry the sha256 of their data in
their header, so a truncated or corrupted file in results/ is reported with its path instead of
being used. A write that fails for want of space or permission says so in one line.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

# Header key holding the hex sha256 of a tensor file's data section (all bytes after the header).
CHECKSUM_KEY = "data_sha256"
# The least free space results/ must have before a run starts: a checkpoint of the embedded
# default takes 90 MB, and a job that fills the disk fails late.
MIN_FREE_BYTES = 100 * 2**20
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
_FIX = {
    errno.ENOSPC: "free some space there and rerun; finished outputs are kept",
    errno.EDQUOT: "free some of your quota and rerun; finished outputs are kept",
}


class CorruptFileError(ValueError):
    """A file that fails its load or hash check; the message names it and how to recompute it."""


class OutputWriteError(OSError):
    """An output that cannot be written (no space, read-only or forbidden folder); errno says why."""

    def __str__(self) -> str:
        return self.strerror


def _recompute_advice(path: Path) -> str:
    return f"delete {path} and rerun: the job that makes it runs again"


@contextmanager
def atomic_path(path: str | Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; it replaces `path` only if the block succeeds.

    directory=True creates the sibling as an empty folder; an existing folder at `path` is moved
    aside, replaced and then removed, so readers see the old folder or the new one, never a mix.
    Temporary siblings that a killed job left behind are removed first. A write that fails with
    no space, a read-only file system or no permission raises OutputWriteError naming `path`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in [*path.parent.glob(f".{path.name}.tmp-*"), *path.parent.glob(f".{path.name}.old-*")]:
            _remove(stale)
        if directory:
            tmp.mkdir()
        yield tmp
        if directory and path.is_dir():
            os.replace(path, old)
        os.replace(tmp, path)
    except OSError as error:
        ours = {str(path), *map(str, path.parents)}
        about_other_file = (error.filename is not None and str(error.filename) not in ours
                            and not Path(error.filename).name.startswith(f".{path.name}."))
        if error.errno not in _WRITE_ERRNOS or isinstance(error, OutputWriteError) or about_other_file:
            raise
        raise _write_error(path, error) from error
    finally:
        _remove(tmp)
        _remove(old)


def _write_error(path: Path, error: OSError) -> OutputWriteError:
    """The one-line error for an output that could not be written."""
    folder = next((p for p in path.parents if p.exists()), Path("."))
    free = shutil.disk_usage(folder).free / 2**20
    fix = _FIX.get(error.errno, f"make {folder}/ writable, or run in a working directory you can write")
    return OutputWriteError(error.errno, f"cannot write {path}: {os.strerror(error.errno)} ({free:.0f} MiB free in {folder}/); {fix}")


def check_writable(folder: str | Path, min_free: int = MIN_FREE_BYTES) -> None:
    """OutputWriteError unless `folder` (or the folder that will hold it) takes a new file and has
    `min_free` bytes free: checked before a run starts so that no job fails for it later."""
    folder = Path(folder)
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    probe = existing / f".write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise OutputWriteError(
            error.errno, f"cannot write in {existing}/: {os.strerror(error.errno)}; make it writable, or run in a "
            f"working directory you can write"
        ) from error
    free = shutil.disk_usage(existing).free
    if free < min_free:
        raise OutputWriteError(
            errno.ENOSPC, f"only {free / 2**20:.1f} MiB free in {existing}/ (a run needs at least "
            f"{min_free / 2**20:.0f} MiB for its checkpoints); free some space and rerun"
        )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    """A JSON file's content; CorruptFileError naming the file if it does not parse."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptFileError(f"{path} is not valid JSON ({error}): {_recompute_advice(path)}") from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors, atomically, with the sha256 of the data in the header.

    The header is written with sorted keys (safetensors itself writes metadata in hash order),
    so the same tensors and metadata always give the same bytes.
    """
    blob = save({name: tensor.contiguous() for name, tensor in tensors.items()}, metadata=metadata)
    # blob: 8-byte little-endian header length n, n bytes of JSON header, then the data section.
    (header_length,) = struct.unpack("<Q", blob[:8])
    data = memoryview(blob)[8 + header_length:]
    header = json.loads(blob[8 : 8 + header_length])
    header["__metadata__"] = {**(metadata or {}), CHECKSUM_KEY: hashlib.sha256(data).hexdigest()}
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the data section to 8 bytes
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)))
        handle.write(text)
        handle.write(data)


def check_tensors_file(path: str | Path) -> dict[str, str]:
    """The header metadata of a safetensors file after checking its size and data checksum.

    CorruptFileError names the file if it is truncated, not safetensors, or its data does not
    hash to the checksum in its header (files without one get the size check only).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            (header_length,) = struct.unpack("<Q", handle.read(8))
            if header_length > size - 8:
                raise ValueError(f"its header claims {header_length} bytes of {size}")
            header = json.loads(handle.read(header_length))
            metadata = header.pop("__metadata__", None) or {}
            data_length = max((entry["data_offsets"][1] for entry in header.values()), default=0)
            if size - 8 - header_length != data_length:
                raise ValueError(f"{size - 8 - header_length} data bytes, the header says {data_length}")
            digest = hashlib.sha256()
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    except (ValueError, KeyError, TypeError, IndexError, struct.error) as error:
        raise CorruptFileError(f"{path} is truncated or not a safetensors file ({error}): {_recompute_advice(path)}") from None
    expected = metadata.get(CHECKSUM_KEY)
    if expected is not None and digest.hexdigest() != expected:
        raise CorruptFileError(
            f"{path} is corrupted (its data hashes to {digest.hexdigest()[:16]}..., the header records "
            f"{expected[:16]}...): {_recompute_advice(path)}"
        )
    return metadata


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a file written by `save_tensors`, after `check_tensors_file`."""
    check_tensors_file(path)
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _pack(mask: torch.Tensor) -> torch.Tensor:
    """A bool mask as uint8 bits, 8 weights per byte, in row-major order."""
    return torch.from_numpy(np.packbits(mask.cpu().flatten().numpy()))


def _unpack(bits: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """The inverse of `_pack`: a bool tensor of `shape`."""
    numel = int(np.prod(shape))
    return torch.from_numpy(np.unpackbits(bits.numpy(), count=numel).view(bool)).reshape(shape)  # 0/1 bytes


def save_masks(path: str | Path, masks: dict[str, torch.Tensor]) -> None:
    """Save boolean masks bit-packed (8 weights per byte) with their shapes in the metadata."""
    shapes = {name: list(m.shape) for name, m in masks.items()}
    save_tensors(path, {name: _pack(m) for name, m in masks.items()},
                 metadata={"packbits_shapes": json.dumps(shapes, sort_keys=True)})


def load_masks(path: str | Path) -> dict[str, torch.Tensor]:
    """Load masks saved by `save_masks` as boolean tensors (True = kept)."""
    shapes = json.loads(check_tensors_file(path)["packbits_shapes"])
    with safe_open(str(path), framework="pt") as f:
        return {name: _unpack(f.get_tensor(name), shapes[name]) for name in f.keys()}


# Tensor-name suffixes of a masked tensor in a compact file; "::" never occurs in a parameter name.
VALUES, MASK = "::values", "::mask"


def save_compact(path: str | Path, tensors: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    """Save a state dict with every masked tensor stored as its kept values plus its packed mask.

    A tensor with a mask (bool, True = kept) takes (1 - s) of its dense bytes for the values and
    1/32 (fp32) for the mask bits: ~13% of dense at 90% sparsity. Tensors without one are stored
    as they are. The mask is the run's own, never read off the zeros; ValueError if a weight it
    prunes is not zero (the checkpoint would then not be the model that was evaluated).
    """
    stored, shapes = {}, {}
    for name, tensor in tensors.items():
        mask = masks.get(name)
        if mask is None:
            stored[name] = tensor
            continue
        mask = mask.to(tensor.device, torch.bool)
        if mask.shape != tensor.shape:
            raise ValueError(f"{name}: mask shape {list(mask.shape)} != tensor shape {list(tensor.shape)}")
        leaked = int(tensor[~mask].count_nonzero())
        if leaked:
            raise ValueError(f"{name}: {leaked} weights outside its mask are non-zero; refusing to drop them")
        stored[name + VALUES] = tensor[mask]  # (kept,) in row-major order
        stored[name + MASK] = _pack(mask)
        shapes[name] = list(tensor.shape)
    save_tensors(path, stored, metadata={**(metadata or {}), "compact_shapes": json.dumps(shapes, sort_keys=True)})


def _compact_shapes(path: str | Path) -> dict[str, list[int]]:
    """{name: shape} of the masked tensors of a compact file, after its checks."""
    metadata = check_tensors_file(path)
    if "compact_shapes" not in metadata:
        raise CorruptFileError(f"{path} is not a compact checkpoint (no compact_shapes in its header): "
                               f"{_recompute_advice(Path(path))}")
    return json.loads(metadata["compact_shapes"])


def load_compact(path: str | Path) -> dict[str, torch.Tensor]:
    """A file of `save_compact` as ordinary dense tensors (pruned entries +0.0), after its checks."""
    shapes = _compact_shapes(path)
    tensors = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            if key.endswith(MASK):
                continue
            if not key.endswith(VALUES):
                tensors[key] = f.get_tensor(key)
                continue
            name = key[: -len(VALUES)]
            mask = _unpack(f.get_tensor(name + MASK), shapes[name])
            values = f.get_tensor(key)
            # masked_scatter_ fills the kept positions in row-major order, the order they were read in
            tensors[name] = torch.zeros(mask.shape, dtype=values.dtype).masked_scatter_(mask, values)
    return tensors


def load_compact_masks(path: str | Path) -> dict[str, torch.Tensor]:
    """The masks stored in a compact checkpoint: the run's own, as it pruned (none for a dense run)."""
    shapes = _compact_shapes(path)
    with safe_open(str(path), framework="pt") as f:
        return {name: _unpack(f.get_tensor(name + MASK), shape) for name, shape in shapes.items()}
