"""Rule fetch_vision_model: fetch an image model (timm:, converted weights, a timm folder, or the
backbone of a fine-tuned run) as a TimmWrapper folder and record hashes."""

from pathlib import Path

from sparselab.jobs import job, job_imports

with job_imports():
    from sparselab.vision_models import fetch_vision_model

with job(snakemake.log[0]):
    fetch_vision_model(
        snakemake.params.entry,
        Path(snakemake.output.model),
        key=f"models.{snakemake.wildcards.model}",
        finetuned_dir=Path(snakemake.input.checkpoint).parent if "checkpoint" in snakemake.input.keys() else None,
    )
