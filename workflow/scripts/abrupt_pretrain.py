"""Rule abrupt_pretrain: pre-train on a fraction of the corpus with checkpoints; their small-weight shares."""

from pathlib import Path

from sparselab.jobs import job, job_imports

with job_imports():
    from sparselab.pretraining_studies import abrupt_pretrain_stage

with job(snakemake.log[0]):
    abrupt_pretrain_stage(
        Path(snakemake.input.model),
        Path(snakemake.input.data),
        Path(snakemake.output.run),
        snakemake.params.fraction,
        snakemake.params.settings,
        snakemake.params.taus,
        snakemake.threads,
    )
