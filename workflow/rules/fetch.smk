# Fetch models and datasets; each fetched folder records its source and sha256s (source.json).


localrules:
    fetch_model,
    fetch_data,


rule fetch_model:
    output:
        model=directory("resources/models/{model}"),
    params:
        source=lambda w: config["models"][w.model]["source"],
        sha256=lambda w: config["models"][w.model].get("sha256"),
        member=lambda w: config["models"][w.model].get("member"),
        trust_remote_code=lambda w: trust_remote_code(w.model),
    conda:
        "../../environment.yml"
    log:
        "results/logs/fetch_model/{model}.log",
    script:
        "../scripts/fetch_model.py"


rule fetch_data:
    output:
        data=directory("resources/data/{task}"),
    params:
        entry=lambda w: config["tasks"][w.task],
    conda:
        "../../environment.yml"
    log:
        "results/logs/fetch_data/{task}.log",
    script:
        "../scripts/fetch_data.py"
