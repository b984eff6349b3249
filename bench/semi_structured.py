"""Benchmark: a 2:4-sparse BERT forward pass on GPU tensor cores against the dense one.

2:4 masks (2 of every 4 consecutive inputs kept, masks.nm_mask on |W|) are converted with torch's
semi-structured sparse tensors, which run the Linear layers on the sparse tensor cores of Ampere
and later GPUs. Timed: the forward pass of a bert-base-shaped encoder (random weights, half
precision, inference) at several batch sizes, dense and 2:4, interleaved, medians of repetitions.
Also checked: the converted layers compute with exactly the masked weights. Needs CUDA.

    python bench/semi_structured.py [--dtype fp16] [--kernels cusparselt] [--compile] [--batches 1 8 32 128]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured
from transformers import BertConfig, BertModel

from sparselab.masks import nm_mask

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def sparsify(model: nn.Module) -> int:
    """Prune every encoder Linear to 2:4 by magnitude and convert it; returns how many were."""
    converted = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and ".encoder." in f".{name}.":
            with torch.no_grad():
                masked = module.weight * nm_mask(module.weight.abs(), 2, 4, name)
            module.weight = nn.Parameter(to_sparse_semi_structured(masked), requires_grad=False)
            converted += 1
    return converted


def time_forward(model: nn.Module, ids: torch.Tensor, repeats: int) -> list[float]:
    """Milliseconds of each of `repeats` forward passes."""
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        model(input_ids=ids)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return times


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--kernels", default="cusparselt", choices=["cusparselt", "cutlass"],
                        help="torch's two 2:4 back ends (CUTLASS's runs on compute capability 8.x only)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models (fuses the transposes "
                        "and padding around the sparse matmuls)")
    args = parser.parse_args()
    SparseSemiStructuredTensor._FORCE_CUTLASS = args.kernels == "cutlass"
    if not torch.cuda.is_available():
        raise SystemExit("error: 2:4 sparse kernels need a CUDA GPU (compute capability 8.0 or later)")
    dtype, device = DTYPES[args.dtype], torch.device("cuda")
    config = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    torch.manual_seed(0)
    dense = BertModel(config, add_pooling_layer=False).to(device, dtype).eval()
    sparse = BertModel(config, add_pooling_layer=False).to(device, dtype).eval()
    sparse.load_state_dict(dense.state_dict())
    layers = sparsify(sparse)

    # exactness: a converted layer computes x W^T with W the 2:4-masked dense weight
    linear = sparse.get_submodule("encoder.layer.0.intermediate.dense")
    reference = dense.get_submodule("encoder.layer.0.intermediate.dense").weight
    masked = reference * nm_mask(reference.abs(), 2, 4)
    x = torch.randn(64, 768, device=device, dtype=dtype)
    error = (linear(x) - nn.functional.linear(x, masked, linear.bias)).abs().max().item()
    if args.compile:
        dense, sparse = torch.compile(dense), torch.compile(sparse)

    print(f"{torch.cuda.get_device_name(device)}, bert-base encoder ({layers} Linear layers 2:4), "
          f"{args.dtype}, {args.kernels} kernels{', compiled' if args.compile else ''}, sequence length {args.length}, "
          "inference")
    print(f"max |2:4 layer - masked dense layer| = {error:.2e}")
    print(f"{'batch':>6} {'dense ms':>9} {'2:4 ms':>8} {'speedup':>8}")
    for batch in args.batches:
        ids = torch.randint(1000, 20000, (batch, args.length), device=device)
        for model in (dense, sparse):  # untimed: kernel selection for this shape
            time_forward(model, ids, 3)
        times = {"dense": [], "sparse": []}
        for _ in range(args.repeats):  # interleaved, so that clock changes hit both alike
            times["dense"] += time_forward(dense, ids, 1)
            times["sparse"] += time_forward(sparse, ids, 1)
        d, s = statistics.median(times["dense"]), statistics.median(times["sparse"])
        print(f"{batch:>6} {d:9.2f} {s:8.2f} {d / s:7.2f}x")


if __name__ == "__main__":
    main()
