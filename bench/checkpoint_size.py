"""Benchmark: checkpoint and mask files on disk at several sparsities, against the dense file.

Three models with random weights (no download), pruned by global magnitude at each sparsity:
- the 72 prunable matrices of bert-base (84.9M weights), alone;
- a whole bert-base classifier (109.5M parameters) with the papers' prunable set: the same 72
  matrices pruned, embeddings, LayerNorms, biases, pooler and head kept dense, as a fine-tune job
  of params.yaml saves it (so at sparsity s only 0.775 s of its parameters are zeros);
- the same classifier with every 2-D weight prunable (embeddings, pooler and head too, as a
  prunable.include of `weight$` selects): at sparsity s the model is s sparse, all but 0.1% of
  its parameters (the LayerNorms and biases) being prunable.
Each is saved three ways: the dense safetensors file (pruned weights stored as zeros), the compact
checkpoint the pipeline writes (sparselab.io.save_compact: kept values + bit-packed mask) and the
mask alone (save_masks). The compact file is loaded back, timed, and checked bit for bit.

    .venv/bin/python bench/checkpoint_size.py [--sparsities 0 0.5 0.9] [--record FILE]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from global_magnitude import build_model
from targets import record
from transformers import BertConfig, BertForSequenceClassification

from sparselab.io import load_compact, load_tensors, save_compact, save_masks, save_tensors
from sparselab.masks import allocate_global


def matrices_only() -> tuple[dict[str, torch.Tensor], list[str]]:
    """The 72 bert-base-shaped matrices: every tensor is prunable."""
    weights = {str(i): layer.weight.detach() for i, layer in enumerate(build_model())}
    return weights, list(weights)


def whole_classifier() -> tuple[dict[str, torch.Tensor], list[str]]:
    """A bert-base classifier's state dict and its 72 prunable encoder matrices."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2))
    state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    prunable = [name for name in state if ".encoder." in name and name.endswith(".weight") and state[name].dim() == 2]
    return state, prunable


def every_matrix() -> tuple[dict[str, torch.Tensor], list[str]]:
    """The bert-base classifier's state dict and every 2-D weight of it (embeddings included)."""
    state, _ = whole_classifier()
    return state, [name for name, tensor in state.items() if name.endswith(".weight") and tensor.dim() == 2]


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(torch.int32) if tensor.dtype == torch.float32 else tensor


def measure(label: str, state: dict[str, torch.Tensor], prunable: list[str], sparsities: list[float], folder: Path,
            record_path: Path | None, judged: bool) -> None:
    """Print the sizes of `label`'s files; `judged`: whether the 20% target applies (a model that
    is as sparse as its prunable set, not one with dense parts beside it)."""
    dense = Path(folder, "dense.safetensors")
    save_tensors(dense, state)
    dense_mib = dense.stat().st_size / 2**20
    start = time.perf_counter()
    load_tensors(dense)
    dense_load = time.perf_counter() - start
    print(f"\n{label}: dense safetensors file {dense_mib:.1f} MiB, loads in {dense_load:.2f} s")
    print(f"{'sparsity':>8} {'zeros-in-place MiB':>19} {'compact MiB':>12} {'vs dense':>9} {'load s':>7} "
          f"{'bit-identical':>13} {'mask MiB':>9} {'vs dense':>9}")
    for sparsity in sparsities:
        masks = allocate_global({name: state[name].abs() for name in prunable}, sparsity)
        pruned = {name: torch.where(masks[name], tensor, 0.0) if name in masks else tensor for name, tensor in state.items()}
        in_place, compact, mask_file = (Path(folder, f"{kind}-{sparsity}") for kind in ("zeros", "compact", "masks"))
        save_tensors(in_place, pruned)
        save_compact(compact, pruned, masks)
        save_masks(mask_file, masks)
        start = time.perf_counter()
        loaded = load_compact(compact)
        load_seconds = time.perf_counter() - start
        identical = loaded.keys() == pruned.keys() and all(torch.equal(bits(loaded[k]), bits(v)) for k, v in pruned.items())
        sizes = [path.stat().st_size / 2**20 for path in (in_place, compact, mask_file)]
        print(f"{sparsity:>8} {sizes[0]:19.1f} {sizes[1]:12.1f} {sizes[1] / dense_mib:8.3f}x {load_seconds:7.2f} "
              f"{str(identical):>13} {sizes[2]:9.1f} {sizes[2] / dense_mib:8.3f}x")
        if sparsity == 0.9:
            target = "compact / dense file <= 0.20, bit-identical" if judged else "none: 22.5% of it is not pruned"
            record(record_path, f"compact checkpoint at 90%, {label}", sizes[1], "MiB", peer=dense_mib,
                   ratio=sizes[1] / dense_mib, target=target,
                   met=(sizes[1] / dense_mib <= 0.20 and identical) if judged else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.0, 0.5, 0.9])
    parser.add_argument("--record", type=Path, help="append the target rows to this JSON-lines file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for label, build, judged in (
            ("72 bert-base matrices (84.9M weights)", matrices_only, True),
            ("whole bert-base classifier (109.5M parameters, 84.9M prunable)", whole_classifier, False),
            ("whole bert-base classifier, every 2-D weight prunable (109.4M)", every_matrix, True),
        ):
            state, prunable = build()
            measure(label, state, prunable, args.sparsities, Path(folder), args.record, judged)


if __name__ == "__main__":
    main()
