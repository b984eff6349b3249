"""The grid, the tidy table and the essential-sparsity (knee) detection."""

from __future__ import annotations

import pandas as pd
import pytest

from sparselab import figures
from sparselab.aggregate import essential_sparsity
from sparselab.figures import FIGURES, study_figure
from sparselab.grid import Run, expand_studies, runs_by_key, study_runs

STUDY = {
    "models": ["m"], "tasks": ["t"], "methods": ["magnitude", "random"], "allocations": ["global"],
    "structures": ["unstructured", "2:4"], "sparsities": [0.0, 0.5, 0.9], "recipes": ["r"], "seeds": [0],
}
METHODS = {"magnitude": {"scorer": "magnitude"}, "random": {"scorer": "random"}, "wanda": {"scorer": "wanda"},
           "pst": {"sparsifier": "pst"}, "seven_dyn": {"sparsifier": "seven_dyn"}, "gmp": {"sparsifier": "gmp"}}


def test_study_runs_product_and_nm_sparsity():
    runs = study_runs(STUDY, METHODS)
    unstructured = [r for r in runs if r.structure == "unstructured"]
    nm = [r for r in runs if r.structure == "2:4"]
    assert len(unstructured) == 2 * 3
    assert sorted({r.sparsity for r in nm}) == [0.0, 0.5]  # 2:4 fixes 50%, plus the dense point


def test_dense_points_share_one_run():
    runs = expand_studies({"studies": {"a": STUDY, "b": STUDY}, "methods": METHODS})
    table = runs_by_key(runs)
    dense_keys = {r.key for r in runs if r.dense}
    assert dense_keys == {"m/t/dense/r/seed0"}
    assert "m/t/magnitude/global-2of4/s0.5/r/seed0" in table
    assert "m/t/random/global-unstructured/s0.9/r/seed0" in table
    assert len(runs) == len(set(runs))


def test_native_allocation_is_each_methods_own():
    study = {**STUDY, "methods": list(METHODS), "allocations": ["native"], "structures": ["unstructured"],
             "sparsities": [0.5]}
    assert {r.method: r.allocation for r in study_runs(study, METHODS)} == {
        "magnitude": "global", "random": "global", "wanda": "row", "pst": "layerwise", "seven_dyn": "global",
        "gmp": "global"}


def test_run_paths():
    run = Run("m", "t", "magnitude", "layerwise", "unstructured", 0.875, "r", 3)
    assert run.key == "m/t/magnitude/layerwise-unstructured/s0.875/r/seed3"
    assert run.mask_prefix == "results/masks/m/t/magnitude/layerwise-unstructured/s0.875/seed3"
    assert run.scores_path == "results/scores/m/t/magnitude/seed3/scores.safetensors"
    assert run.dense_key == "m/t/dense/r/seed3"


def curve(values, dense=0.80, seeds=(0,)):
    rows = []
    for seed in seeds:
        for sparsity, value in values.items():
            rows.append({"model": "m", "task": "t", "method": "magnitude", "allocation": "global",
                         "structure": "unstructured", "recipe": "r", "seed": seed, "stage": "finetuned",
                         "metric": "accuracy", "headline": True, "sparsity": sparsity, "value": value,
                         "dense_value": dense, "budget": 1, "distilled": False,
                         "final_task_loss": 0.3 + sparsity / 2, "dense_task_loss": 0.3})
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    "values, expected",
    [
        ({0.0: 0.80, 0.1: 0.805, 0.2: 0.795, 0.3: 0.789, 0.4: 0.70}, 0.2),  # 0.789 < 0.79: outside
        ({0.0: 0.80, 0.1: 0.79, 0.2: 0.60}, 0.1),  # exactly epsilon below dense counts as within
        ({0.0: 0.80, 0.5: 0.50}, 0.0),
        ({0.0: 0.80, 0.3: 0.70, 0.6: 0.795}, 0.6),  # the largest sparsity within epsilon, as defined
    ],
)
def test_essential_sparsity_by_hand(values, expected):
    result = essential_sparsity(curve(values), epsilon=0.01)
    assert len(result) == 1
    assert result["essential_sparsity"].iloc[0] == expected


