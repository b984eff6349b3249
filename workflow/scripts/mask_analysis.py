"""Rule mask_analysis: overlaps of the runs' masks and the share of pruned weights per module type."""

from pathlib import Path

from sparselab.jobs import job, job_imports

with job_imports():
    from sparselab.mask_analysis import mask_analysis_stage

with job(snakemake.log[0]):
    mask_analysis_stage(
        snakemake.params.runs,
        [Path(path) for path in snakemake.input.checkpoints],
        Path(snakemake.output.overlap),
        Path(snakemake.output.modules),
        Path(snakemake.output.png),
        Path(snakemake.output.pdf),
    )
