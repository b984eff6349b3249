"""Rule fetch_data: fetch a task's data and write fixed train/validation/test splits."""

from pathlib import Path

from sparselab.data import fetch_task
from sparselab.logs import log_to

with log_to(snakemake.log[0]):
    fetch_task(snakemake.wildcards.task, snakemake.params.entry, Path(snakemake.output.data))