def test_essential_sparsity_averages_seeds():
    table = pd.concat([curve({0.0: 0.80, 0.5: 0.78}, seeds=(0,)), curve({0.0: 0.80, 0.5: 0.80}, seeds=(1,))])
    assert essential_sparsity(table, epsilon=0.01)["essential_sparsity"].iloc[0] == 0.5  # mean 0.79


@pytest.mark.parametrize("kind", FIGURES.names())
def test_every_figure_draws_a_study_table(kind, tmp_path):
    one_shot = curve({0.0: 0.80, 0.5: 0.78, 0.9: 0.60}, seeds=(0, 1))
    pruned = one_shot[one_shot["sparsity"] > 0].assign(stage="pruned", value=0.7)
    during = curve({0.5: 0.79, 0.9: 0.65}).assign(method="pst", allocation="layerwise")
    table = pd.concat([one_shot, pruned, during])
    table.to_csv(tmp_path / "study.csv", index=False)
    # the further table ssl_vs_supervised reads beside the study's (rule near_zero)
    near_zero = pd.DataFrame({"model": ["m"] * 2, "description": ["a backbone"] * 2, "tau": [0.001, 0.01],
                              "share": [0.05, 0.5], "prunable_params": [100] * 2})
    near_zero.to_csv(tmp_path / "near_zero.csv", index=False)
    extras = {"near_zero": tmp_path / "near_zero.csv"} if kind == "ssl_vs_supervised" else None
    study_figure(kind, tmp_path / "study.csv", 0.01, tmp_path / "f.png", tmp_path / "f.pdf", extras)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "f.pdf").read_bytes()[:4] == b"%PDF"
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically


def test_method_comparison_draws_one_line_per_method(tmp_path, monkeypatch):
    table = pd.concat([curve({0.0: 0.80, 0.5: 0.78}),
                       curve({0.5: 0.79}).assign(method="pst", allocation="layerwise"),
                       curve({0.5: 0.70}).assign(stage="pruned")])
    labels = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, png, pdf: labels.extend(
        line.get_label() for ax in fig.axes for line in ax.get_lines()))
    figures.method_comparison_figure(table, 0.01, tmp_path / "f.png", tmp_path / "f.pdf")
    assert [label for label in labels if not label.startswith("dense")] == ["magnitude (global)", "pst (layerwise)"]


def test_recipes_figure_draws_each_sparsity_with_and_without_distillation(tmp_path, monkeypatch):
    plain = pd.concat([curve({0.0: 0.80, 0.8: 0.70, 0.9: 0.60}).assign(budget=b, recipe=f"x{b}") for b in (1, 2, 4)])
    distilled = plain.assign(distilled=True, value=plain["value"] + 0.02, recipe=plain["recipe"] + "_kd")
    lines = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, png, pdf: lines.extend(
        (ax.get_ylabel(), line.get_label(), line.get_linestyle(), list(line.get_xdata()), list(line.get_ydata()))
        for ax in fig.axes for line in ax.get_lines()))
    figures.recipes_figure(pd.concat([plain, distilled]), 0.01, tmp_path / "f.png", tmp_path / "f.pdf")
    labels = {(axis, label, style) for axis, label, style, _, _ in lines}
    for axis in ("final training loss (labels)", "accuracy"):
        assert {(axis, "dense", "-"), (axis, "dense, distilled", "--"), (axis, "sparsity 0.8", "-"),
                (axis, "sparsity 0.9, distilled", "--")} <= labels
    loss_09 = [(x, y) for axis, label, _, xs, ys in lines if axis.startswith("final") and label == "sparsity 0.9"
               for x, y in zip(xs, ys)]
    assert loss_09 == [(1, 0.75), (2, 0.75), (4, 0.75)]  # x is the budget, y the final task loss
