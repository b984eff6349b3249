"""Rule study_table: the evaluations of one study's runs as a tidy table."""

from pathlib import Path

from sparselab.jobs import job, job_imports

with job_imports():
    from sparselab.aggregate import study_table_stage

with job(snakemake.log[0]):
    study_table_stage(snakemake.params.runs, snakemake.params.recipes, Path(snakemake.output.table))
