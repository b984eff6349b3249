"""Rule study_table: the evaluations of one study's runs as a tidy table."""

from pathlib import Path

from sparselab.aggregate import study_table_stage
from sparselab.logs import log_to

with log_to(snakemake.log[0]):
    study_table_stage(snakemake.params.runs, snakemake.params.recipes, Path(snakemake.output.table))
