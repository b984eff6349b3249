"""Rule figure_essential_sparsity: the essential-sparsity curve as PNG and PDF."""

from pathlib import Path

from sparselab.figures import essential_sparsity_figure
from sparselab.logs import log_to

with log_to(snakemake.log[0]):
    essential_sparsity_figure(
        Path(snakemake.input.runs),
        Path(snakemake.input.essential),
        Path(snakemake.output.png),
        Path(snakemake.output.pdf),
    )
