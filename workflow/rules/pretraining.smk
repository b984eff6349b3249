# Tiny BERTs pre-trained from scratch: the miniature sparse scaling law and abrupt sparsification.
# Each exists only when params.yaml has its section.


if SCALING:

    # One job per width and sparsity trains every length of the grid (a job's start-up costs
    # about as much as a short run).
    rule scaling_run:
        input:
            model=f"resources/models/{SCALING['model']}",
            data=f"resources/data/{SCALING['task']}",
        output:
            records=expand("results/scaling/w{{width}}/s{{sparsity}}/n{steps}/record.json", steps=SCALING["steps"]),
        params:
            settings=scaling_settings,
            steps=SCALING["steps"],
        wildcard_constraints:
            width=r"\d+",
            sparsity=r"[0-9.]+",
        threads: 1
        resources:
            mem_mb=4000,
            runtime=60,
        conda:
            "../../environment.yml"
        log:
            "results/logs/scaling_run/w{width}-s{sparsity}.log",
        script:
            "../scripts/scaling_run.py"

    rule scaling_law:
        input:
            records=scaling_records(),
        output:
            coefficients=report("results/tables/scaling_law.csv", caption="../report/scaling_law.rst", category="Tables"),
            points=report("results/tables/scaling_law_points.csv", caption="../report/scaling_law.rst", category="Tables"),
            png=report("results/figures/scaling_law.png", caption="../report/scaling_law.rst", category="Figures"),
            pdf="results/figures/scaling_law.pdf",
        params:
            fit=SCALING["fit"],
        conda:
            "../../environment.yml"
        log:
            "results/logs/scaling_law/scaling_law.log",
        script:
            "../scripts/scaling_law.py"


if ABRUPT:

    rule abrupt_pretrain:
        input:
            model=f"resources/models/{ABRUPT['model']}",
            data=f"resources/data/{ABRUPT['task']}",
        output:
            run=directory("results/abrupt/pretrain/f{fraction}"),
        params:
            fraction=lambda w: float(w.fraction),
            settings=abrupt_settings(),
            taus=ABRUPT["taus"],
        wildcard_constraints:
            fraction=r"[0-9.]+",
        threads: 1
        resources:
            mem_mb=4000,
            runtime=60,
        conda:
            "../../environment.yml"
        log:
            "results/logs/abrupt_pretrain/f{fraction}.log",
        script:
            "../scripts/abrupt_pretrain.py"

    rule abrupt_downstream:
        input:
            run=rules.abrupt_pretrain.output.run,
            data=f"resources/data/{ABRUPT['task']}",
        output:
            run=directory("results/abrupt/downstream/f{fraction}"),
        params:
            sparsities=ABRUPT["downstream"]["sparsities"],
            recipe=config["recipes"][ABRUPT["downstream"]["recipe"]],
            epsilon=config["evaluation"]["epsilon"],
            evaluation=evaluation_settings(),
            seed=ABRUPT["downstream"]["seed"],
        wildcard_constraints:
            fraction=r"[0-9.]+",
        threads: 1
        resources:
            mem_mb=4000,
            runtime=60,
        conda:
            "../../environment.yml"
        log:
            "results/logs/abrupt_downstream/f{fraction}.log",
        script:
            "../scripts/abrupt_downstream.py"

    rule abrupt_sparsification:
        input:
            runs=expand(rules.abrupt_pretrain.output.run, fraction=abrupt_fractions()),
            downstream=expand(rules.abrupt_downstream.output.run, fraction=abrupt_fractions()),
        output:
            shares=report(
                "results/tables/abrupt_sparsification.csv",
                caption="../report/abrupt_sparsification.rst",
                category="Tables",
            ),
            essential=report(
                "results/tables/abrupt_essential.csv", caption="../report/abrupt_sparsification.rst", category="Tables"
            ),
            png=report(
                "results/figures/abrupt_sparsification.png",
                caption="../report/abrupt_sparsification.rst",
                category="Figures",
            ),
            pdf="results/figures/abrupt_sparsification.pdf",
        conda:
            "../../environment.yml"
        log:
            "results/logs/abrupt_sparsification/abrupt_sparsification.log",
        script:
            "../scripts/abrupt_sparsification.py"
