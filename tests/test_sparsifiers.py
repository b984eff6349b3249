"""Sparsifiers: every registered one keeps its masks exact and its checkpoint loads back; gmp by hand."""

from __future__ import annotations

import pytest
import torch
from test_finetune import toy_data

from sparselab.finetune import Recipe, train
from sparselab.io import save_compact
from sparselab.masks import Structure, keep_count
from sparselab.modeling import CHECKPOINT_FILE, load_finetuned
from sparselab.prunable import select_prunable
from sparselab.sparsifiers import SPARSIFIERS, Target
from sparselab.sparsifiers.gmp import GradualMagnitude
from sparselab.sparsifiers.seven_dyn import SevenDynamic


def attached(name, model, prunable, sparsity=0.6, allocation=None, **hyper):
    sparsifier_class = SPARSIFIERS.get(name)
    sparsifier = sparsifier_class(**hyper)
    allocation = allocation or (sparsifier_class.allowed_allocations or ("global",))[0]
    chosen = select_prunable(model, prunable["include"], prunable["exclude"])
    sparsifier.attach(model, chosen, Target(sparsity, allocation, Structure()))
    return sparsifier


# Hyper-parameters that fit the 12-step toy runs below (defaults are sized for real runs).
TOY_HYPER = {"gmp": {"frequency": 2}, "seven_dyn": {"window_start": 2, "window_length": 6},
             "acdc": {"warmup": 0.1, "phase": 0.2, "final": 0.3}}


@pytest.mark.parametrize("name", SPARSIFIERS.names())
def test_every_sparsifier_reaches_its_target_exactly(name, tiny_bert, bert_prunable, tmp_path):
    sparsifier = attached(name, tiny_bert, bert_prunable, sparsity=0.6, **TOY_HYPER.get(name, {}))
    train(tiny_bert, toy_data(n=48), Recipe(epochs=2, batch_size=8, learning_rate=1e-3), 0,
          torch.device("cpu"), tmp_path / "log.csv", sparsifier)
    weights = dict(tiny_bert.named_parameters())
    total = sum(m.numel() for m in sparsifier.masks.values())
    kept = sum(int(m.sum()) for m in sparsifier.masks.values())
    if sparsifier.target.allocation == "global":
        assert kept == keep_count(total, 0.6)
    else:
        for mask in sparsifier.masks.values():
            assert int(mask.sum()) == keep_count(mask.numel(), 0.6)
    for mask_name, mask in sparsifier.masks.items():
        # +0.0 exactly (no -0.0 left by a product with the mask): the bits of every pruned weight are 0
        assert (weights[mask_name].detach()[~mask].view(torch.int32) == 0).all(), f"{name}: {mask_name}"
    assert 0 < sparsifier.trainable_count() <= sum(p.numel() for p in tiny_bert.parameters())
    # the compact checkpoint of the run loads back bit for bit
    tiny_bert.config.to_json_file(str(tmp_path / "config.json"))
    state = {key: value.detach().clone() for key, value in tiny_bert.state_dict().items()}
    save_compact(tmp_path / CHECKPOINT_FILE, state, sparsifier.masks)
    loaded = load_finetuned(tmp_path).state_dict()
    assert sorted(loaded) == sorted(state)
    for key, value in state.items():
        bits = (lambda t: t.view(torch.int32)) if value.is_floating_point() else (lambda t: t)
        assert torch.equal(bits(loaded[key]), bits(value)), f"{name}: {key} changed in the checkpoint round trip"


def test_gmp_update_steps_and_schedule(tiny_bert, bert_prunable):
    sparsifier = attached("gmp", tiny_bert, bert_prunable, sparsity=0.8, start=0.25, end=0.75, frequency=10)
    sparsifier.begin(100)
    assert sparsifier.update_steps() == [25, 35, 45, 55, 65, 75]
    assert sparsifier.scheduled_sparsity(25) == 0.0
    assert sparsifier.scheduled_sparsity(50) == pytest.approx(0.8 - 0.8 * 0.5**3)
    assert sparsifier.scheduled_sparsity(75) == pytest.approx(0.8)


def test_gmp_reaches_the_end_whatever_the_frequency(tiny_bert, bert_prunable):
    sparsifier = attached("gmp", tiny_bert, bert_prunable, frequency=1000)
    sparsifier.begin(40)
    assert sparsifier.update_steps() == [10, 30]


def test_gmp_masks_only_shrink(tiny_bert, bert_prunable, tmp_path, monkeypatch):
    sparsifier = attached("gmp", tiny_bert, bert_prunable, sparsity=0.7, start=0.0, end=0.8, frequency=2)
    history = record_masks(GradualMagnitude, monkeypatch)
    train(tiny_bert, toy_data(n=48), Recipe(epochs=2, batch_size=8, learning_rate=1e-2), 0,
          torch.device("cpu"), tmp_path / "log.csv", sparsifier)
    for before, after in zip(history, history[1:]):
        assert all(bool((after[k] <= before[k]).all()) for k in before), "a pruned weight grew back"
    assert len({sum(int(m.sum()) for m in masks.values()) for masks in history}) > 2


def record_masks(cls, monkeypatch):
    """Masks after every optimizer step of sparsifiers of class `cls`."""
    history = []
    real_after_step = cls.after_step

    def record(self, step):
        real_after_step(self, step)
        history.append({k: v.clone() for k, v in self.masks.items()})

    monkeypatch.setattr(cls, "after_step", record)
    return history


def test_seven_dyn_follows_keep_schedule_without_regrowth_then_freezes(tiny_bert, bert_prunable, tmp_path, monkeypatch):
    sparsifier = attached("seven_dyn", tiny_bert, bert_prunable, sparsity=0.6, window_start=2, window_length=4)
    history = record_masks(SevenDynamic, monkeypatch)
    train(tiny_bert, toy_data(n=48), Recipe(epochs=2, batch_size=8, learning_rate=1e-3), 0,
          torch.device("cpu"), tmp_path / "log.csv", sparsifier)
    total = sum(m.numel() for m in sparsifier.masks.values())
    kept = [sum(int(m.sum()) for m in masks.values()) for masks in history]
    assert kept[:2] == [total, total]  # before the window
    for t in range(4):  # keep(t) = k + (1 - k)(1 - (t + 1)/T)^3 inside the window
        expected = keep_count(total, 1.0 - (0.4 + 0.6 * (1 - (t + 1) / 4) ** 3))
        assert kept[2 + t] == expected
    assert kept[6:] == [keep_count(total, 0.6)] * (len(kept) - 6)  # frozen after the window
    for before, after in zip(history, history[1:]):
        assert all(bool((after[k] <= before[k]).all()) for k in before)


def test_seven_dyn_window_longer_than_training_is_an_error(tiny_bert, bert_prunable, tmp_path):
    sparsifier = attached("seven_dyn", tiny_bert, bert_prunable, sparsity=0.6, window_start=4, window_length=10)
    with pytest.raises(ValueError, match=r"ends at step 14, after the run's 12 optimizer steps"):
        train(tiny_bert, toy_data(n=48), Recipe(epochs=2, batch_size=8, learning_rate=1e-3), 0,
              torch.device("cpu"), tmp_path / "log.csv", sparsifier)


def test_seven_dyn_official_presets():
    sparsifier = SevenDynamic(preset="sst2")
    assert sparsifier.window() == (1000, 4000)
    with pytest.raises(ValueError, match="preset 'sst-2' is unknown"):
        SevenDynamic(preset="sst-2")
