"""Rule evaluate_finetuned: task metric, recounted sparsity, size and latency of a checkpoint."""

from pathlib import Path

from sparselab.jobs import job, job_imports

with job_imports():
    from sparselab.pipeline import evaluate_finetuned_stage

with job(snakemake.log[0]):
    evaluate_finetuned_stage(
        Path(snakemake.input.checkpoint).parent,
        Path(snakemake.input.model),
        Path(snakemake.input.data),
        Path(snakemake.output.record),
        prunable=snakemake.params.prunable,
        evaluation=snakemake.params.evaluation,
        max_length=snakemake.params.max_length,
        threads=snakemake.threads,
        trust_remote_code=snakemake.params.trust_remote_code,
    )
