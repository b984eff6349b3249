"""The paper configs under config/: each is a complete config (it replaces params.yaml), validates,
dry-runs the real workflow offline with exactly the grid it implies, plans none of params.yaml's own
runs, and fits its during-training schedules into the GLUE runs it asks for.

Each config gets two dry runs of the real Snakefile in an empty temporary folder, nothing copied:
`--dry-run --quiet rules` (the job table) and a plain `--dry-run` (every planned job and its
paths). With hf: sources a dry run fetches nothing; the hub is switched off to make sure.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sparselab.config import build_method, validate_config
from sparselab.grid import expand_studies, runs_by_key, with_teachers
from sparselab.schedules import total_training_steps
from sparselab.sparsifiers.seven_dyn import OFFICIAL_WINDOWS
from sparselab.vision_config import model_modality

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "config"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
PROFILE = REPO / "workflow" / "profiles" / "local"

# Rows of GLUE's train splits (Hugging Face `glue`), which the dry run cannot see: a during-training
# schedule of an uncapped recipe is otherwise checked only when the fine-tune job starts.
GLUE_TRAIN_ROWS = {
    "cola": 8551, "sst2": 67349, "mrpc": 3668, "qqp": 363846, "stsb": 5749,
    "mnli": 392702, "qnli": 104743, "rte": 2490, "wnli": 635,
}


def config_id(path: Path) -> str:
    return path.name


def test_there_are_paper_configs():
    names = {path.name for path in CONFIGS}
    assert {"essential_sparsity.yaml", "seven.yaml", "pst.yaml", "sparse_recipes.yaml", "scaling_laws.yaml"} <= names


def load(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


# ---------------------------------------------------------------------------------------------
# (a) validation


@pytest.mark.parametrize("path", CONFIGS, ids=config_id)
def test_config_validates(path):
    validated = validate_config(load(path))
    # a complete config: nothing of the embedded default is needed or named
    assert "minilm" not in validated["models"]
    assert "rotten_tomatoes" not in validated["tasks"]


# ---------------------------------------------------------------------------------------------
# (b), (c) dry runs of the real workflow


def snakemake_dry_run(path: Path, workdir: Path, *extra: str) -> tuple[float, str]:
    """Wall seconds and output of a dry run of the real Snakefile with `path` as its only config."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(workdir), "--profile", str(PROFILE), "--configfile", str(path),
               "--dry-run", *extra]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"dry run of {path.name} failed:\n{output[-4000:]}"
    return seconds, output


DRY_RUNS: dict[tuple[str, str], tuple[float, str]] = {}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """dry_run(path, kind): the (seconds, output) of a dry run, kind "table" (--quiet rules) or
    "jobs" (every job listed), run once per config and kind in a fresh empty folder."""

    def run(path: Path, kind: str) -> tuple[float, str]:
        key = (path.name, kind)
        if key not in DRY_RUNS:
            workdir = tmp_path_factory.mktemp(f"{path.stem}_{kind}")
            extra = ("--quiet", "rules") if kind == "table" else ()
            DRY_RUNS[key] = snakemake_dry_run(path, workdir, *extra)
            assert sorted(p.name for p in workdir.iterdir() if p.name != ".snakemake") == [], \
                "a dry run must not create anything but Snakemake's metadata"
        return DRY_RUNS[key]

    return run


def job_table(output: str) -> dict[str, int]:
    """The first `Job stats:` table of a dry run: rule -> count, with `total`."""
    block = output.split("Job stats:", 1)[1]
    table = {}
    for line in block.splitlines()[3:]:
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not match:
            break
        table[match.group(1)] = int(match.group(2))
    assert "total" in table, f"no job table in the dry run's output:\n{output[-3000:]}"
    return table


def one_shot(config: dict, run) -> bool:
    return "scorer" in config["methods"][run.method]


def expected_finetunes(config: dict) -> set[str]:
    """Every {run} key a fine-tune job is planned for: the grid's runs, the dense runs they
    compare with and the dense teachers of the distilled ones."""
    runs = expand_studies(config)
    return set(runs_by_key(with_teachers(runs, config["recipes"]))) | {run.dense_key for run in runs}


def expected_jobs(config: dict) -> dict[str, int]:
    """The job table that the grid of a validated config implies for `snakemake` (target all)."""
    runs = expand_studies(config)
    finetunes = expected_finetunes(config)
    sparse_one_shot = [run for run in runs_by_key(runs).values() if not run.dense and one_shot(config, run)]
    studies = len(config["studies"])
    scaling = config.get("scaling_law") or {}
    grid = [scaling[key] for key in ("widths", "sparsities", "steps")] if scaling else [[]]
    image_models = {run.model for run in runs if model_modality(config["models"][run.model]) == "image"}
    table = {
        "fetch_model": len(({run.model for run in runs} - image_models) | ({scaling["model"]} if scaling else set())),
        "fetch_vision_model": len(image_models),
        "fetch_data": len({run.task for run in runs} | ({scaling["task"]} if scaling else set())),
        "score": len({run.scores_path for run in sparse_one_shot}),
        "prune": len({run.mask_prefix for run in sparse_one_shot}),
        "finetune": len(finetunes),
        "evaluate_finetuned": len(set(runs_by_key(runs)) | {run.dense_key for run in runs}),
        "evaluate_oneshot": len(sparse_one_shot),
        "aggregate": 1 if runs else 0,
        "study_table": studies,
        "near_zero": sum(study.get("figure") == "ssl_vs_supervised" for study in config["studies"].values()),
        "study_figure": studies,
        "scaling_run": len(grid[0]) * len(grid[1]) if scaling else 0,
        "scaling_law": 1 if scaling else 0,
        "all": 1,
    }
    if config.get("mask_analysis"):
        table["mask_analysis"] = 1
    table = {rule: count for rule, count in table.items() if count}
    table["total"] = sum(table.values())
    return table


