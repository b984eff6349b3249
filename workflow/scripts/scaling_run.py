"""Rule scaling_run: pre-train the scaling-law grid's runs of one width and sparsity, one per
training length, and record each one's loss, N and D."""

from pathlib import Path

from sparselab.jobs import job, job_imports

with job_imports():
    from sparselab.pretraining_studies import scaling_run_stage

with job(snakemake.log[0]):
    scaling_run_stage(
        Path(snakemake.input.model),
        Path(snakemake.input.data),
        [Path(path) for path in snakemake.output.records],
        snakemake.params.settings,
        snakemake.params.steps,
        snakemake.threads,
    )
