"""Paper-style figures drawn from the aggregated tables (PNG for the report, PDF for papers)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from sparselab.aggregate import essential_sparsity  # noqa: E402
from sparselab.io import atomic_path  # noqa: E402
from sparselab.registry import Registry  # noqa: E402
from sparselab.scaling_law import Coefficients, law, optimal_sparsity_grid  # noqa: E402

STAGE_STYLE = {"finetuned": "-", "pruned": "--"}
STAGE_LABEL = {"finetuned": "pruned, then fine-tuned", "pruned": "dense fine-tuned, pruned (no retraining)"}


def save_figure(fig: plt.Figure, png: Path, pdf: Path) -> None:
    for path in (png, pdf):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], bbox_inches="tight", dpi=150)
    plt.close(fig)


Figure = Callable[[pd.DataFrame, float, Path, Path], None]
FIGURES: Registry[Figure] = Registry("figure")


def study_figure(kind: str, table_csv: Path, epsilon: float, png: Path, pdf: Path,
                 extras: dict[str, Path] | None = None) -> None:
    """Draw the figure `kind` (a study's `figure`) from the study's table (aggregate.study_table_stage)
    and the further tables some kinds read (`extras`: keyword -> CSV, e.g. near_zero)."""
    table = pd.read_csv(table_csv)
    tables = {name: pd.read_csv(path) for name, path in (extras or {}).items()}
    FIGURES.get(kind)(table[table["headline"]], epsilon, png, pdf, **tables)


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


@FIGURES.register("recipes")
def recipes_figure(table: pd.DataFrame, epsilon: float, png: Path, pdf: Path) -> None:
    """The under-training analysis (methods.md section 4): per (model, task), the final training
    loss on the labels (mean over the last epoch's steps) and the fine-tuned headline metric
    against the budget (epochs_multiplier), one colour per sparsity, black for dense; solid trained
    on the labels, dashed distilled from the dense teacher. Under-training shows as sparse losses
    above the dense one at the dense budget, and a gap that shrinks with budget or distillation.
    """
    finetuned = table[table["stage"] == "finetuned"]
    sparsities = sorted(s for s in finetuned["sparsity"].unique() if s > 0)
    palette = dict(zip(sparsities, sns.color_palette("flare", len(sparsities))))
    groups = list(finetuned.groupby(["model", "task"]))
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 4.5 * len(groups)), squeeze=False)
    for row, ((model, task), panel) in zip(axes, groups):
        dense = panel.groupby(["distilled", "budget"], as_index=False)[["dense_task_loss", "dense_value"]].mean()
        sparse = panel[panel["sparsity"] > 0].groupby(["sparsity", "distilled", "budget"], as_index=False)[
            ["final_task_loss", "value"]].mean()
        for ax, (sparse_column, dense_column, label) in zip(row, (
            ("final_task_loss", "dense_task_loss", "final training loss (labels)"),
            ("value", "dense_value", panel["metric"].iloc[0]),
        )):
            for distilled, curve in dense.groupby("distilled"):
                ax.plot(curve["budget"], curve[dense_column], color="k", marker="o", ls="--" if distilled else "-",
                        label="dense" + (", distilled" if distilled else ""))
            for (sparsity, distilled), curve in sparse.groupby(["sparsity", "distilled"]):
                ax.plot(curve["budget"], curve[sparse_column], color=palette[sparsity], marker="o",
                        ls="--" if distilled else "-",
                        label=f"sparsity {sparsity:g}" + (", distilled" if distilled else ""))
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(panel["budget"].unique()), [f"{b:g}x" for b in sorted(panel["budget"].unique())])
            ax.set_xlabel("training budget (epochs multiplier)")
            ax.set_ylabel(label)
            ax.set_title(f"{model} on {task}")
        row[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    save_figure(fig, png, pdf)


@FIGURES.register("ssl_vs_supervised")
def ssl_vs_supervised_figure(table: pd.DataFrame, epsilon: float, png: Path, pdf: Path,
                             near_zero: pd.DataFrame) -> None:
    """Self-supervised vs supervised backbones (essential-sparsity paper): left, per (task), the
    headline metric against sparsity, one colour per backbone, solid pruned one-shot then fine-tuned,
    dashed the dense fine-tuned model pruned without retraining, dotted its dense value, with each
    fine-tuned curve's essential sparsity in the legend; right, the share of each backbone's
    pretrained prunable weights with |w| < tau against tau."""
    labels = near_zero.drop_duplicates("model").set_index("model")["description"].to_dict()
    models = sorted(table["model"].unique())
    palette = dict(zip(models, sns.color_palette("colorblind", len(models))))
    essential = essential_sparsity(table, epsilon)
    tasks = sorted(table["task"].unique())
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(6.5 * (len(tasks) + 1), 4.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        panel = table[table["task"] == task]
        for (model, stage), curve in panel.groupby(["model", "stage"]):
            mark = essential[(essential["model"] == model) & (essential["task"] == task) & (essential["stage"] == stage)]
            note = f", essential sparsity {mark['essential_sparsity'].max():g}" if stage == "finetuned" else ""
            _draw_curve(ax, curve, color=palette[model], linestyle=STAGE_STYLE[stage],
                        label=f"{labels.get(model, model)}: {STAGE_LABEL[stage]}{note}")
            if stage == "finetuned":
                ax.axhline(curve["dense_value"].mean(), color=palette[model], ls=":", lw=1)
        ax.set_title(f"{task}: within epsilon = {epsilon:g} of dense counts as free", fontsize=9)
        ax.set_xlabel("sparsity of the prunable set (one-shot global magnitude)")
        ax.set_ylabel(panel["metric"].iloc[0])
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    ax = axes[0][-1]
    for model, rows in near_zero.groupby("model"):
        ax.plot(rows["tau"], rows["share"], marker="o", color=palette.get(model), label=labels.get(model, model))
    ax.set_xscale("log")
    ax.set_xlabel("tau")
    ax.set_ylabel("share of pretrained prunable weights with |w| < tau")
    ax.set_title("near-zero weights of each backbone before fine-tuning", fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, png, pdf)


def _heatmap(ax: plt.Axes, pairs: pd.DataFrame, title: str) -> None:
    """Kept-set cosine similarity between the labels of `pairs` (rows of mask_analysis.overlap_table)."""
    labels = list(dict.fromkeys([*pairs["a"], *pairs["b"]]))
    matrix = pd.DataFrame(1.0, index=labels, columns=labels)
    for _, row in pairs.iterrows():
        matrix.loc[row["a"], row["b"]] = matrix.loc[row["b"], row["a"]] = row["kept_cosine"]
    sns.heatmap(matrix, ax=ax, vmin=0, vmax=1, cmap="viridis", annot=len(labels) <= 10, fmt=".2f",
                annot_kws={"fontsize": 7}, cbar_kws={"label": "cosine similarity of the kept sets"})
    chance = pairs["chance_kept_cosine"]
    ax.set_title(f"{title}\n(two random masks: {chance.min():.2f}-{chance.max():.2f})", fontsize=9)
    ax.tick_params(labelsize=7)


def mask_analysis_figure(overlap: pd.DataFrame, modules: pd.DataFrame, png: Path, pdf: Path) -> None:
    """Three panels: how far the methods' masks agree (at the sparsity nearest 0.5 that several
    set-ups share), how far one set-up's masks agree across sparsities (the set-up with the most
    sparsities), and the share of pruned weights in the FFN matrices against sparsity, per set-up
    (method, allocation, structure), beside the FFN's share of the weights (what pruning in
    proportion to size would give)."""
    setup = ["method", "allocation", "structure"]
    fig, axes = plt.subplots(1, 3, figsize=(19, 5.5))
    methods = overlap[overlap["comparison"] == "method"]
    sparsity = min(methods["sparsity"].unique(), key=lambda s: (abs(s - 0.5), s), default=None)
    sparsities = overlap[overlap["comparison"] == "sparsity"]
    busiest = None
    if len(sparsities):  # the set-up with the most sparsities
        labels = _setup_label(sparsities, setup)
        busiest = sparsities.groupby(labels)["a"].nunique().idxmax()
        sparsities = sparsities[labels == busiest]
    panels = [(methods[methods["sparsity"] == sparsity], f"the set-ups' masks at sparsity {sparsity}"),
              (sparsities, f"{busiest}: masks across sparsities")]
    for ax, (pairs, title) in zip(axes, panels):
        if len(pairs):
            _heatmap(ax, pairs, title)
        else:
            ax.set_axis_off()
            ax.text(0.5, 0.5, "no pairs of masks to compare", ha="center", va="center")
    ffn = modules[modules["module_type"].str.startswith("ffn.")]
    by_run = ffn.groupby([*setup, "sparsity"])[["share_of_pruned", "share_of_weights"]].sum().reset_index()
    by_run["setup"] = _setup_label(by_run, setup)
    ax = axes[2]
    for label, curve in by_run.groupby("setup"):
        ax.plot(curve["sparsity"], curve["share_of_pruned"], marker="o", label=label)
    if len(by_run):
        ax.axhline(by_run["share_of_weights"].iloc[0], color="0.3", ls="--", lw=1,
                   label=f"FFN share of the weights ({by_run['share_of_weights'].iloc[0]:.2f})")
    ax.set_xlabel("sparsity of the prunable set")
    ax.set_ylabel("share of the pruned weights in FFN matrices")
    ax.set_title("where the pruned weights sit", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, png, pdf)


def scaling_law_figure(points: pd.DataFrame, coef: Coefficients, s_max: float, png: Path, pdf: Path) -> None:
    """The miniature scaling grid and its fitted law: validation loss against non-zero parameters N
    (at the longest training) and against data D (at the widest model), one colour per sparsity,
    measured points and fitted curves; then the optimal sparsity over (N, D) at fixed compute
    (scaling_law.optimal_sparsity), up to the grid's highest sparsity."""
    fig, axes = plt.subplots(1, 3, figsize=(19, 5.2))
    colours = dict(zip(sorted(points["sparsity"].unique()), sns.color_palette("viridis", points["sparsity"].nunique())))
    for ax, fixed, varied, label in ((axes[0], "steps", "N", "non-zero non-embedding parameters N (millions)"),
                                     (axes[1], "width", "D", "training tokens D (millions)")):
        chosen = points[points[fixed] == points[fixed].max()]
        for sparsity, rows in chosen.groupby("sparsity"):
            rows = rows.sort_values(varied)
            ax.scatter(rows[varied], rows["eval_loss"], color=colours[sparsity], zorder=3)
            span = np.geomspace(rows[varied].min() / 1.5, rows[varied].max() * 1.5, 50)
            other = {"N": rows["N"].mean(), "D": rows["D"].mean()} | {varied: span}
            ax.plot(span, law(coef, np.full(50, sparsity), other["N"], other["D"]), color=colours[sparsity],
                    label=f"S = {sparsity:g}")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("validation MLM loss")
        ax.set_title(f"at the largest {fixed} ({chosen[fixed].iloc[0]:g}); points measured, lines fitted", fontsize=9)
        ax.legend(fontsize=7)
    N = np.geomspace(points["N"].min(), points["N"].max() * 10, 24)
    D = np.geomspace(points["D"].min(), points["D"].max() * 10, 24)
    optimal = optimal_sparsity_grid(coef, N, D, s_max)  # (len(N), len(D))
    contour = axes[2].contourf(D, N, optimal, levels=np.linspace(0, s_max, 8), cmap="viridis")
    fig.colorbar(contour, ax=axes[2], label="optimal sparsity")
    axes[2].set_xscale("log")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("data D of a dense run with the same compute (millions of tokens)")
    axes[2].set_ylabel("non-zero parameters N (millions)")
    axes[2].set_title("optimal sparsity at fixed compute (fitted law)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, png, pdf)


def abrupt_sparsification_figure(shares: pd.DataFrame, curves: pd.DataFrame, essential: pd.DataFrame,
                                 png: Path, pdf: Path) -> None:
    """Left: the share of the prunable weights with |w| < tau against the pre-training step, one
    colour per data fraction and one line style per tau. Right: the downstream metric of each final
    model, pruned one-shot by magnitude and fine-tuned, against sparsity; dotted: its essential sparsity."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5))
    colours = dict(zip(sorted(shares["fraction"].unique(), reverse=True), sns.color_palette("colorblind")))
    styles = dict(zip(sorted(shares["tau"].unique()), ["-", "--", ":", "-."]))
    for (fraction, tau), rows in shares.groupby(["fraction", "tau"]):
        left.plot(rows["step"], rows["share"], color=colours[fraction], ls=styles.get(tau, "-"),
                  label=f"{fraction:.0%} of the corpus, tau = {tau:g}")
    left.set_xlabel("pre-training step")
    left.set_ylabel("share of prunable weights with |w| < tau")
    left.legend(fontsize=7)
    for fraction, rows in curves.groupby("fraction"):
        right.plot(rows["sparsity"], rows["value"], marker="o", color=colours[fraction], label=f"{fraction:.0%} of the corpus")
        mark = essential.loc[essential["fraction"] == fraction, "essential_sparsity"].iloc[0]
        right.axvline(mark, color=colours[fraction], ls=":", lw=1.5)
    right.set_xlabel("sparsity (one-shot global magnitude, then fine-tuned)")
    right.set_ylabel(curves["metric"].iloc[0])
    epsilon = essential["epsilon"].iloc[0]
    right.set_title(f"downstream; dotted: essential sparsity (within {epsilon:g} of dense)", fontsize=9)
    right.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, png, pdf)
