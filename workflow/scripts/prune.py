"""Rule prune: scores -> mask (allocation x structure) and the sparsity report."""

from pathlib import Path

from sparselab.jobs import job, job_imports

with job_imports():
    from sparselab.pipeline import prune_stage

with job(snakemake.log[0]):
    prune_stage(
        Path(snakemake.input.scores),
        Path(snakemake.output.mask),
        Path(snakemake.output.report),
        sparsity=snakemake.params.sparsity,
        allocation=snakemake.params.allocation,
        structure=snakemake.params.structure,
    )
