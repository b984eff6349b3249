# Importance scores of the pretrained model (the scorer registry of src/sparselab/scoring).


rule score:
    input:
        model="resources/models/{model}",
        data="resources/data/{task}",
    output:
        scores="results/scores/{model}/{task}/{method}/seed{seed}/scores.safetensors",
    params:
        method=lambda w: config["methods"][w.method],
        prunable=lambda w: config["models"][w.model]["prunable"],
        seed=lambda w: int(w.seed),
        trust_remote_code=lambda w: trust_remote_code(w.model),
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    priority: 3
    conda:
        "../../environment.yml"
    log:
        "results/logs/score/{model}/{task}/{method}/seed{seed}.log",
    script:
        "../scripts/score.py"
