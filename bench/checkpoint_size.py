"""Benchmark: checkpoint and mask files on disk at several sparsities, against the dense file.

The 72 prunable matrices of bert-base (84.9M random weights), pruned by global magnitude, saved
as the pipeline saves them: weights with sparselab.io.save_tensors (dense safetensors, pruned
weights stored as zeros), masks with save_masks (bit-packed, 8 weights per byte).

    .venv/bin/python bench/checkpoint_size.py [--sparsities 0 0.5 0.9]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from global_magnitude import build_model

from sparselab.io import save_masks, save_tensors
from sparselab.masks import allocate_global


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.0, 0.5, 0.9])
    args = parser.parse_args()
    weights = {str(i): layer.weight.detach() for i, layer in enumerate(build_model())}
    with tempfile.TemporaryDirectory() as folder:
        dense = Path(folder, "dense.safetensors")
        save_tensors(dense, weights)
        dense_mib = dense.stat().st_size / 2**20
        print(f"72 matrices, 84.9M weights; dense safetensors file: {dense_mib:.1f} MiB")
        print(f"{'sparsity':>8} {'weights MiB':>12} {'vs dense':>9} {'masks MiB':>10} {'vs dense':>9}")
        for sparsity in args.sparsities:
            masks = allocate_global({name: w.abs() for name, w in weights.items()}, sparsity)
            checkpoint, mask_file = Path(folder, f"weights-{sparsity}.safetensors"), Path(folder, f"masks-{sparsity}")
            save_tensors(checkpoint, {name: w * masks[name] for name, w in weights.items()})
            save_masks(mask_file, masks)
            size, mask_size = checkpoint.stat().st_size / 2**20, mask_file.stat().st_size / 2**20
            print(f"{sparsity:>8} {size:12.1f} {size / dense_mib:8.2f}x {mask_size:10.1f} {mask_size / dense_mib:8.3f}x")


if __name__ == "__main__":
    main()
