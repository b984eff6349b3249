"""The real Snakefile on a tiny config (tiny random BERT, tiny local data) in a temporary directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny_workflow import planned_jobs, snakemake, tiny_params, write_workdir

from sparselab.io import load_compact, load_masks

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("workflow")
    write_workdir(root, tiny_params(root))
    snakemake(root)
    return root


def test_outputs_and_tables(workdir):
    runs = pd.read_csv(workdir / "results/tables/runs.csv")
    expected = {"model", "task", "method", "allocation", "structure", "sparsity", "achieved_sparsity", "recipe",
                "seed", "stage", "metric", "value", "dense_value", "trainable_params", "wall_seconds"}
    assert expected <= set(runs.columns)
    curve = pd.read_csv(workdir / "results/tables/curve.csv")
    # 2 allocations x (3 unstructured sparsities + dense and 0.5 for 2:4) x 2 stages
    assert len(curve) == 2 * (3 + 2) * 2
    assert set(curve["stage"]) == {"pruned", "finetuned"}
    compare = pd.read_csv(workdir / "results/tables/compare.csv")
    # every method's line starts at the dense run; one-shot magnitude and wanda have 2 stages, while
    # gmp, seven_dyn and pst prune during training
    assert len(compare) == 2 * 2 * 2 + 3 * 2
    sparse = compare[compare["sparsity"] > 0]
    assert dict(zip(sparse["method"], sparse["allocation"])) == {
        "magnitude": "global", "wanda": "row", "gmp": "global", "seven_dyn": "global", "pst": "layerwise"}
    assert set(sparse[sparse["method"].isin(["gmp", "seven_dyn", "pst"])]["stage"]) == {"finetuned"}
    pst = sparse[sparse["method"] == "pst"].iloc[0]
    assert pst["trainable_params"] < sparse[sparse["method"] == "gmp"].iloc[0]["trainable_params"]
    key = ["method", "allocation", "structure", "sparsity", "stage"]
    assert not runs.duplicated(key).any()
    assert set(map(tuple, runs[key].values)) == set(map(tuple, pd.concat([curve, compare])[key].values))
    sparse = runs[runs["sparsity"] > 0]
    assert (sparse["achieved_sparsity"] - sparse["sparsity"]).abs().max() < 1e-3
    curves = pd.read_csv(workdir / "results/tables/curves.csv")
    assert len(curves) == 2 * 2 * 2 + 2 + 3  # per (setup, stage); magnitude/global is in both studies
    for name in ("curve", "compare", "mask_analysis"):
        for suffix in ("png", "pdf"):
            assert (workdir / f"results/figures/{name}.{suffix}").stat().st_size > 1000


def test_mask_analysis_compares_the_runs_masks(workdir):
    overlap = pd.read_csv(workdir / "results/tables/mask_overlap.csv")
    # global magnitude at 0.5 and 0.8: one pair of nested masks
    nested = overlap[(overlap["comparison"] == "sparsity") & (overlap["method"] == "magnitude")
                     & (overlap["allocation"] == "global") & (overlap["structure"] == "unstructured")]
    assert list(zip(nested["a"], nested["b"])) == [("s=0.5", "s=0.8")]
    assert nested["kept_cosine"].iloc[0] == pytest.approx((0.2 / 0.5) ** 0.5, abs=0.01)  # nested masks
    methods = overlap[(overlap["comparison"] == "method") & (overlap["sparsity"] == 0.5)]
    # 8 set-ups at 0.5, each pair once: magnitude global/layerwise x unstructured/2:4 (`curve`) and
    # the other 4 methods of `compare`
    assert len(methods) == 8 * 7 // 2
    assert methods["kept_cosine"].between(0, 1).all() and methods["chance_kept_cosine"].between(0.49, 0.51).all()
    modules = pd.read_csv(workdir / "results/tables/mask_modules.csv")
    assert modules.groupby(["method", "allocation", "structure", "sparsity"])["share_of_pruned"].sum().tolist() == \
        pytest.approx([1.0] * modules.groupby(["method", "allocation", "structure", "sparsity"]).ngroups)
    source = json.loads((workdir / "resources/models/tiny/source.json").read_text())
    assert source["source"].startswith("local:") and "model.safetensors" in source["files"]


def test_masks_reports_and_checkpoints_agree(workdir):
    masks_dir = workdir / "results/masks/tiny/toy/magnitude"
    reports = sorted(masks_dir.glob("*/s*/seed0/report.json"))
    assert len(reports) == 6
    for report_path in reports:
        report = json.loads(report_path.read_text())
        assert report["achieved_sparsity"] == pytest.approx(report["requested_sparsity"], abs=1e-3)
        assert len(report["matrices"]) == 12
    run = workdir / "results/finetune/tiny/toy/magnitude/global-unstructured/s0.8/quick/seed0"
    weights = load_compact(run / "model.compact.safetensors")
    stored = load_file(run / "model.compact.safetensors")
    masks = load_masks(masks_dir / "global-unstructured/s0.8/seed0/mask.safetensors")
    for name, mask in masks.items():
        assert (weights[name][~mask] == 0).all()
        # stored compactly: the kept values only, in order, and the prune stage's mask bit for bit
        assert torch.equal(stored[name + "::values"], weights[name][mask])
        assert torch.equal(stored[name + "::mask"], torch.from_numpy(np.packbits(mask.flatten().numpy())))
    nested = load_masks(masks_dir / "global-unstructured/s0.5/seed0/mask.safetensors")
    assert all(bool((masks[n] <= nested[n]).all()) for n in masks)
    log = pd.read_csv(run / "train_log.csv")
    assert list(log.columns) == ["step", "epoch", "loss", "task_loss", "learning_rate", "seconds"] and len(log) > 0


def test_rerun_does_nothing_and_one_sparsity_reruns_its_chain(workdir, tmp_path):
    assert planned_jobs(workdir) == []
    clone = tmp_path / "clone"
    shutil.copytree(workdir, clone, symlinks=True)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["studies"]["curve"]["sparsities"] = [0.0, 0.5, 0.7]
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    planned = planned_jobs(clone)
    rules = sorted(rule for rule, _ in planned)
    summary = {"aggregate", "study_table", "study_figure", "mask_analysis", "all"}  # the new masks are compared too
    assert rules == sorted([*summary, *["prune", "finetune", "evaluate_finetuned", "evaluate_oneshot"] * 2]), planned
    assert all("s0.7" in wildcards for rule, wildcards in planned if rule not in summary)
    assert ("study_table", "study=curve") in planned  # the other study's table stays as it is


def test_a_study_target_builds_only_that_study(tmp_path):
    write_workdir(tmp_path, tiny_params(tmp_path))
    planned = planned_jobs(tmp_path, "compare")
    finetuned = sorted(wildcards for rule, wildcards in planned if rule == "finetune")
    assert len(finetuned) == 6 and not any("2of4" in w or "s0.8" in w for w in finetuned), finetuned
    assert ("compare", "") in planned and not any(rule == "aggregate" for rule, _ in planned)


def test_a_study_can_leave_out_the_reference_without_retraining(tmp_path):
    params = tiny_params(tmp_path)
    params["studies"]["compare"]["pruned_reference"] = False
    write_workdir(tmp_path, params)
    oneshot = sorted(wildcards for rule, wildcards in planned_jobs(tmp_path) if rule == "evaluate_oneshot")
    # curve still evaluates its magnitude masks without retraining (global/layerwise x 0.5/0.8 x
    # unstructured, and 2:4), compare's only other one-shot method (wanda) is not
    assert len(oneshot) == 6 and all("/magnitude/" in wildcards for wildcards in oneshot), oneshot
    assert not any(rule == "evaluate_oneshot" for rule, _ in planned_jobs(tmp_path, "compare"))


def test_same_params_give_identical_masks_weights_and_metrics(workdir, tmp_path):
    clone = tmp_path / "again"
    shutil.copytree(workdir, clone, symlinks=True)
    shutil.rmtree(clone / "results")
    snakemake(clone)
    for pattern in ("results/masks/**/mask.safetensors", "results/finetune/**/model.compact.safetensors", "results/eval/**/finetuned.json"):
        first = sorted(workdir.glob(pattern))
        assert first, pattern
        for path in first:
            other = clone / path.relative_to(workdir)
            if path.suffix == ".json":
                assert json.loads(path.read_text())["metrics"] == json.loads(other.read_text())["metrics"]
            else:
                assert path.read_bytes() == other.read_bytes(), path
