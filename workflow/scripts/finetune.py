"""Rule finetune: fine-tune the pretrained model (mask fixed, during-training sparsifier, or dense),
distilled from the dense teacher when the recipe says so."""

from pathlib import Path

from sparselab.jobs import job, job_imports

with job_imports():
    from sparselab.pipeline import finetune_stage

with job(snakemake.log[0]):
    finetune_stage(
        Path(snakemake.input.model),
        Path(snakemake.input.data),
        Path(snakemake.input.mask) if "mask" in snakemake.input.keys() else None,
        Path(snakemake.output.checkpoint).parent,
        recipe=snakemake.params.recipe,
        seed=snakemake.params.seed,
        threads=snakemake.threads,
        during_training=snakemake.params.during_training,
        teacher_dir=Path(snakemake.input.teacher).parent if "teacher" in snakemake.input.keys() else None,
        trust_remote_code=snakemake.params.trust_remote_code,
    )
