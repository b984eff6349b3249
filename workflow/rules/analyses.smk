# Analyses across runs: the masks' overlap and where the pruned weights sit.


localrules:
    mask_analysis,


rule mask_analysis:
    input:
        checkpoints=[f"results/finetune/{run.key}/model.compact.safetensors" for run in mask_analysis_runs()],
    output:
        overlap=report("results/tables/mask_overlap.csv", caption="../report/mask_tables.rst", category="Tables"),
        modules=report("results/tables/mask_modules.csv", caption="../report/mask_tables.rst", category="Tables"),
        png=report("results/figures/mask_analysis.png", caption="../report/mask_analysis.rst", category="Figures"),
        pdf="results/figures/mask_analysis.pdf",
    params:
        runs=[run.as_dict() for run in mask_analysis_runs()],
    conda:
        "../../environment.yml"
    log:
        "results/logs/mask_analysis/mask_analysis.log",
    script:
        "../scripts/mask_analysis.py"
