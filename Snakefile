# Keeps `snakemake` working from the repository root; the workflow lives in workflow/.
include: "workflow/Snakefile"
