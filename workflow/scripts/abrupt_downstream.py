"""Rule abrupt_downstream: the essential sparsity of one pre-trained tiny BERT on the task."""

from pathlib import Path

from sparselab.jobs import job, job_imports

with job_imports():
    from sparselab.pretraining_studies import abrupt_downstream_stage

with job(snakemake.log[0]):
    abrupt_downstream_stage(
        Path(snakemake.input.run) / "model",
        Path(snakemake.input.data),
        Path(snakemake.output.run),
        snakemake.params.sparsities,
        snakemake.params.recipe,
        snakemake.params.epsilon,
        snakemake.params.evaluation,
        snakemake.params.seed,
        snakemake.threads,
    )
