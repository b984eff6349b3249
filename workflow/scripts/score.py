"""Rule score: importance scores of the pretrained model's prunable matrices."""

from pathlib import Path

from sparselab.jobs import job, job_imports

with job_imports():
    from sparselab.pipeline import score_stage

with job(snakemake.log[0]):
    score_stage(
        Path(snakemake.input.model),
        Path(snakemake.input.data),
        Path(snakemake.output.scores),
        method=snakemake.params.method,
        prunable=snakemake.params.prunable,
        seed=snakemake.params.seed,
        threads=snakemake.threads,
        trust_remote_code=snakemake.params.trust_remote_code,
    )
