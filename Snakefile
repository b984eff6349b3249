# Keeps `snakemake` working from the repository root; the workflow lives in workflow/Snakefile.
# A plain `include:` would drop the included file's default target (snakemake issue #2773), so the
# include keeps it: `snakemake` with no target runs workflow/Snakefile's `rule all`.
workflow.include("workflow/Snakefile", overwrite_default_target=True)
