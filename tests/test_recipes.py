"""Recipes: learning-rate schedules, budgets, distillation, AC/DC and the oBERT preset, by hand."""

from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn.functional as F
from test_finetune import toy_data
from test_sparsifiers import attached, record_masks

from sparselab.distillation import Distillation, DistillationLoss, distillation_loss, teacher_outputs
from sparselab.finetune import RECIPE_PRESETS, Recipe, lr_factor, recipe_from_config, train
from sparselab.masks import keep_count
from sparselab.sparsifiers import SPARSIFIERS
from sparselab.sparsifiers.acdc import AlternatingSparseDense

CPU = torch.device("cpu")


@pytest.mark.parametrize(("schedule", "final", "step", "expected"), [
    ("linear", 0.0, 0, 1.0), ("linear", 0.0, 5, 0.5), ("linear", 0.1, 5, 0.55), ("linear", 0.1, 10, 0.1),
    ("constant", 0.1, 7, 1.0),
    # restarts at 4 and 8 of 12: cycles [0, 4), [4, 8), [8, 12), each from 1 down towards final
    ("cyclic", 0.0, 0, 1.0), ("cyclic", 0.0, 2, 0.5), ("cyclic", 0.0, 4, 1.0), ("cyclic", 0.0, 7, 0.25),
    ("cyclic", 0.5, 10, 0.75), ("cyclic", 0.5, 11, 0.625),
])
def test_lr_schedule_values(schedule, final, step, expected):
    recipe = Recipe(epochs=1, batch_size=1, learning_rate=1.0, lr_schedule=schedule, final_lr_ratio=final)
    total = 10 if schedule == "linear" else 12
    assert lr_factor(step, total, recipe, restarts=[4, 8]) == pytest.approx(expected)


def test_cyclic_warm_up_comes_first_and_hides_earlier_restarts():
    recipe = Recipe(epochs=1, batch_size=1, learning_rate=1.0, lr_schedule="cyclic", warmup_ratio=0.25)
    # warm-up over steps 0..2 of 12; the restart at 2 falls inside it; the next cycle starts at 6
    assert [lr_factor(s, 12, recipe, [2, 6]) for s in (0, 2, 3, 4, 6, 9)] == \
        pytest.approx([1 / 3, 1.0, 1.0, 2 / 3, 1.0, 0.5])


def test_epochs_multiplier_scales_the_steps_and_stretches_the_schedules(tiny_bert, bert_prunable, tmp_path):
    sparsifier = attached("gmp", tiny_bert, bert_prunable, sparsity=0.5, start=0.25, end=0.75, frequency=3)
    recipe = Recipe(epochs=1, batch_size=8, learning_rate=1e-3, epochs_multiplier=4)  # 6 steps x 4
    result = train(tiny_bert, toy_data(n=48), recipe, 0, CPU, tmp_path / "log.csv", sparsifier)
    assert result.steps == 24
    assert sparsifier.update_steps() == [6, 9, 12, 15, 18]


def test_cyclic_learning_rate_restarts_at_gmp_updates(tiny_bert, bert_prunable, tmp_path):
    sparsifier = attached("gmp", tiny_bert, bert_prunable, sparsity=0.5, start=0.25, end=0.75, frequency=3)
    recipe = Recipe(epochs=2, batch_size=8, learning_rate=1.0, lr_schedule="cyclic", final_lr_ratio=0.1)
    train(tiny_bert, toy_data(n=48), recipe, 0, CPU, tmp_path / "log.csv", sparsifier)
    # the column holds the rate of the next step; gmp prunes after steps 3, 6 and 9 of 12
    rates = [float(row["learning_rate"]) for row in csv.DictReader(open(tmp_path / "log.csv"))]
    assert sparsifier.pruning_steps() == [3, 6, 9]
    assert [rates[i - 1] for i in (3, 6, 9)] == [1.0, 1.0, 1.0]
    assert rates[3] == pytest.approx(1 - 0.9 / 3) and rates[10] == pytest.approx(1 - 0.9 * 2 / 3)


