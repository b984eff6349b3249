# Aggregate every evaluation into tidy tables, then draw the figures of the report.


localrules:
    aggregate,
    figure_essential_sparsity,


rule aggregate:
    input:
        records=evaluation_targets(),
    output:
        runs="results/tables/runs.csv",
        essential="results/tables/essential_sparsity.csv",
        metrics="results/metrics.json",
    params:
        runs=[{**run.as_dict(), "stages": stages_of(run)} for run in RUNS],
        epsilon=config["evaluation"]["epsilon"],
    conda:
        "../../environment.yml"
    log:
        "results/logs/aggregate/aggregate.log",
    script:
        "../scripts/aggregate.py"


rule figure_essential_sparsity:
    input:
        runs=rules.aggregate.output.runs,
        essential=rules.aggregate.output.essential,
    output:
        png=report(
            "results/figures/essential_sparsity.png",
            caption="../report/essential_sparsity.rst",
            category="Figures",
        ),
        pdf="results/figures/essential_sparsity.pdf",
    conda:
        "../../environment.yml"
    log:
        "results/logs/figures/essential_sparsity.log",
    script:
        "../scripts/figure_essential_sparsity.py"
