"""Rule aggregate: every evaluation into the tidy tables and the metrics summary."""

from pathlib import Path

from sparselab.jobs import job, job_imports

with job_imports():
    from sparselab.aggregate import aggregate_stage

with job(snakemake.log[0]):
    aggregate_stage(
        snakemake.params.runs,
        snakemake.params.recipes,
        Path(snakemake.output.runs),
        Path(snakemake.output.curves),
        Path(snakemake.output.metrics),
        epsilon=snakemake.params.epsilon,
    )