@pytest.mark.parametrize("path", CONFIGS, ids=config_id)
def test_dry_run_plans_the_grid(path, dry_run):
    config = validate_config(load(path))
    seconds, output = dry_run(path, "table")
    table = job_table(output)
    runs = expand_studies(config)
    # every study lists sparsity 0, so its dense runs are points of the grid, not extras
    assert {run.dense_key for run in runs} <= set(runs_by_key(runs))
    assert table.get("finetune", 0) == len(runs_by_key(with_teachers(runs, config["recipes"])))
    assert table == expected_jobs(config)
    print(f"{path.name}: {table['total']} jobs, {table.get('finetune', 0)} fine-tunes, dry run {seconds:.1f} s")


@pytest.mark.parametrize("path", CONFIGS, ids=config_id)
def test_dry_run_plans_none_of_params_yaml(path, dry_run):
    """--configfile replaces params.yaml: none of its models, tasks or runs is planned."""
    config = validate_config(load(path))
    default = load(REPO / "params.yaml")
    seconds, output = dry_run(path, "jobs")
    print(f"{path.name}: plain dry run (every job listed) {seconds:.1f} s")
    assert "minilm" not in output
    for name in [*default["models"], *default["tasks"]]:
        if name not in config["models"] and name not in config["tasks"]:
            assert name not in output, f"{name!r} of params.yaml is planned with {path.name}"
    planned = set(re.findall(r"^(?:local)?rule finetune:\n(?:    .*\n)*?    wildcards: run=(\S+)$", output, flags=re.M))
    assert planned == expected_finetunes(config)
    fetched = set(re.findall(r"^(?:local)?rule fetch_(?:vision_)?model:\n(?:    .*\n)*?    wildcards: model=(\S+)$", output, flags=re.M))
    assert fetched == set(config["models"])


# ---------------------------------------------------------------------------------------------
# (d) schedules that fit the GLUE runs (the workflow checks them only when a fine-tune job starts)


def training_steps(config: dict, task: str, recipe: dict) -> int:
    """Optimizer steps of a run: GLUE's train rows less the validation split, as fetch_data cuts it."""
    entry = config["tasks"][task]
    match = re.fullmatch(r"hf:glue/(\w+)", entry["source"])
    assert match, f"{task}: not a GLUE source, its size is unknown here"
    rows = GLUE_TRAIN_ROWS[match.group(1)]
    rows -= round(rows * entry["split"]["validation"])
    if recipe.get("max_train_examples") is not None:
        rows = min(rows, recipe["max_train_examples"])
    return total_training_steps(rows, recipe["epochs"] * recipe.get("epochs_multiplier", 1), recipe["batch_size"])


@pytest.mark.parametrize("path", CONFIGS, ids=config_id)
def test_during_training_schedules_fit(path):
    """SEVEN's official RTE and STS-B windows outlast 10 epochs (methods.md section 3): every
    during-training method of a study must fit every run of that study."""
    config = validate_config(load(path))
    for study_name, study in config["studies"].items():
        for method_name in study["methods"]:
            method = config["methods"][method_name]
            if "sparsifier" not in method:
                continue
            sparsifier = build_method(method)
            for task in study["tasks"]:
                for recipe_name in study["recipes"]:
                    steps = training_steps(config, task, config["recipes"][recipe_name])
                    try:
                        sparsifier.check_steps(steps)
                    except ValueError as error:
                        pytest.fail(f"{path.name}: study {study_name}, method {method_name}, task {task}, "
                                    f"recipe {recipe_name}: {error}")


@pytest.mark.parametrize("path", CONFIGS, ids=config_id)
def test_seven_presets_match_their_tasks(path):
    """A seven_dyn preset is one task's official window and target: its studies run that task only,
    at that target sparsity (and dense)."""
    config = validate_config(load(path))
    for study_name, study in config["studies"].items():
        presets = {config["methods"][m].get("preset") for m in study["methods"]
                   if config["methods"][m].get("sparsifier") == "seven_dyn"} - {None, ""}
        for preset in presets:
            assert study["tasks"] == [preset], f"{study_name}: preset {preset} with tasks {study['tasks']}"
            target = OFFICIAL_WINDOWS[preset][2]
            assert sorted(study["sparsities"]) == [0.0, target], f"{study_name}: official target {target}"


def test_seven_gmp_peers_prune_in_the_official_windows():
    """seven.yaml's gmp_<task> peers prune over the same steps as SEVEN's official window."""
    config = validate_config(load(CONFIG_DIR / "seven.yaml"))
    checked = 0
    for study in config["studies"].values():
        for method_name in study["methods"]:
            method = config["methods"][method_name]
            if method.get("sparsifier") != "gmp":
                continue
            task = method_name.removeprefix("gmp_")
            assert study["tasks"] == [task]
            start, length, _ = OFFICIAL_WINDOWS[task]
            steps = training_steps(config, task, config["recipes"][study["recipes"][0]])
            tolerance = max(1.0, 1e-4 * steps)  # the fractions are written with 4 decimals
            assert abs(method["start"] * steps - start) <= tolerance, (method_name, method["start"] * steps, start)
            assert abs(method["end"] * steps - (start + length)) <= tolerance, (method_name, method["end"] * steps)
            assert method["frequency"] == 1
            checked += 1
    assert checked == 8


# ---------------------------------------------------------------------------------------------
# (e) the README documents every config


def test_readme_lists_every_config():
    readme = (CONFIG_DIR / "README.md").read_text(encoding="utf-8")
    for path in CONFIGS:
        assert f"config/{path.name}" in readme, f"config/README.md does not mention config/{path.name}"
