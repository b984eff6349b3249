# Fine-tune: with the prune stage's mask held fixed (one-shot methods), under a during-training
# sparsifier (gmp, ...), or densely (the dense run). A GPU job on a cluster.
# Priorities: scoring and pruning first (cheap, they unlock fine-tunes), then fine-tunes, then
# evaluations, so that short jobs fill the end of a run instead of one long job on one core.
# Resumable: the job saves its training state in results/finetune/{run}/.resume/ (not an output)
# every recipe.checkpoint_every steps and when SIGTERM/SIGUSR1 stops it (a SLURM time limit or
# preemption), then fails; its next run (a retry, a requeue or a rerun) continues from that state.


rule finetune:
    input:
        unpack(finetune_inputs),
    output:
        checkpoint="results/finetune/{run}/model.compact.safetensors",
        config="results/finetune/{run}/config.json",
        train_log="results/finetune/{run}/train_log.csv",
        train_metrics="results/finetune/{run}/train_metrics.json",
    params:
        recipe=lambda w: recipe_of(run_of(w)),
        seed=lambda w: run_of(w).seed,
        during_training=lambda w: during_training(run_of(w)),
        trust_remote_code=lambda w: trust_remote_code(run_of(w).model),
    threads: 2
    resources:
        mem_mb=lambda w, attempt: 8000 * attempt,
        runtime=lambda w, attempt: 120 * attempt,
    priority: 2
    conda:
        "../../environment.yml"
    log:
        "results/logs/finetune/{run}.log",
    script:
        "../scripts/finetune.py"
