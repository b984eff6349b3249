"""Rule scaling_law: fit the law to the grid, bootstrap its coefficients, draw the figure."""

from pathlib import Path

from sparselab.logs import log_to
from sparselab.pretraining_studies import scaling_law_stage

with log_to(snakemake.log[0]):
    scaling_law_stage(
        [Path(path) for path in snakemake.input.records],
        snakemake.params.fit,
        Path(snakemake.output.points),
        Path(snakemake.output.coefficients),
        Path(snakemake.output.png),
        Path(snakemake.output.pdf),
    )
