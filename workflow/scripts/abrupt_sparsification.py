"""Rule abrupt_sparsification: the small-weight shares and essential sparsities in tables and a figure."""

from pathlib import Path

from sparselab.jobs import job, job_imports

with job_imports():
    from sparselab.pretraining_studies import abrupt_sparsification_stage

with job(snakemake.log[0]):
    abrupt_sparsification_stage(
        [Path(path) for path in snakemake.input.runs],
        [Path(path) for path in snakemake.input.downstream],
        Path(snakemake.output.shares),
        Path(snakemake.output.essential),
        Path(snakemake.output.png),
        Path(snakemake.output.pdf),
    )
