# Evaluate: after fine-tuning, and the dense fine-tuned model pruned one-shot without retraining.


rule evaluate_finetuned:
    input:
        checkpoint="results/finetune/{run}/model.compact.safetensors",
        train_metrics="results/finetune/{run}/train_metrics.json",
        model=lambda w: model_dir(run_of(w)),
        data=lambda w: data_dir(run_of(w)),
    output:
        record="results/eval/{run}/finetuned.json",
    params:
        prunable=lambda w: prunable_of(run_of(w)),
        evaluation=evaluation_settings(),
        max_length=lambda w: recipe_of(run_of(w))["max_length"],
        trust_remote_code=lambda w: trust_remote_code(run_of(w).model),
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../environment.yml"
    log:
        "results/logs/evaluate_finetuned/{run}.log",
    script:
        "../scripts/evaluate_finetuned.py"


rule evaluate_oneshot:
    input:
        dense=lambda w: f"results/finetune/{oneshot_of(w).dense_key}/model.compact.safetensors",
        model=lambda w: model_dir(oneshot_of(w)),
        data=lambda w: data_dir(oneshot_of(w)),
    output:
        record="results/eval/{oneshot_run}/pruned.json",
    params:
        method=lambda w: config["methods"][oneshot_of(w).method],
        prunable=lambda w: prunable_of(oneshot_of(w)),
        allocation=lambda w: oneshot_of(w).allocation,
        structure=lambda w: oneshot_of(w).structure,
        sparsity=lambda w: oneshot_of(w).sparsity,
        seed=lambda w: oneshot_of(w).seed,
        evaluation=evaluation_settings(),
        max_length=lambda w: recipe_of(oneshot_of(w))["max_length"],
        trust_remote_code=lambda w: trust_remote_code(oneshot_of(w).model),
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../environment.yml"
    log:
        "results/logs/evaluate_oneshot/{oneshot_run}.log",
    script:
        "../scripts/evaluate_oneshot.py"
