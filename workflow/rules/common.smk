# Validation of params.yaml and of the results folder (before any job starts), and the lookups
# rules share.

import re
import sys

from sparselab.config import ConfigError, validate_config
from sparselab.grid import expand_studies, runs_by_key, study_runs, teacher_of, upstream_run, upstream_runs, with_teachers
from sparselab.io import OutputWriteError, check_writable
from sparselab.preflight import check_on_disk
from sparselab.vision_config import model_modality


try:
    config.update(validate_config(config))
    check_on_disk(config)
    check_writable("results")
except (ConfigError, OutputWriteError) as error:
    sys.exit(f"error: {error}")

RUNS = expand_studies(config)
# the runs, the dense teachers of the distilled ones and the dense runs whose backbones are models
# of their own (`finetuned:` sources): fine-tuned, not tabled unless studied
RUN_BY_KEY = runs_by_key(with_teachers(RUNS, config["recipes"]) + upstream_runs(config["models"]))
# models by modality: each has its fetch rule (fetch_model for text, fetch_vision_model for images)
IMAGE_MODELS = sorted(name for name, entry in config["models"].items() if model_modality(entry) == "image")
TEXT_MODELS = sorted(set(config["models"]) - set(IMAGE_MODELS))
STUDY_RUNS = {name: study_runs(study, config["methods"]) for name, study in config["studies"].items()}


def one_shot(run):
    """Scored and pruned before fine-tuning (a `scorer:` method), as opposed to a during-training one."""
    return "scorer" in config["methods"][run.method]


MASK_RUN_BY_PREFIX = {
    run.mask_prefix.removeprefix("results/masks/"): run for run in RUN_BY_KEY.values() if not run.dense and one_shot(run)
}


def one_of(keys):
    """A wildcard constraint matching exactly the given keys."""
    return "|".join(re.escape(key) for key in sorted(keys)) or "(?!)"


# The shapes of the path keys (see the path grammar in workflow/Snakefile). Shapes rather than
# lists of every key: Snakemake matches each constraint once per job, and an alternation of
# thousands of keys made the dry run of a paper-scale grid twice as slow.
SPARSE_RUN_KEY = r"[^/]+/[^/]+/[^/]+/[^/]+/s[^/]+/[^/]+/seed\d+"
DENSE_RUN_KEY = r"[^/]+/[^/]+/dense/[^/]+/seed\d+"
MASK_KEY = r"[^/]+/[^/]+/[^/]+/[^/]+/s[^/]+/seed\d+"


wildcard_constraints:
    model=r"[^/]+",
    task=r"[^/]+",
    method=r"[^/]+",
    seed=r"\d+",
    run=f"{DENSE_RUN_KEY}|{SPARSE_RUN_KEY}",
    mask=MASK_KEY,
    oneshot_run=SPARSE_RUN_KEY,
    study=one_of(config["studies"]),


def run_of(wildcards):
    return RUN_BY_KEY[wildcards.run]


def oneshot_of(wildcards):
    return RUN_BY_KEY[wildcards.oneshot_run]


def model_dir(run):
    return f"resources/models/{run.model}"


def data_dir(run):
    return f"resources/data/{run.task}"


def prunable_of(run):
    return config["models"][run.model]["prunable"]


def recipe_of(run):
    return config["recipes"][run.recipe]


def evaluation_settings():
    """The evaluation keys that change an evaluation's output (epsilon only changes the tables)."""
    return {k: v for k, v in config["evaluation"].items() if k != "epsilon"}


# The runs of the studies that ask for the reference without retraining (a study's pruned_reference).
PRUNED_REFERENCE_RUNS = {
    run for name, runs in STUDY_RUNS.items() if config["studies"][name]["pruned_reference"] for run in runs
}


def stages_of(run, study=None):
    """The evaluations of a run: `finetuned`, and `pruned` (the dense fine-tuned model pruned
    one-shot, no retraining) for a one-shot run if `study` asks for it, or without a study, any
    study of the run."""
    wanted = config["studies"][study]["pruned_reference"] if study else run in PRUNED_REFERENCE_RUNS
    return ["pruned", "finetuned"] if wanted and one_shot(run) else ["finetuned"]


def evaluation_targets(runs, study=None):
    """Every evaluation record of `runs` (as `study` evaluates them: stages_of), and their dense runs'."""
    targets = {f"results/eval/{run.dense_key}/finetuned.json" for run in runs}
    for run in runs:
        targets |= {run.eval_path(stage) for stage in stages_of(run, study)}
    return sorted(targets)


def runs_param(runs, study=None):
    """The runs as plain dicts with the stages they were evaluated at (a rule's params)."""
    return [{**run.as_dict(), "stages": stages_of(run, study)} for run in runs]


