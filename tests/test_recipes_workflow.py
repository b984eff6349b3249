"""Recipes in the real workflow: budgets, distillation from one shared teacher job, cyclic learning
rates with gmp and AC/DC, and the under-training table and figure."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from tiny_workflow import planned_jobs, snakemake, tiny_params, write_workdir

pytestmark = pytest.mark.workflow

TEACHER = "tiny/toy/dense/quick/seed0"


def recipe_params(root: Path) -> dict:
    params = tiny_params(root)
    params["methods"] = {
        "magnitude": params["methods"]["magnitude"],
        "gmp": params["methods"]["gmp"],
        "acdc": {"sparsifier": "acdc", "warmup": 0.1, "phase": 0.2, "final": 0.3},
    }
    params["recipes"].update({  # quick: 10 optimizer steps
        "quick_x2": {"base": "quick", "epochs_multiplier": 2},
        "quick_kd": {"base": "quick", "distillation": {"teacher_recipe": "quick"}},
        "quick_kd_x2": {"base": "quick_kd", "epochs_multiplier": 2},
        "cyclic_kd": {"base": "quick_kd", "lr_schedule": "cyclic", "final_lr_ratio": 0.1},
    })
    params["studies"] = {
        "recipes": {"figure": "recipes", "models": ["tiny"], "tasks": ["toy"], "methods": ["magnitude"],
                    "sparsities": [0.0, 0.5, 0.8], "recipes": ["quick", "quick_x2", "quick_kd", "quick_kd_x2"]},
        "schedules": {"figure": "method_comparison", "models": ["tiny"], "tasks": ["toy"],
                      "methods": ["gmp", "acdc"], "sparsities": [0.0, 0.5], "recipes": ["cyclic_kd"]},
    }
    params.pop("mask_analysis")
    return params


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("recipes")
    write_workdir(root, recipe_params(root))
    return root


@pytest.fixture(scope="module")
def finished(workdir) -> Path:
    snakemake(workdir)
    return workdir


def test_one_teacher_job_serves_every_student(workdir):
    jobs = planned_jobs(workdir)
    finetunes = [w for rule, w in jobs if rule == "finetune"]
    assert finetunes.count(f"run={TEACHER}") == 1
    # 4 recipes x (dense + 2 sparsities) + cyclic_kd x (dense + gmp + acdc); the teacher is quick's dense run
    assert len(finetunes) == 4 * 3 + 3
    # a distilled student alone needs the teacher: its own fine-tune and the teacher's
    student = "results/finetune/tiny/toy/magnitude/global-unstructured/s0.8/quick_kd_x2/seed0/train_metrics.json"
    alone = [w for rule, w in planned_jobs(workdir, student) if rule == "finetune"]
    assert sorted(alone) == sorted([f"run={TEACHER}", "run=tiny/toy/magnitude/global-unstructured/s0.8/quick_kd_x2/seed0"])


def test_budgets_distillation_and_the_recipes_table(finished):
    table = pd.read_csv(finished / "results/tables/recipes.csv")
    finetuned = table[(table["stage"] == "finetuned") & table["headline"]]
    assert sorted(set(zip(finetuned["recipe"], finetuned["budget"], finetuned["distilled"]))) == [
        ("quick", 1, False), ("quick_kd", 1, True), ("quick_kd_x2", 2, True), ("quick_x2", 2, False)]
    assert set(finetuned["sparsity"]) == {0.0, 0.5, 0.8}
    assert finetuned["final_task_loss"].notna().all() and finetuned["dense_task_loss"].notna().all()
    for suffix in ("png", "pdf"):
        assert (finished / f"results/figures/recipes.{suffix}").stat().st_size > 1000
    run = finished / "results/finetune/tiny/toy/magnitude/global-unstructured/s0.8"
    plain = json.loads((run / "quick_x2/seed0/train_metrics.json").read_text())
    distilled = json.loads((run / "quick_kd_x2/seed0/train_metrics.json").read_text())
    assert plain["steps"] == distilled["steps"] == 20
    assert plain["final_train_loss"] == plain["final_task_loss"]
    assert distilled["final_train_loss"] != distilled["final_task_loss"]  # the objective is the KL term
    log = (finished / "results/logs/finetune/tiny/toy/magnitude/global-unstructured/s0.8/quick_kd_x2/seed0.log").read_text()
    assert re.search(rf"teacher results/finetune/{TEACHER}: logits of 80 training examples", log)


def test_cyclic_rate_restarts_at_the_pruning_steps_of_gmp_and_acdc(finished):
    for method, restarts in (("gmp", [1, 3, 5, 6]), ("acdc", [1, 5])):
        log = pd.read_csv(finished / f"results/finetune/tiny/toy/{method}/global-unstructured/s0.5/cyclic_kd/seed0/train_log.csv")
        rates = log["learning_rate"].tolist()  # row i holds the rate of step i + 1 (0-based)
        peaks = [i + 1 for i, rate in enumerate(rates[:-1]) if rate == pytest.approx(1.0e-3)]
        assert peaks == restarts, method
        record = json.loads((finished / f"results/eval/tiny/toy/{method}/global-unstructured/s0.5/cyclic_kd/seed0/"
                             "finetuned.json").read_text())
        assert record["achieved_sparsity"] == pytest.approx(0.5, abs=1e-3)
