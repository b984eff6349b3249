"""Rule fetch_data: fetch a task's data and write fixed train/validation/test splits."""

from pathlib import Path

from sparselab.jobs import job, job_imports

with job_imports():
    from sparselab.data import fetch_task

with job(snakemake.log[0]):
    fetch_task(snakemake.wildcards.task, snakemake.params.entry, Path(snakemake.output.data))
