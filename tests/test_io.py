"""Compact mask storage and atomic outputs."""

from __future__ import annotations

import pytest
import torch

from sparselab.io import atomic_path, load_masks, save_masks


def test_masks_round_trip_bit_packed(tmp_path):
    g = torch.Generator().manual_seed(0)
    masks = {"a": torch.rand(7, 13, generator=g) > 0.5, "b": torch.rand(3, 5, generator=g) > 0.2}
    path = tmp_path / "mask.safetensors"
    save_masks(path, masks)
    loaded = load_masks(path)
    assert all(torch.equal(masks[k], loaded[k]) for k in masks)
    assert path.stat().st_size < 7 * 13 + 3 * 5 + 400  # about a bit per weight, plus the header


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]
