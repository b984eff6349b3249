"""Rule aggregate: every evaluation into the tidy tables and the metrics summary."""

from pathlib import Path

from sparselab.aggregate import aggregate_stage
from sparselab.logs import log_to

with log_to(snakemake.log[0]):
    aggregate_stage(
        snakemake.params.runs,
        snakemake.params.recipes,
        Path(snakemake.output.runs),
        Path(snakemake.output.curves),
        Path(snakemake.output.metrics),
        epsilon=snakemake.params.epsilon,
    )