@pytest.mark.parametrize("name", ["pst", "seven_dyn"])
def test_cyclic_learning_rate_needs_pruning_steps(name, tiny_bert, bert_prunable, tmp_path):
    hyper = {"seven_dyn": {"window_start": 2, "window_length": 4}}.get(name, {})
    sparsifier = attached(name, tiny_bert, bert_prunable, sparsity=0.5, **hyper)
    recipe = Recipe(epochs=2, batch_size=8, learning_rate=1e-3, lr_schedule="cyclic")
    with pytest.raises(ValueError, match="changes its masks at every step"):
        train(tiny_bert, toy_data(n=48), recipe, 0, CPU, tmp_path / "log.csv", sparsifier)


def test_distillation_loss_by_hand():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
    teacher = torch.tensor([[1.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
    labels = torch.tensor([0, 2])
    T = 2.0

    def softmax(row):
        e = [math.exp(v / T) for v in row]
        return [v / sum(e) for v in e]

    kl = sum(sum(p * math.log(p / q) for p, q in zip(softmax(t), softmax(s)))
             for s, t in zip(student.tolist(), teacher.tolist())) / 2
    ce = sum(-math.log(math.exp(s[y]) / sum(math.exp(v) for v in s))
             for s, y in zip(student.tolist(), labels.tolist())) / 2
    for hardness in (1.0, 0.5, 0.0):
        loss, task = distillation_loss(student, teacher, labels, T, hardness, regression=False)
        assert loss.item() == pytest.approx(hardness * T * T * kl + (1 - hardness) * ce, rel=1e-6)
        assert task.item() == pytest.approx(ce, rel=1e-6)


def test_distillation_loss_for_regression_is_mean_squared():
    student, teacher, labels = torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [2.0]]), torch.tensor([0.0, 4.0])
    loss, task = distillation_loss(student, teacher, labels, 2.0, 0.25, regression=True)
    assert task.item() == pytest.approx(1.0)  # ((1 - 0)^2 + (3 - 4)^2) / 2
    assert loss.item() == pytest.approx(0.25 * 1.0 + 0.75 * 1.0)
    loss, _ = distillation_loss(student, teacher, labels, 2.0, 1.0, regression=True)
    assert loss.item() == pytest.approx(F.mse_loss(student, teacher).item())


def test_teacher_outputs_are_its_logits_in_example_order(tiny_bert):
    """Batches run shortest first; every row is still its own example's logits, unpadded."""
    data = toy_data(n=20)
    data.input_ids = [ids[: 3 + (7 * i) % 8] for i, ids in enumerate(data.input_ids)]  # lengths 3..10, mixed
    data.token_type_ids = [[0] * len(ids) for ids in data.input_ids]
    logits = teacher_outputs(tiny_bert, data, batch_size=8, device=CPU, precision="fp32")
    assert logits.shape == (20, 2) and logits.dtype == torch.float32
    with torch.no_grad():
        alone = torch.cat([tiny_bert(input_ids=torch.tensor([ids])).logits for ids in data.input_ids])
    assert torch.allclose(logits, alone, atol=1e-5)


def test_hardness_zero_trains_as_on_the_labels(tiny_bert, bert_prunable, tmp_path):
    """With hardness 0 the teacher's logits play no part: the run follows plain training."""
    state = {k: v.clone() for k, v in tiny_bert.state_dict().items()}
    data = toy_data(n=48)
    recipe = Recipe(epochs=2, batch_size=8, learning_rate=1e-2)
    plain = train(tiny_bert, data, recipe, 0, CPU, tmp_path / "plain.csv")
    plain_weights = {k: v.clone() for k, v in tiny_bert.state_dict().items()}
    tiny_bert.load_state_dict(state)
    data.teacher_logits = torch.randn(len(data), 2)
    loss_fn = DistillationLoss(Distillation("standard", hardness=0.0), regression=False)
    distilled = train(tiny_bert, data, recipe, 0, CPU, tmp_path / "kd.csv", loss_fn=loss_fn)
    assert distilled.final_task_loss == pytest.approx(plain.final_task_loss, rel=1e-5)
    assert distilled.final_train_loss == pytest.approx(distilled.final_task_loss)
    for key, value in tiny_bert.state_dict().items():
        assert torch.allclose(value, plain_weights[key], atol=1e-5), key


def test_distillation_pulls_the_student_towards_the_teacher(tiny_bert, tmp_path):
    data = toy_data(n=48)
    data.teacher_logits = torch.tensor([[3.0, -3.0]]).repeat(len(data), 1)  # a teacher that always says 0
    loss_fn = DistillationLoss(Distillation("standard", temperature=1.0, hardness=1.0), regression=False)
    result = train(tiny_bert, data, Recipe(epochs=4, batch_size=8, learning_rate=1e-2), 0, CPU, tmp_path / "log.csv",
                   loss_fn=loss_fn)
    with torch.no_grad():
        predictions = tiny_bert.eval()(input_ids=torch.tensor(data.input_ids)).logits.argmax(-1)
    assert (predictions == 0).all()
    assert result.final_train_loss < 0.05 < result.final_task_loss


@pytest.mark.parametrize("name", SPARSIFIERS.names())
def test_every_sparsifier_can_have_a_teacher(name, tiny_bert, bert_prunable, tmp_path):
    hyper = {"gmp": {"frequency": 2}, "seven_dyn": {"window_start": 2, "window_length": 6},
             "acdc": {"warmup": 0.1, "phase": 0.2, "final": 0.3}}.get(name, {})
    sparsifier = attached(name, tiny_bert, bert_prunable, sparsity=0.6, **hyper)
    data = toy_data(n=48)
    data.teacher_logits = torch.randn(len(data), 2, generator=torch.Generator().manual_seed(1))
    loss_fn = DistillationLoss(Distillation("standard"), regression=False)
    train(tiny_bert, data, Recipe(epochs=2, batch_size=8, learning_rate=1e-3), 0, CPU, tmp_path / "log.csv",
          sparsifier, loss_fn=loss_fn)
    weights = dict(tiny_bert.named_parameters())
    total = sum(m.numel() for m in sparsifier.masks.values())
    assert sum(int(m.sum()) for m in sparsifier.masks.values()) == keep_count(total, 0.6) or \
        all(int(m.sum()) == keep_count(m.numel(), 0.6) for m in sparsifier.masks.values())
    for mask_name, mask in sparsifier.masks.items():
        assert (weights[mask_name].detach()[~mask] == 0).all()


def test_recipe_from_config_builds_the_distillation():
    recipe = recipe_from_config({"epochs": 1, "batch_size": 8, "learning_rate": 1e-3,
                                 "distillation": {"teacher_recipe": "standard", "teacher_seed": 0,
                                                  "temperature": 2.0, "hardness": 1.0}})
    assert recipe.distillation == Distillation("standard", 0, 2.0, 1.0)
    assert recipe.identity()["distillation"]["teacher_recipe"] == "standard"
    assert "checkpoint_every" not in recipe.identity()


def test_presets_are_methods_md_recipes():
    gradual, transfer = RECIPE_PRESETS["obert_gradual"], RECIPE_PRESETS["sparse_transfer"]
    assert (gradual["epochs"], gradual["learning_rate"], gradual["lr_schedule"], gradual["final_lr_ratio"]) == \
        (30, 5.0e-5, "cyclic", 0.1)
    assert (transfer["epochs"], transfer["learning_rate"], transfer["batch_size"], transfer["max_length"]) == \
        (8, 1.5e-4, 32, 128)
    assert gradual["distillation"] == transfer["distillation"] == {"temperature": 2.0, "hardness": 1.0}


def test_gmp_obert_preset_prunes_at_epochs_2_6_to_26(tiny_bert, bert_prunable):
    sparsifier = attached("gmp", tiny_bert, bert_prunable, sparsity=0.9, preset="obert")
    sparsifier.begin(30 * 10)  # 30 epochs of 10 steps
    assert sparsifier.update_steps() == [20, 60, 100, 140, 180, 220, 260]
    assert sparsifier.scheduled_sparsity(20) == pytest.approx(0.7)
    assert sparsifier.scheduled_sparsity(260) == pytest.approx(0.9)
    assert sparsifier.scheduled_sparsity(140) == pytest.approx(0.9 - 0.2 * 0.5 ** 3)


def test_gmp_interval_is_a_fraction_of_training(tiny_bert, bert_prunable):
    sparsifier = attached("gmp", tiny_bert, bert_prunable, start=0.1, end=0.5, interval=0.1, frequency=1)
    sparsifier.begin(200)
    assert sparsifier.update_steps() == [20, 40, 60, 80, 100]


def test_acdc_phases_by_hand():
    phases = AlternatingSparseDense(warmup=0.1, phase=0.2, final=0.2).phases(20)
    # dense 0-1, sparse 2-5, dense 6-9, sparse 10-13, dense 14-15, sparse 16-19 (final)
    assert phases == [(0, False), (2, True), (6, False), (10, True), (14, False), (16, True)]
    default = AlternatingSparseDense().phases(100)
    assert default[:3] == [(0, False), (10, True), (15, False)] and default[-1] == (80, True)
    assert sum(1 for _, sparse in default if sparse) == 8  # 10-15, 20-25, ..., 80-100 (the last merged)
    assert AlternatingSparseDense(warmup=0.0, phase=0.5, final=0.5).phases(10) == [(0, True)]


def test_acdc_alternates_exact_masks_and_dense_phases(tiny_bert, bert_prunable, tmp_path, monkeypatch):
    sparsifier = attached("acdc", tiny_bert, bert_prunable, sparsity=0.6, warmup=0.1, phase=0.2, final=0.2)
    history = record_masks(AlternatingSparseDense, monkeypatch)
    weights = dict(tiny_bert.named_parameters())
    zero_counts = []
    real_after_step = AlternatingSparseDense.after_step

    def count_after(self, step):  # record_masks wraps after_step already; count the zeros after it
        real_after_step(self, step)
        zero_counts.append(sum(int((weights[n].detach() == 0).sum()) for n in self.prunable))

    monkeypatch.setattr(AlternatingSparseDense, "after_step", count_after)
    train(tiny_bert, toy_data(n=80), Recipe(epochs=2, batch_size=8, learning_rate=1e-2), 0, CPU,
          tmp_path / "log.csv", sparsifier)  # 20 steps
    total = sum(m.numel() for m in sparsifier.masks.values())
    kept = [sum(int(m.sum()) for m in masks.values()) for masks in history]
    sparse_steps = {1, 2, 3, 4, 9, 10, 11, 12, 15, 16, 17, 18, 19}  # masks in force for the next step
    assert [k == keep_count(total, 0.6) for k in kept] == [i in sparse_steps for i in range(20)]
    assert all(k == total for i, k in enumerate(kept) if i not in sparse_steps)
    pruned = total - keep_count(total, 0.6)
    assert zero_counts[2] >= pruned and zero_counts[7] < pruned // 10  # dense phases regrow the weights
    assert sparsifier.pruning_steps() == [2, 10, 16]
    assert zero_counts[-1] >= pruned


def test_acdc_phase_shorter_than_a_step_is_an_error(tiny_bert, bert_prunable, tmp_path):
    sparsifier = attached("acdc", tiny_bert, bert_prunable)  # 5% phases of a 12-step run
    with pytest.raises(ValueError, match="shorter than one of the run's 12 optimizer steps"):
        train(tiny_bert, toy_data(n=48), Recipe(epochs=2, batch_size=8, learning_rate=1e-3), 0, CPU,
              tmp_path / "log.csv", sparsifier)
