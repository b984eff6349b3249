"""Tidy tables of the runs (all of them, and each study's), and the essential sparsity of every curve."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sparselab.grid import Run
from sparselab.io import atomic_path, read_json, write_json

CURVE = ["model", "task", "method", "allocation", "structure", "recipe"]


def collect_runs(runs: list[tuple[Run, list[str]]], recipes: dict) -> pd.DataFrame:
    """Rows of (run, stage, metric, value) with the dense value of the same model/task/recipe/seed.

    `runs` pairs each run with its evaluated stages (during-training methods have no `pruned`);
    `recipes` maps each recipe to its epochs_multiplier (the row's `budget`) and distillation (or
    None): whether the row's run distils. Paths are relative to the working directory (the workflow's), as the path grammar states.
    """
    rows = []
    for run, stages in runs:
        dense = read_json(f"results/eval/{run.dense_key}/finetuned.json")
        for stage in stages:
            record = read_json(run.eval_path(stage))
            for metric, value in record["metrics"].items():
                rows.append({
                    **run.as_dict(),
                    "achieved_sparsity": record["achieved_sparsity"],
                    "stage": stage,
                    "metric": metric,
                    "headline": metric == record["headline_metric"],
                    "value": value,
                    "dense_value": dense["metrics"][metric],
                    "trainable_params": record["trainable_params"],
                    "nonzero_params": record["nonzero_params"],
                    "latency_ms": record["latency_ms"],
                    "wall_seconds": record["wall_seconds"],
                    "final_train_loss": record.get("final_train_loss"),
                    "final_task_loss": record.get("final_task_loss"),
                    "dense_task_loss": dense.get("final_task_loss"),
                    "budget": recipes[run.recipe]["epochs_multiplier"],
                    "distilled": recipes[run.recipe]["distillation"] is not None,
                })
    return pd.DataFrame(rows)


def essential_sparsity(table: pd.DataFrame, epsilon: float) -> pd.DataFrame:
    """Per curve and stage: the largest sparsity whose mean headline metric is within epsilon of dense.

    Means are over seeds. `epsilon` is absolute in metric units (0.01 = 1 point of accuracy), as in
    the essential-sparsity paper. A curve with no point within epsilon besides s = 0 gets 0.
    """
    headline = table[table["headline"]]
    means = headline.groupby(CURVE + ["stage", "metric", "sparsity"], as_index=False)[["value", "dense_value"]].mean()
    rows = []
    for key, curve in means.groupby(CURVE + ["stage", "metric"]):
        dense_value = curve["dense_value"].iloc[0]
        within = curve[curve["value"] >= dense_value - epsilon - 1e-12]  # float-safe "within"
        rows.append({
            **dict(zip(CURVE + ["stage", "metric"], key)),
            "dense_value": dense_value,
            "epsilon": epsilon,
            "essential_sparsity": float(within["sparsity"].max()) if len(within) else 0.0,
            "max_sparsity_tested": float(curve["sparsity"].max()),
        })
    return pd.DataFrame(rows)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def headline_metrics(essential: pd.DataFrame) -> dict:
    """Per curve: the dense metric and the essential sparsity of each stage (DVC's metrics file)."""
    summary: dict = {}
    for _, row in essential.iterrows():
        curve = summary.setdefault("/".join(str(row[c]) for c in CURVE), {})
        curve[f"dense_{row['metric']}"] = row["dense_value"]
        curve[f"essential_sparsity_{row['stage']}"] = row["essential_sparsity"]
    return summary


def runs_from_params(runs: list[dict]) -> list[tuple[Run, list[str]]]:
    """The rules' `runs` param (Run fields plus `stages`, the stages it was evaluated at) as pairs."""
    return [(Run(**{k: v for k, v in r.items() if k != "stages"}), r["stages"]) for r in runs]


def aggregate_stage(runs: list[dict], recipes: dict, runs_csv: Path, curves_csv: Path, metrics_json: Path,
                    epsilon: float) -> None:
    """Write results/tables/runs.csv, results/tables/curves.csv (the essential sparsity of every
    curve) and results/metrics.json, over every run of every study."""
    table = collect_runs(runs_from_params(runs), recipes)
    essential = essential_sparsity(table, epsilon)
    write_csv(table, runs_csv)
    write_csv(essential, curves_csv)
    write_json(metrics_json, headline_metrics(essential))


def study_table_stage(runs: list[dict], recipes: dict, table_csv: Path) -> None:
    """Write results/tables/<study>.csv: the rows of collect_runs for the study's runs only, so a
    study's figure needs no run of another study."""
    write_csv(collect_runs(runs_from_params(runs), recipes), table_csv)