def recipes_param(runs):
    """What the tables say of the recipes of `runs`: the budget and whether it distils."""
    return {name: {"epochs_multiplier": config["recipes"][name].get("epochs_multiplier", 1),
                   "distillation": config["recipes"][name].get("distillation")}
            for name in sorted({run.recipe for run in runs})}


def study_outputs(study):
    """The table and the figure a study's target builds."""
    return [f"results/tables/{study}.csv", f"results/figures/{study}.png", f"results/figures/{study}.pdf"]


def during_training(run):
    """What a during-training method needs in the fine-tune job: its entry, target and prunable set."""
    if run.dense or one_shot(run):
        return None
    return {
        "method": config["methods"][run.method],
        "sparsity": run.sparsity,
        "allocation": run.allocation,
        "structure": run.structure,
        "prunable": prunable_of(run),
    }


def finetune_inputs(wildcards):
    """Pretrained model and data, plus the prune stage's mask for a sparse one-shot run and the
    teacher's checkpoint for a distilled one."""
    run = run_of(wildcards)
    inputs = {"model": model_dir(run), "data": data_dir(run)}
    if not run.dense and one_shot(run):
        inputs["mask"] = f"{run.mask_prefix}/mask.safetensors"
    teacher = teacher_of(run, config["recipes"])
    if teacher is not None:
        inputs["teacher"] = f"results/finetune/{teacher.key}/model.compact.safetensors"
    return inputs


def vision_model_inputs(wildcards):
    """The checkpoint a `finetuned:` image model is the backbone of (nothing for other sources)."""
    run = upstream_run(config["models"][wildcards.model]["source"])
    return {} if run is None else {"checkpoint": f"results/finetune/{run.key}/model.compact.safetensors"}


def near_zero_inputs(wildcards):
    """The fetched model folders an ssl_vs_supervised study compares."""
    return [f"resources/models/{model}" for model in config["studies"][wildcards.study]["models"]]


def figure_inputs(wildcards):
    """A study's table, and for ssl_vs_supervised the near-zero shares of its backbones."""
    inputs = {"table": f"results/tables/{wildcards.study}.csv"}
    if config["studies"][wildcards.study]["figure"] == "ssl_vs_supervised":
        inputs["near_zero"] = f"results/tables/near_zero/{wildcards.study}.csv"
    return inputs


def trust_remote_code(model):
    """Whether a model may run code from its own files: its entry's opt-in (default false)."""
    return config["models"][model]["trust_remote_code"]


def mask_analysis_runs():
    """The sparse runs of the studies that `mask_analysis` lists, each once (none if it is absent)."""
    studies = config.get("mask_analysis", {}).get("studies", [])
    return sorted({run for study in studies for run in STUDY_RUNS[study] if not run.dense})


ANALYSIS_OUTPUTS = {
    "mask_analysis": ["results/tables/mask_overlap.csv", "results/tables/mask_modules.csv"],
    "scaling_law": ["results/tables/scaling_law.csv", "results/tables/scaling_law_points.csv"],
    "abrupt_sparsification": ["results/tables/abrupt_sparsification.csv", "results/tables/abrupt_essential.csv"],
}


def analysis_outputs(name=None):
    """The tables and figure of one analysis, or of every analysis params.yaml asks for (targets of `all`)."""
    names = [name] if name else [n for n in ANALYSIS_OUTPUTS if n in config]
    return [path for n in names
            for path in [*ANALYSIS_OUTPUTS[n], f"results/figures/{n}.png", f"results/figures/{n}.pdf"]]


SCALING = config.get("scaling_law")
ABRUPT = config.get("abrupt_sparsification")
# Pre-training settings shared by every grid point (the grid's lists and the fit are not).
PRETRAIN_KEYS = ["layers", "heads", "batch_size", "max_length", "learning_rate", "warmup_steps", "vocab_size", "seed"]


def scaling_records():
    """The record of every point of the scaling-law grid."""
    return [f"results/scaling/w{width}/s{sparsity:g}/n{steps}/record.json"
            for width in SCALING["widths"] for sparsity in SCALING["sparsities"] for steps in SCALING["steps"]]


def scaling_settings(wildcards):
    """The PretrainConfig settings of one width and sparsity of the grid (the length is each run's)."""
    return {**{key: SCALING[key] for key in PRETRAIN_KEYS}, "gmp_frequency": SCALING["gmp_frequency"],
            "width": int(wildcards.width), "sparsity": float(wildcards.sparsity)}


def abrupt_settings():
    """The PretrainConfig settings of the abrupt-sparsification runs (the fraction is the job's)."""
    return {**{key: ABRUPT[key] for key in PRETRAIN_KEYS}, "width": ABRUPT["width"], "steps": ABRUPT["steps"],
            "checkpoint_every": ABRUPT["checkpoint_every"]}


def abrupt_fractions():
    return [f"{fraction:g}" for fraction in ABRUPT["fractions"]]
