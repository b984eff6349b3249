"""Paper-style figures drawn from the aggregated tables (PNG for the report, PDF for papers)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from sparselab.aggregate import essential_sparsity  # noqa: E402
from sparselab.io import atomic_path  # noqa: E402
from sparselab.registry import Registry  # noqa: E402

STAGE_STYLE = {"finetuned": "-", "pruned": "--"}
STAGE_LABEL = {"finetuned": "pruned, then fine-tuned", "pruned": "dense fine-tuned, pruned (no retraining)"}


def save_figure(fig: plt.Figure, png: Path, pdf: Path) -> None:
    for path in (png, pdf):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], bbox_inches="tight", dpi=150)
    plt.close(fig)


Figure = Callable[[pd.DataFrame, float, Path, Path], None]
FIGURES: Registry[Figure] = Registry("figure")


def study_figure(kind: str, table_csv: Path, epsilon: float, png: Path, pdf: Path) -> None:
    """Draw the figure `kind` (a study's `figure`) from the study's table (aggregate.study_table_stage)."""
    table = pd.read_csv(table_csv)
    FIGURES.get(kind)(table[table["headline"]], epsilon, png, pdf)


def _setup_label(frame: pd.DataFrame, parts: list[str]) -> pd.Series:
    return frame[parts].astype(str).agg(" / ".join, axis=1)


def _draw_curve(ax: plt.Axes, curve: pd.DataFrame, **style) -> None:
    """Mean headline metric vs sparsity over seeds; a band of one standard deviation if several."""
    stats = curve.groupby("sparsity")["value"].agg(["mean", "std", "count"]).reset_index()
    ax.plot(stats["sparsity"], stats["mean"], **{"marker": "o", **style})
    if (stats["count"] > 1).any():
        ax.fill_between(stats["sparsity"], stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                        color=style.get("color"), alpha=0.15, linewidth=0)


def _panels(table: pd.DataFrame) -> tuple[plt.Figure, list]:
    """One panel per (model, task): the figure and [(axes, (model, task), rows)]."""
    groups = list(table.groupby(["model", "task"]))
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4.5), squeeze=False)
    return fig, [(ax, key, rows) for ax, (key, rows) in zip(axes[0], groups)]


def _draw_dense(ax: plt.Axes, panel: pd.DataFrame, epsilon: float) -> None:
    """The dense model as a grey line and the band within epsilon below it."""
    dense = panel["dense_value"].mean()
    ax.axhline(dense, color="0.3", lw=1, label=f"dense ({dense:.3f})")
    ax.axhspan(dense - epsilon, dense, color="0.85", label=f"within epsilon = {epsilon:g} of dense")


def _finish_panel(ax: plt.Axes, model: str, task: str, metric: str) -> None:
    ax.set_title(f"{model} on {task}")
    ax.set_xlabel("sparsity of the prunable set")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)


@FIGURES.register("essential_sparsity")
def essential_sparsity_figure(table: pd.DataFrame, epsilon: float, png: Path, pdf: Path) -> None:
    """Headline metric vs sparsity, one panel per (model, task), one colour per pruning set-up.

    Solid: fine-tuned with the mask fixed; dashed: the dense fine-tuned model pruned one-shot with
    no retraining. Points are means over seeds, bands one standard deviation when there are
    several. The grey line is dense, the band is dense - epsilon .. dense, and the dotted vertical
    line marks the essential sparsity of each fine-tuned curve.
    """
    table = table.assign(setup=_setup_label(table, ["method", "allocation", "structure", "recipe"]))
    essential = essential_sparsity(table, epsilon)
    essential["setup"] = _setup_label(essential, ["method", "allocation", "structure", "recipe"])
    palette = dict(zip(sorted(table["setup"].unique()), sns.color_palette("colorblind")))
    fig, panels = _panels(table)
    for ax, (model, task), panel in panels:
        _draw_dense(ax, panel, epsilon)
        for (setup, stage), curve in panel.groupby(["setup", "stage"]):
            _draw_curve(ax, curve, color=palette[setup], linestyle=STAGE_STYLE[stage],
                        label=f"{setup}: {STAGE_LABEL[stage]}")
        marks = essential[(essential["model"] == model) & (essential["task"] == task) & (essential["stage"] == "finetuned")]
        for _, row in marks.iterrows():
            ax.axvline(row["essential_sparsity"], color=palette.get(row["setup"], "k"), ls=":", lw=1.5,
                       label=f"essential sparsity {row['essential_sparsity']:g} ({row['setup']})")
        _finish_panel(ax, model, task, panel["metric"].iloc[0])
    save_figure(fig, png, pdf)


@FIGURES.register("method_comparison")
def method_comparison_figure(table: pd.DataFrame, epsilon: float, png: Path, pdf: Path) -> None:
    """Fine-tuned headline metric vs sparsity, one line per method (with its allocation, structure
    and recipe when the study has several), the dense model as a grey line; one panel per
    (model, task). One-shot methods are pruned, then fine-tuned with the mask fixed; during-training
    methods reach their sparsity inside the same fine-tuning budget.
    """
    finetuned = table[table["stage"] == "finetuned"]
    varying = [c for c in ("structure", "recipe") if finetuned[c].nunique() > 1]
    finetuned = finetuned.assign(line=finetuned["method"] + " (" + _setup_label(finetuned, ["allocation", *varying]) + ")")
    lines = sorted(finetuned["line"].unique())
    palette = dict(zip(lines, sns.color_palette("colorblind", len(lines))))
    markers = dict(zip(lines, "osD^vP*Xhp<>"))
    fig, panels = _panels(finetuned)
    for ax, (model, task), panel in panels:
        _draw_dense(ax, panel, epsilon)
        for line, curve in panel.groupby("line"):
            _draw_curve(ax, curve, color=palette[line], marker=markers[line], label=line)
        _finish_panel(ax, model, task, panel["metric"].iloc[0])
    save_figure(fig, png, pdf)
