"""Rule scaling_law: fit the law to the grid, bootstrap its coefficients, draw the figure."""

from pathlib import Path

from sparselab.jobs import job, job_imports

with job_imports():
    from sparselab.pretraining_studies import scaling_law_stage

with job(snakemake.log[0]):
    scaling_law_stage(
        [Path(path) for path in snakemake.input.records],
        snakemake.params.fit,
        Path(snakemake.output.points),
        Path(snakemake.output.coefficients),
        Path(snakemake.output.png),
        Path(snakemake.output.pdf),
    )
