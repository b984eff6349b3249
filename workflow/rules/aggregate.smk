# Aggregate the evaluations into tidy tables, then draw each study's figure. Every study has a
# target rule of its own name (`snakemake method_comparison`) that builds only what its figure
# needs, reusing whatever other studies computed already.


localrules:
    aggregate,
    study_table,
    near_zero,
    study_figure,


rule aggregate:
    input:
        records=evaluation_targets(RUNS),
    output:
        runs=report("results/tables/runs.csv", caption="../report/runs_table.rst", category="Tables"),
        curves=report("results/tables/curves.csv", caption="../report/curves_table.rst", category="Tables"),
        metrics="results/metrics.json",
    params:
        runs=runs_param(RUNS),
        recipes=recipes_param(RUNS),
        epsilon=config["evaluation"]["epsilon"],
    conda:
        "../../environment.yml"
    log:
        "results/logs/aggregate/aggregate.log",
    script:
        "../scripts/aggregate.py"


rule study_table:
    input:
        records=lambda w: evaluation_targets(STUDY_RUNS[w.study], w.study),
    output:
        table=report(
            "results/tables/{study}.csv",
            caption="../report/study_table.rst",
            category="Tables",
            labels={"table": "{study}"},
        ),
    params:
        runs=lambda w: runs_param(STUDY_RUNS[w.study], w.study),
        recipes=lambda w: recipes_param(STUDY_RUNS[w.study]),
    conda:
        "../../environment.yml"
    log:
        "results/logs/study_table/{study}.log",
    script:
        "../scripts/study_table.py"


rule near_zero:
    input:
        models=near_zero_inputs,
    output:
        table=report(
            "results/tables/near_zero/{study}.csv",
            caption="../report/near_zero_table.rst",
            category="Tables",
            labels={"table": "{study} near-zero weights"},
        ),
    params:
        prunable=lambda w: {m: config["models"][m]["prunable"] for m in config["studies"][w.study]["models"]},
        descriptions=lambda w: {m: config["models"][m].get("description", m) for m in config["studies"][w.study]["models"]},
        taus=lambda w: config["studies"][w.study].get("taus", [1.0e-3, 5.0e-3, 1.0e-2, 2.0e-2]),
    conda:
        "../../environment.yml"
    log:
        "results/logs/near_zero/{study}.log",
    script:
        "../scripts/near_zero.py"


rule study_figure:
    input:
        unpack(figure_inputs),
    output:
        png=report(
            "results/figures/{study}.png",
            caption="../report/study_figure.rst",
            category="Figures",
            labels={"study": "{study}"},
        ),
        pdf="results/figures/{study}.pdf",
    params:
        kind=lambda w: config["studies"][w.study]["figure"],
        epsilon=config["evaluation"]["epsilon"],
    conda:
        "../../environment.yml"
    log:
        "results/logs/study_figure/{study}.log",
    script:
        "../scripts/study_figure.py"


taken = sorted(set(config["studies"]) & {rule.name for rule in workflow.rules})
if taken:
    sys.exit(f"error: params.yaml: studies.{taken[0]}: the name is taken by a rule of the workflow "
             f"(allowed: any name but {', '.join(sorted(rule.name for rule in workflow.rules))})")

for study_name in config["studies"]:

    rule:
        name:
            study_name
        input:
            study_outputs(study_name),
