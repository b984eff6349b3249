"""Rule near_zero: the share of each backbone's prunable weights with |w| < tau."""

from pathlib import Path

from sparselab.jobs import job, job_imports

with job_imports():
    from sparselab.ssl_study import near_zero_stage

with job(snakemake.log[0]):
    near_zero_stage(
        [Path(folder) for folder in snakemake.input.models],
        snakemake.params.prunable,
        snakemake.params.descriptions,
        snakemake.params.taus,
        Path(snakemake.output.table),
    )
