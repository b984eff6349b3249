"""Fine-tuning with a fixed mask: pruned weights and their optimizer state stay exactly zero."""

from __future__ import annotations

import contextlib
import csv
import logging

import pytest
import torch

from sparselab import modeling
from sparselab.batches import Encoded
from sparselab.finetune import Recipe, lr_factor, train
from sparselab.masks import Structure, build_masks
from sparselab.prunable import select_prunable
from sparselab.sparsifiers import FixedMask, Target


def toy_data(n=24, length=10, seed=0) -> Encoded:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 120, (n, length), generator=g)
    labels = (ids[:, 1] > 60).long()  # learnable from one token
    return Encoded(ids.tolist(), [[0] * length] * n, labels.tolist(), pad_token_id=0, regression=False)


def fixed_mask(model, prunable, sparsity=0.6) -> FixedMask:
    """The global magnitude mask of `model`, held fixed, attached to it."""
    chosen = select_prunable(model, prunable["include"], prunable["exclude"])
    masks = build_masks({n: p.detach().abs() for n, p in chosen.items()}, sparsity, "global", Structure())
    sparsifier = FixedMask(masks)
    sparsifier.attach(model, chosen, Target(sparsity, "global", Structure()))
    return sparsifier


def test_pruned_weights_and_adam_state_stay_zero(tiny_bert, bert_prunable, tmp_path):
    sparsifier = fixed_mask(tiny_bert, bert_prunable)
    masks = sparsifier.masks
    recipe = Recipe(epochs=2, batch_size=8, learning_rate=1e-2, weight_decay=0.1)
    captured = {}
    real_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        captured["optimizer"] = self
        return out

    torch.optim.AdamW.step = spy
    try:
        result = train(tiny_bert, toy_data(), recipe, seed=0, device=torch.device("cpu"), log_path=tmp_path / "log.csv", sparsifier=sparsifier)
    finally:
        torch.optim.AdamW.step = real_step
    params = dict(tiny_bert.named_parameters())
    optimizer = captured["optimizer"]
    for name, mask in masks.items():
        weight = params[name]
        assert (weight[~mask] == 0).all(), f"{name}: a pruned weight moved"
        assert (weight[mask] != 0).all(), f"{name}: a kept weight is zero"
        state = optimizer.state[weight]
        assert (state["exp_avg"][~mask] == 0).all() and (state["exp_avg_sq"][~mask] == 0).all()
    assert result.steps == 6
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert result.trainable_params == result.total_params - pruned
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))


def test_training_learns_and_is_deterministic(tiny_bert, bert_prunable, tmp_path):
    recipe = Recipe(epochs=3, batch_size=8, learning_rate=5e-3)
    state = {k: v.clone() for k, v in tiny_bert.state_dict().items()}
    first = train(tiny_bert, toy_data(), recipe, 0, torch.device("cpu"), tmp_path / "a.csv")
    weights_first = {k: v.clone() for k, v in tiny_bert.state_dict().items()}
    tiny_bert.load_state_dict(state)
    second = train(tiny_bert, toy_data(), recipe, 0, torch.device("cpu"), tmp_path / "b.csv")
    assert first.final_train_loss == second.final_train_loss
    assert all(torch.equal(weights_first[k], v) for k, v in tiny_bert.state_dict().items())
    losses = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "a.csv"))]
    assert sum(losses[-3:]) < sum(losses[:3])


@pytest.mark.parametrize(
    "schedule, warmup, step, expected",
    [("linear", 0.0, 0, 1.0), ("linear", 0.0, 5, 0.5), ("constant", 0.0, 9, 1.0), ("linear", 0.2, 0, 0.5), ("linear", 0.2, 2, 1.0)],
)
def test_lr_factor(schedule, warmup, step, expected):
    recipe = Recipe(epochs=1, batch_size=1, learning_rate=1.0, lr_schedule=schedule, warmup_ratio=warmup)
    assert lr_factor(step, 10, recipe) == pytest.approx(expected)


@pytest.fixture
def cpu_bf16_support(monkeypatch):
    """A function that makes this CPU look as if it had bf16 arithmetic or not, for the process's
    check (cached) from then on until the test ends."""
    def pretend(has_bf16: bool) -> None:
        monkeypatch.setattr(modeling, "_cpu_has_bf16", lambda: has_bf16)
        modeling._bf16_unsupported.cache_clear()

    yield pretend
    modeling._bf16_unsupported.cache_clear()


@pytest.fixture
def cpu_bf16(cpu_bf16_support):
    """bf16 autocast on this CPU whether or not it has bf16 arithmetic (then only slower)."""
    cpu_bf16_support(True)


def test_bf16_autocast_keeps_masks_exact(tiny_bert, bert_prunable, tmp_path, cpu_bf16):
    sparsifier = fixed_mask(tiny_bert, bert_prunable)
    recipe = Recipe(epochs=2, batch_size=8, learning_rate=1e-2, precision="bf16")
    assert isinstance(modeling.autocast(torch.device("cpu"), "bf16"), torch.autocast)
    train(tiny_bert, toy_data(), recipe, 0, torch.device("cpu"), tmp_path / "log.csv", sparsifier)
    params = dict(tiny_bert.named_parameters())
    for name, mask in sparsifier.masks.items():
        assert params[name].dtype == torch.float32
        assert (params[name][~mask] == 0).all()


def test_gpu_job_on_a_node_without_cuda_runs_on_cpu(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="sparselab.modeling"):
        assert modeling.pick_device() == torch.device("cpu")
    assert "CUDA is not available: running on CPU" in caplog.text


def test_cuda_present_but_unusable_falls_back_to_cpu(monkeypatch, caplog):
    """A driver that is there but fails (a busy or broken device) must not fail the job."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_zeros = torch.zeros

    def zeros(*args, device=None, **kwargs):
        if device == "cuda":
            raise RuntimeError("CUDA error: no CUDA-capable device is detected\nmore detail")
        return real_zeros(*args, device=device, **kwargs)

    monkeypatch.setattr(torch, "zeros", zeros)
    with caplog.at_level(logging.WARNING, logger="sparselab.modeling"):
        assert modeling.pick_device() == torch.device("cpu")
    assert "CUDA is present but not usable (CUDA error: no CUDA-capable device is detected): running on CPU" \
        in caplog.text


def test_bf16_on_a_gpu_without_it_computes_in_fp32(monkeypatch, caplog, cpu_bf16):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    with caplog.at_level(logging.WARNING, logger="sparselab.modeling"):
        assert isinstance(modeling.autocast(torch.device("cuda"), "bf16"), contextlib.nullcontext)
    assert "this GPU has no bf16 arithmetic" in caplog.text
    assert isinstance(modeling.autocast(torch.device("cpu"), "bf16"), torch.autocast)


def test_bf16_on_a_cpu_without_it_computes_in_fp32(caplog, cpu_bf16_support):
    cpu_bf16_support(False)
    with caplog.at_level(logging.WARNING, logger="sparselab.modeling"):
        assert isinstance(modeling.autocast(torch.device("cpu"), "bf16"), contextlib.nullcontext)
    assert "this CPU has no bf16 arithmetic" in caplog.text
    assert isinstance(modeling.autocast(torch.device("cpu"), "fp32"), contextlib.nullcontext)
