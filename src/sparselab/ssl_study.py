"""The self-supervised vs supervised comparison of the essential-sparsity paper: near-zero weights.

The paper finds self-supervised DINO more prunable than a supervised ViT of the same shape. Beside
the essential-sparsity curves (the ssl_vs_supervised figure, sparselab.figures), it compares how
many of each pretrained backbone's prunable weights are near zero, |w| < tau, for several tau (the
paper defines no threshold); those shares are read here from the fetched model folders.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file

from sparselab.aggregate import write_csv
from sparselab.fetch import verify_record
from sparselab.prunable import prunable_names


def near_zero_shares(weights: dict[str, torch.Tensor], taus: list[float]) -> dict[float, float]:
    """tau -> the share of all entries of `weights` with |w| < tau."""
    total = sum(w.numel() for w in weights.values())
    return {tau: sum(int((w.abs() < tau).sum()) for w in weights.values()) / total for tau in taus}


def prunable_weights(folder: Path, prunable: dict) -> dict[str, torch.Tensor]:
    """The prunable 2-D weights of a fetched model folder, read from its safetensors files."""
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(path))
    matrices = {name: tensor.float() for name, tensor in tensors.items() if tensor.dim() == 2}
    chosen = prunable_names(matrices, prunable["include"], prunable.get("exclude", []))
    if not chosen:
        raise ValueError(f"the prunable set {prunable['include']} matches no matrix of {folder}")
    return {name: matrices[name] for name in chosen}


def near_zero_stage(folders: list[Path], prunable: dict[str, dict], descriptions: dict[str, str],
                    taus: list[float], out_csv: Path) -> None:
    """results/tables/near_zero/<study>.csv: model, description, tau, share, prunable_params, one row
    per backbone (folder resources/models/<model>) and tau."""
    rows = []
    for folder in folders:
        verify_record(folder)
        model = folder.name
        weights = prunable_weights(folder, prunable[model])
        count = sum(w.numel() for w in weights.values())
        for tau, share in near_zero_shares(weights, taus).items():
            rows.append({"model": model, "description": descriptions[model], "tau": tau, "share": share,
                         "prunable_params": count})
    write_csv(pd.DataFrame(rows), out_csv)
