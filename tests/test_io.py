"""Compact storage of masks and sparse weights, self-checking tensor files, atomic outputs."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from sparselab.io import (
    CHECKSUM_KEY,
    CorruptFileError,
    OutputWriteError,
    atomic_path,
    check_tensors_file,
    check_writable,
    load_compact,
    load_compact_masks,
    load_masks,
    load_tensors,
    read_json,
    save_compact,
    save_masks,
    save_tensors,
    write_json,
)


def test_masks_round_trip_bit_packed(tmp_path):
    g = torch.Generator().manual_seed(0)
    masks = {"a": torch.rand(7, 13, generator=g) > 0.5, "b": torch.rand(3, 5, generator=g) > 0.2}
    path = tmp_path / "mask.safetensors"
    save_masks(path, masks)
    loaded = load_masks(path)
    assert all(torch.equal(masks[k], loaded[k]) for k in masks)
    assert path.stat().st_size < 7 * 13 + 3 * 5 + 400  # about a bit per weight, plus the header


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor, so that -0.0 != +0.0 and NaN payloads count."""
    return tensor.view(torch.int32 if tensor.dtype == torch.float32 else torch.int16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compact_round_trip_is_bit_identical(tmp_path, dtype):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 24, generator=g).to(dtype)
    mask = torch.rand(16, 24, generator=g) > 0.9  # ~90% pruned
    weight = torch.where(mask, weight, 0.0)
    weight[mask.nonzero()[0].unbind()] = float("nan")  # a kept NaN round-trips as it was
    tensors = {"layer.weight": weight, "layer.bias": torch.randn(16, generator=g).to(dtype),
               "ids": torch.arange(5)}
    save_compact(tmp_path / "c.safetensors", tensors, {"layer.weight": mask})
    loaded = load_compact(tmp_path / "c.safetensors")
    assert sorted(loaded) == sorted(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape
        assert torch.equal(_bits(loaded[name]), _bits(tensor)) if tensor.is_floating_point() else torch.equal(loaded[name], tensor)
    masks = load_compact_masks(tmp_path / "c.safetensors")  # the run's mask, as saved
    assert list(masks) == ["layer.weight"] and torch.equal(masks["layer.weight"], mask)


def test_compact_file_of_a_90_percent_sparse_matrix_is_13_percent_of_dense(tmp_path):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(512, 512, generator=g)
    mask = torch.zeros(512 * 512, dtype=torch.bool)
    mask[torch.randperm(512 * 512, generator=g)[: 512 * 512 // 10]] = True  # exactly 10% kept
    mask = mask.view(512, 512)
    save_tensors(tmp_path / "dense.safetensors", {"w": weight * mask})
    save_compact(tmp_path / "compact.safetensors", {"w": weight * mask}, {"w": mask})
    ratio = (tmp_path / "compact.safetensors").stat().st_size / (tmp_path / "dense.safetensors").stat().st_size
    assert 0.125 < ratio < 0.135  # 10% of the values + 1/32 for the mask bits, + the header


def test_compact_refuses_a_pruned_weight_that_is_not_zero(tmp_path):
    weight, mask = torch.ones(2, 3), torch.tensor([[True, False, True], [True, True, True]])
    with pytest.raises(ValueError, match="w: 1 weights outside its mask are non-zero"):
        save_compact(tmp_path / "c.safetensors", {"w": weight}, {"w": mask})
    with pytest.raises(ValueError, match=r"w: mask shape \[3, 2\] != tensor shape \[2, 3\]"):
        save_compact(tmp_path / "c.safetensors", {"w": weight}, {"w": mask.T})
    assert not (tmp_path / "c.safetensors").exists()


def test_compact_loader_refuses_other_and_damaged_files(tmp_path):
    save_tensors(tmp_path / "plain.safetensors", {"w": torch.zeros(2)})
    with pytest.raises(CorruptFileError, match="plain.safetensors is not a compact checkpoint"):
        load_compact(tmp_path / "plain.safetensors")
    path = tmp_path / "c.safetensors"
    save_compact(path, {"w": torch.eye(3)}, {"w": torch.eye(3, dtype=torch.bool)})
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(CorruptFileError, match="is truncated"):
        load_compact(path)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_tensor_files_are_byte_identical_and_carry_their_checksum(tmp_path):
    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(4, dtype=torch.int8)}
    metadata = {"format": "pt", "method": "{}", "z": "1"}
    save_tensors(tmp_path / "one.safetensors", tensors, metadata)
    save_tensors(tmp_path / "two.safetensors", dict(reversed(tensors.items())), dict(reversed(metadata.items())))
    assert (tmp_path / "one.safetensors").read_bytes() == (tmp_path / "two.safetensors").read_bytes()
    found = check_tensors_file(tmp_path / "one.safetensors")
    assert found[CHECKSUM_KEY] and {k: found[k] for k in metadata} == metadata
    loaded = load_tensors(tmp_path / "one.safetensors")
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[: len(data) - 5], "is truncated or not a safetensors file"),
    (lambda data: data[:10], "is truncated or not a safetensors file"),
    (lambda data: data[:-1] + bytes([data[-1] ^ 0x10]), "is corrupted"),
    (lambda data: b"not a tensor file at all", "is truncated or not a safetensors file"),
])
def test_damaged_tensor_files_are_refused_with_their_path(tmp_path, damage, message):
    path = tmp_path / "mask.safetensors"
    save_masks(path, {"w": torch.rand(8, 16) > 0.5})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CorruptFileError, match=f"^{path} {message}.*: delete {path} and rerun"):
        load_masks(path)


def test_a_record_that_does_not_parse_is_refused_with_its_path(tmp_path):
    path = tmp_path / "finetuned.json"
    write_json(path, {"metrics": {"accuracy": 0.5}})
    path.write_text(path.read_text()[:12])
    with pytest.raises(CorruptFileError, match=f"^{path} is not valid JSON"):
        read_json(path)


def test_atomic_path_removes_what_a_killed_writer_left(tmp_path):
    target = tmp_path / "model.safetensors"
    stale = [tmp_path / ".model.safetensors.tmp-99999", tmp_path / ".model.safetensors.old-99999"]
    for path in stale:
        path.write_text("half")
    other = tmp_path / ".config.json.tmp-99999"
    other.write_text("another output's")
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and not any(path.exists() for path in stale) and other.exists()


def test_a_write_that_fails_for_space_names_the_output(tmp_path):
    target = tmp_path / "out" / "model.safetensors"

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OutputWriteError, match=f"^cannot write {target}: No space left on device .*finished "
                                               "outputs are kept$"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            full_disk()
    assert not target.exists() and not list(target.parent.iterdir())


def test_check_writable_wants_a_writable_folder_with_room(tmp_path):
    check_writable(tmp_path / "results", min_free=0)  # a folder that does not exist yet: its parent counts
    assert not (tmp_path / "results").exists() and not list(tmp_path.iterdir())
    with pytest.raises(OutputWriteError, match=r"^only .* MiB free in .*; free some space and rerun$"):
        check_writable(tmp_path, min_free=2**62)
