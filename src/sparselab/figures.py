"""Paper-style figures drawn from the aggregated tables (PNG for the report, PDF for papers)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from sparselab.io import atomic_path  # noqa: E402

STAGE_STYLE = {"finetuned": "-", "pruned": "--"}
STAGE_LABEL = {"finetuned": "pruned, then fine-tuned", "pruned": "dense fine-tuned, pruned (no retraining)"}


def save_figure(fig: plt.Figure, png: Path, pdf: Path) -> None:
    for path in (png, pdf):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], bbox_inches="tight", dpi=150)
    plt.close(fig)


def essential_sparsity_figure(runs_csv: Path, essential_csv: Path, png: Path, pdf: Path) -> None:
    """Headline metric vs sparsity, one panel per (model, task), one colour per pruning set-up.

    Solid: fine-tuned with the mask fixed; dashed: the dense fine-tuned model pruned one-shot with
    no retraining. Points are means over seeds, bands one standard deviation when there are several. The grey line is dense, the band is dense - epsilon .. dense, and the dotted
    vertical line marks the essential sparsity of each fine-tuned curve.
    """
    table = pd.read_csv(runs_csv)
    table = table[table["headline"]]
    essential = pd.read_csv(essential_csv)
    table["setup"] = table["method"] + " / " + table["allocation"] + " / " + table["structure"] + " / " + table["recipe"]
    essential["setup"] = essential["method"] + " / " + essential["allocation"] + " / " + essential["structure"] + " / " + essential["recipe"]
    panels = list(table.groupby(["model", "task"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    palette = dict(zip(sorted(table["setup"].unique()), sns.color_palette("colorblind")))
    for ax, ((model, task), panel) in zip(axes[0], panels):
        dense = panel["dense_value"].mean()
        epsilon = essential["epsilon"].iloc[0]
        ax.axhline(dense, color="0.3", lw=1, label=f"dense ({dense:.3f})")
        ax.axhspan(dense - epsilon, dense, color="0.85", label=f"within epsilon = {epsilon:g} of dense")
        for (setup, stage), curve in panel.groupby(["setup", "stage"]):
            stats = curve.groupby("sparsity")["value"].agg(["mean", "std", "count"]).reset_index()
            ax.plot(stats["sparsity"], stats["mean"], color=palette[setup], linestyle=STAGE_STYLE[stage],
                    marker="o", label=f"{setup}: {STAGE_LABEL[stage]}")
            if (stats["count"] > 1).any():  # several seeds: mean +- one standard deviation
                ax.fill_between(stats["sparsity"], stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                                color=palette[setup], alpha=0.15, linewidth=0)
        marks = essential[(essential["model"] == model) & (essential["task"] == task) & (essential["stage"] == "finetuned")]
        for _, row in marks.iterrows():
            ax.axvline(row["essential_sparsity"], color=palette.get(row["setup"], "k"), ls=":", lw=1.5,
                       label=f"essential sparsity {row['essential_sparsity']:g} ({row['setup']})")
        ax.set_title(f"{model} on {task}")
        ax.set_xlabel("sparsity of the prunable set")
        ax.set_ylabel(panel["metric"].iloc[0])
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
    save_figure(fig, png, pdf)
