"""The partial-rerun guarantee on the tiny workflow: after a complete run, one edit of params.yaml
makes the dry run plan exactly the jobs whose inputs or params the edit changes, and their
downstream jobs, nothing else. One complete run (one-shot magnitude and wanda, during-training gmp,
sparsities 0 and 0.5), then a copy of it per edit (copytree keeps the .snakemake metadata).
test_workflow.py covers one sparsity added on the larger tiny config."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from tiny_workflow import planned_jobs, snakemake, tiny_params, write_workdir

pytestmark = pytest.mark.workflow

ONE_SHOT = {"magnitude": "global", "wanda": "row"}  # method: its native allocation
DURING_TRAINING = {"gmp": "global"}
DENSE = "tiny/toy/dense/quick/seed0"
SUMMARY = {("aggregate", ""), ("study_table", "study=compare"), ("study_figure", "study=compare"), ("all", "")}
MASKS = {("mask_analysis", "")}  # reruns when a checkpoint it reads changes, not for evaluation settings


def base_params(root: Path) -> dict:
    params = tiny_params(root)
    methods = [*ONE_SHOT, *DURING_TRAINING]
    params["methods"] = {name: params["methods"][name] for name in methods}
    params["studies"] = {"compare": {**params["studies"]["compare"], "methods": methods}}  # sparsities 0, 0.5
    params["mask_analysis"] = {"studies": ["compare"]}
    return params


def run_key(method: str, sparsity: float) -> str:
    allocation = {**ONE_SHOT, **DURING_TRAINING}[method]
    return f"tiny/toy/{method}/{allocation}-unstructured/s{sparsity:g}/quick/seed0"


def finetuned(run: str) -> set[tuple[str, str]]:
    """The fine-tune of a run and its evaluation."""
    return {("finetune", f"run={run}"), ("evaluate_finetuned", f"run={run}")}


def chain(method: str, sparsity: float) -> set[tuple[str, str]]:
    """Every job of one sparse run after scoring: mask, fine-tune, evaluations."""
    run = run_key(method, sparsity)
    if method in DURING_TRAINING:
        return finetuned(run)
    mask = run.replace("/quick/", "/")
    return {("prune", f"mask={mask}"), *finetuned(run), ("evaluate_oneshot", f"oneshot_run={run}")}


SPARSE_RUNS = [run_key(method, 0.5) for method in [*ONE_SHOT, *DURING_TRAINING]]
ONESHOT_EVALS = {("evaluate_oneshot", f"oneshot_run={run_key(method, 0.5)}") for method in ONE_SHOT}


def set_path(params: dict, path: str, value) -> None:
    *parents, key = path.split(".")
    for part in parents:
        params = params[part]
    params[key] = value


# (edit of params.yaml, the jobs a dry run must plan)
EDITS = {
    "sparsity_added": (
        lambda p: set_path(p, "studies.compare.sparsities", [0.0, 0.5, 0.7]),
        {*chain("magnitude", 0.7), *chain("wanda", 0.7), *chain("gmp", 0.7), *SUMMARY, *MASKS},
    ),
    # a scorer's hyper-parameter: its scores and everything built on them, no other method's jobs
    "scorer_hyperparameter": (
        lambda p: set_path(p, "methods.wanda.num_batches", 3),
        {("score", "model=tiny, task=toy, method=wanda, seed=0"), *chain("wanda", 0.5), *SUMMARY, *MASKS},
    ),
    # a during-training sparsifier's hyper-parameter: its fine-tune and evaluation only
    "sparsifier_hyperparameter": (
        lambda p: set_path(p, "methods.gmp.end", 0.5),
        {*chain("gmp", 0.5), *SUMMARY, *MASKS},
    ),
    # a recipe value: every fine-tune (dense too), and the one-shot evaluations of the dense
    # fine-tuned model; scores and masks stay
    "recipe_value": (
        lambda p: set_path(p, "recipes.quick.learning_rate", 2.0e-3),
        {*finetuned(DENSE), *(job for run in SPARSE_RUNS for job in finetuned(run)), *ONESHOT_EVALS, *SUMMARY,
         *MASKS},
    ),
    "evaluation_batch_size": (
        lambda p: set_path(p, "evaluation.batch_size", 16),
        {("evaluate_finetuned", f"run={run}") for run in [DENSE, *SPARSE_RUNS]} | ONESHOT_EVALS | SUMMARY,
    ),
    # epsilon only changes the tables' essential sparsity and the figures' line
    "evaluation_epsilon": (
        lambda p: set_path(p, "evaluation.epsilon", 0.2),
        {("aggregate", ""), ("study_figure", "study=compare"), ("all", "")},
    ),
    "unused_method_added": (lambda p: set_path(p, "methods.random", {"scorer": "random"}), set()),
    "unused_recipe_added": (lambda p: set_path(p, "recipes.longer", {**p["recipes"]["quick"], "epochs": 3}), set()),
    # a new study over runs computed already: its own table and figure only
    "study_over_computed_runs_added": (
        lambda p: set_path(p, "studies.magnitude_only", {**p["studies"]["compare"], "figure": "essential_sparsity",
                                                         "methods": ["magnitude"], "allocations": ["global"]}),
        {("study_table", "study=magnitude_only"), ("study_figure", "study=magnitude_only"), ("all", "")},
    ),
    # the same values written again (a newer params.yaml, in another layout: see below)
    "same_values_rewritten": (lambda p: None, set()),
}


def reversed_keys(value):
    """The same config with the keys of every mapping in reverse order (lists keep theirs)."""
    if isinstance(value, dict):
        return {key: reversed_keys(value[key]) for key in reversed(list(value))}
    return [reversed_keys(item) for item in value] if isinstance(value, list) else value


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("partial_rerun")
    write_workdir(root, base_params(root))
    snakemake(root)
    assert planned_jobs(root) == []
    return root


def plan_after(finished: Path, workdir: Path, params_text) -> list[tuple[str, str]]:
    """The dry run in a copy of the finished workdir whose params.yaml is params_text(params)."""
    shutil.copytree(finished, workdir, symlinks=True)
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    (workdir / "params.yaml").write_text(params_text(params))
    return planned_jobs(workdir)


@pytest.mark.parametrize("name", list(EDITS))
def test_one_edit_plans_exactly_the_jobs_it_touches(finished, tmp_path, name):
    edit, expected = EDITS[name]
    layout = {"indent": 4, "default_flow_style": True} if name == "same_values_rewritten" else {}

    def edited(params):
        edit(params)
        return yaml.safe_dump(params, sort_keys=False, **layout)

    planned = plan_after(finished, tmp_path / "edited", edited)
    assert sorted(planned) == sorted(expected), sorted(set(planned) ^ set(expected))


@pytest.mark.xfail(strict=True, reason=(
    "Snakemake compares params by repr(), which keeps a dict's key order: the rules pass params.yaml "
    "entries (tasks, methods, recipes, prunable, evaluation) as dicts in file order, so moving a key "
    "within an entry reruns every job from fetch_data on. Fix: canonical (sorted) key order in the "
    "validated config."))
def test_keys_in_another_order_rerun_nothing(finished, tmp_path):
    assert plan_after(finished, tmp_path / "reordered", lambda p: yaml.safe_dump(reversed_keys(p), sort_keys=False)) == []
