"""Rule study_figure: a study's figure (its `figure` kind) as PNG and PDF."""

from pathlib import Path

from sparselab.jobs import job, job_imports

with job_imports():
    from sparselab.figures import study_figure

with job(snakemake.log[0]):
    study_figure(
        snakemake.params.kind,
        Path(snakemake.input.table),
        snakemake.params.epsilon,
        Path(snakemake.output.png),
        Path(snakemake.output.pdf),
        extras={name: Path(path) for name, path in snakemake.input.items() if name != "table"},
    )
