"""Rule evaluate_oneshot: the dense fine-tuned model pruned one-shot and evaluated, no retraining."""

from pathlib import Path

from sparselab.jobs import job, job_imports

with job_imports():
    from sparselab.pipeline import evaluate_oneshot_stage

with job(snakemake.log[0]):
    evaluate_oneshot_stage(
        Path(snakemake.input.dense).parent,
        Path(snakemake.input.model),
        Path(snakemake.input.data),
        Path(snakemake.output.record),
        method=snakemake.params.method,
        prunable=snakemake.params.prunable,
        allocation=snakemake.params.allocation,
        structure=snakemake.params.structure,
        sparsity=snakemake.params.sparsity,
        seed=snakemake.params.seed,
        evaluation=snakemake.params.evaluation,
        max_length=snakemake.params.max_length,
        threads=snakemake.threads,
        trust_remote_code=snakemake.params.trust_remote_code,
    )
