"""Atomic file output and compact storage of masks and scores.

Every output is written under a temporary sibling name and renamed into place, so a job that is
killed leaves either its complete output or none.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file


@contextmanager
def atomic_path(path: str | Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; it replaces `path` only if the block succeeds.

    directory=True creates the sibling as an empty folder; an existing folder at `path` is moved
    aside, replaced and then removed, so readers see the old folder or the new one, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    _remove(tmp)
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        if directory and path.is_dir():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        _remove(tmp)
        _remove(old)


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
    return json.loads(Path(path).read_text())


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors (contiguous copies), atomically.

    safetensors writes metadata keys in hash order, so byte-identical files need at most one key.
    """
    if metadata is not None and len(metadata) > 1:
        raise ValueError("give at most one metadata key; nest the rest as JSON")
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def save_masks(path: str | Path, masks: dict[str, torch.Tensor]) -> None:
    """Save boolean masks bit-packed (8 weights per byte) with their shapes in the metadata."""
    packed = {name: torch.from_numpy(np.packbits(m.flatten().numpy())) for name, m in masks.items()}
    shapes = {name: list(m.shape) for name, m in masks.items()}
    save_tensors(path, packed, metadata={"packbits_shapes": json.dumps(shapes, sort_keys=True)})


def load_masks(path: str | Path) -> dict[str, torch.Tensor]:
    """Load masks saved by `save_masks` as boolean tensors (True = kept)."""
    with safe_open(str(path), framework="pt") as f:
        shapes = json.loads(f.metadata()["packbits_shapes"])
        masks = {}
        for name in f.keys():
            shape = shapes[name]
            numel = int(np.prod(shape))
            bits = np.unpackbits(f.get_tensor(name).numpy(), count=numel)
            masks[name] = torch.from_numpy(bits.astype(bool)).reshape(shape)
    return masks
