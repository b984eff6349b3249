"""Benchmark: the cost of one fine-tuning step under each sparsifier, against a dense step.

Targets of the methods issue: SEVEN's score accumulation adds at most 10% to a step, and a PST step
is no slower than a dense one. All variants run in one process on the same batches, interleaved
round by round so that machine noise hits them alike; the median ms per step is printed, and the
quartiles of each variant's step-by-step ratio to the dense step on the same batch. SEVEN's
score accumulation alone is timed on the dense run's own gradients after each of its steps (a
seven_dyn step also selects the global top-k every step of its window, which is timed with it).

    .venv/bin/python bench/training_step.py [--model resources/models/minilm] [--steps 20] [--record FILE]

`--schedule defaults` times the sparsifiers at their own default hyper-parameters instead (PST: no
selection before 10% of the run, a ramp to 70%, the target kept after), what a step costs on
average over a run; a schedule that does not fit the run (seven_dyn's 100-step window in a short
run) is the sparsifier's usual config error.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from targets import record
from transformers import AutoConfig, AutoModelForSequenceClassification

from sparselab.batches import encode, iterate_batches
from sparselab.data import load_split, load_task
from sparselab.finetune import training_step
from sparselab.masks import Structure, build_masks
from sparselab.modeling import load_classifier, load_tokenizer
from sparselab.prunable import select_prunable
from sparselab.scoring.seven_pre import SevenState
from sparselab.sparsifiers import SPARSIFIERS, FixedMask, Target

PRUNABLE = [r"encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
            r"|intermediate\.dense|output\.dense)\.weight$"]


def busiest(name: str, total_steps: int) -> dict:
    """Hyper-parameters that keep a sparsifier at its busiest over a run of `total_steps`: gmp and
    pst ramp from 0 to the target over the whole run and select a new mask every step, seven_dyn
    accumulates scores and selects a global top-k every step of a window as long as the run, acdc
    alternates sparse and dense steps (a new magnitude mask every other step)."""
    return {"gmp": {"start": 0.0, "end": 1.0, "frequency": 1},
            "seven_dyn": {"window_start": 0, "window_length": total_steps},
            "pst": {"start": 0.0, "end": 1.0},
            "acdc": {"warmup": 0.0, "phase": 1 / total_steps, "final": 1 / total_steps}}.get(name, {})


SETUPS = {"pst": "layerwise"}


def load_model(model_dir: Path, task: dict, random_init: bool) -> torch.nn.Module:
    """The pretrained classifier, or one of the same architecture with random weights (timings do
    not depend on the values, and a GPU machine may get the config without the weights)."""
    if not random_init:
        return load_classifier(model_dir, task, seed=0)
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(model_dir, num_labels=task["num_labels"])
    return AutoModelForSequenceClassification.from_config(config)


def make_variant(name: str, model: torch.nn.Module, total_steps: int, schedule: str = "busiest"):
    """(model, sparsifier, optimizer) of one variant at 50% sparsity, its schedule at its busiest or
    at the sparsifier's defaults."""
    model = model.train()
    prunable = select_prunable(model, PRUNABLE, [])
    target = Target(0.5, SETUPS.get(name, "global"), Structure())
    if name == "dense":
        sparsifier = None
    elif name == "fixed_mask":
        sparsifier = FixedMask(build_masks({n: p.detach().abs() for n, p in prunable.items()}, 0.5, "global", Structure()))
    else:
        sparsifier = SPARSIFIERS.get(name)(**(busiest(name, total_steps) if schedule == "busiest" else {}))
    if sparsifier is not None:
        sparsifier.attach(model, prunable, target)
        sparsifier.begin(total_steps)
    params = sparsifier.trainable_parameters() if sparsifier else list(model.parameters())
    return model, sparsifier, torch.optim.AdamW(params, lr=1e-4, fused=True)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a step's time is its own."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("resources/models/minilm"))
    parser.add_argument("--data", type=Path, default=Path("resources/data/rotten_tomatoes"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--variants", nargs="+", help="a subset of the variants (dense is always timed)")
    parser.add_argument("--schedule", default="busiest", choices=["busiest", "defaults"],
                        help="the sparsifiers' schedules at their busiest, or their default hyper-parameters")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--random-init", action="store_true", help="the model's architecture with random weights")
    parser.add_argument("--record", type=Path, help="append the target rows to this JSON-lines file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    task = load_task(args.data)
    rows = load_split(args.data, "train")[: 32 * (args.steps + 1)]
    data = encode(rows, load_tokenizer(args.model), task["text_fields"], 64, task["labels"] is None)
    batches = [{k: v.to(device) for k, v in batch.items()}
               for batch in iterate_batches(data, 32, torch.Generator().manual_seed(0), group_by_length=True)]
    names = ["dense", *[n for n in ["fixed_mask", *SPARSIFIERS.names()] if not args.variants or n in args.variants]]
    variants = {name: make_variant(name, load_model(args.model, task, args.random_init).to(device), len(batches),
                                   args.schedule) for name in names}
    times: dict[str, list[float]] = {name: [] for name in [*names, "seven_scores"]}
    dense_weights = list(select_prunable(variants["dense"][0], PRUNABLE, []).values())
    seven_state = SevenState()  # as seven_dyn keeps it
    if device.type == "cuda":  # an untimed pass, so that no variant pays the kernel choice of a new shape
        for step, batch in enumerate(batches):
            for model, sparsifier, optimizer in variants.values():
                training_step(model, batch, optimizer, sparsifier, step, args.precision)
    for step, batch in enumerate(batches):  # round robin: every variant does step i before i + 1
        for name, (model, sparsifier, optimizer) in variants.items():
            start = time.perf_counter()
            training_step(model, batch, optimizer, sparsifier, step, args.precision)
            synchronize(device)
            if step > 0:  # the first step warms caches up
                times[name].append((time.perf_counter() - start) * 1000)
            if name == "dense":  # its gradients are still there: feed them to SEVEN's statistics
                start = time.perf_counter()
                seven_state.update(dense_weights, [w.grad for w in dense_weights])
                synchronize(device)
                if step > 0:
                    times["seven_scores"].append((time.perf_counter() - start) * 1000)
    dense = statistics.median(times["dense"])

    def paired(name: str) -> tuple[float, float, float]:
        """Quartiles of the step-by-step ratio to the dense step on the same batch: a pairing that
        cancels the batches' different lengths and the machine's slow drifts."""
        ratios = [t / d for t, d in zip(times[name], times["dense"])]
        return tuple(statistics.quantiles(ratios, n=4)) if len(ratios) > 1 else (ratios[0],) * 3

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {args.threads} thread(s)"
    weights = "random weights" if args.random_init else "pretrained weights"
    print(f"{args.model.name} ({weights}), batch 32, {args.steps} steps, {where}, {args.precision}, "
          f"{args.schedule} schedules")
    print(f"{'variant':<12} {'ms/step':>9} {'vs dense':>9}   step-by-step ratio: median (quartiles)")
    for name in names:
        median = statistics.median(times[name])
        low, middle, high = paired(name)
        print(f"{name:<12} {median:9.1f} {median / dense:8.2f}x   {middle:.3f}x ({low:.3f}-{high:.3f})")
    accumulation = statistics.median(times["seven_scores"])
    print(f"SEVEN score accumulation alone: {accumulation:.1f} ms, +{accumulation / dense:.1%} of a dense step")
    setting = f"{args.model.name} {args.precision} {where}, {args.schedule} schedules"
    record(args.record, f"SEVEN score accumulation vs a dense step ({setting})", accumulation, "ms", peer=dense,
           ratio=accumulation / dense, target="<= +10% of a dense step", met=accumulation / dense <= 0.10)
    for name, target, limit in (("fixed_mask", "masked step / dense <= 1.05", 1.05), ("pst", "pst step / dense <= 1.00", 1.0)):
        if name in times and times[name]:
            ratio = paired(name)[1]
            record(args.record, f"{name} step vs a dense step ({setting}, median step-by-step ratio)",
                   statistics.median(times[name]), "ms", peer=dense, ratio=ratio, target=target, met=ratio <= limit)


if __name__ == "__main__":
    main()
