"""Rule aggregate: every evaluation into results/tables/runs.csv and essential_sparsity.csv."""

from pathlib import Path

from sparselab.aggregate import aggregate_stage
from sparselab.logs import log_to

with log_to(snakemake.log[0]):
    aggregate_stage(
        snakemake.params.runs,
        Path(snakemake.params.results),
        Path(snakemake.output.runs),
        Path(snakemake.output.essential),
        epsilon=snakemake.params.epsilon,
    )
