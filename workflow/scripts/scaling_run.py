"""Rule scaling_run: pre-train one point of the scaling-law grid and record its loss, N and D."""

from pathlib import Path

from sparselab.logs import log_to
from sparselab.pretraining_studies import scaling_run_stage

with log_to(snakemake.log[0]):
    scaling_run_stage(
        Path(snakemake.input.model),
        Path(snakemake.input.data),
        Path(snakemake.output.record),
        snakemake.params.settings,
        snakemake.threads,
    )
