"""Sharing results through DVC, for real: the tiny workflow runs in a git repository of the project
files, `make publish` pushes its outputs to a temporary local remote, a fresh clone runs `make
fetch`, and Snakemake in the clone then has nothing to do. Edits in the clone rerun exactly what
they touch, as they would where the results were computed. Also `dvc metrics show`, `dvc plots
show` and `dvc exp run -S` on the same repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny_workflow import REPO, small_params, write_workdir

from dvc.config import Config

pytestmark = pytest.mark.workflow

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
# The project files a clone needs (the stage's deps, the DVC and git set-up, the Makefile).
PROJECT = ["Snakefile", "workflow", "src/sparselab", "environment.yml", "dvc.yaml", ".dvc/config", ".dvc/.gitignore",
           ".dvcignore", ".gitignore", "Makefile", "pyproject.toml", "requirements.lock"]
GIT_ID = ["-c", "user.name=test", "-c", "user.email=test@example.com"]
# and the mask analysis, which reads every sparse checkpoint of the study
SUMMARY = {("aggregate", ""), ("study_table", "study=curve"), ("study_figure", "study=curve"), ("mask_analysis", ""),
           ("all", "")}


def call(command: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=1200)
    if check and result.returncode:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def run(command: list[str], cwd: Path) -> str:
    result = call(command, cwd)
    return result.stdout + result.stderr


def make(target: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """A Makefile target with this interpreter's environment as the set-up (never rebuilt here)."""
    venv = Path(sys.prefix)
    return call(["make", f"VENV={venv}", "-o", f"{venv}/.installed", target], cwd, check)


def plan(workdir: Path) -> list[tuple[str, str]]:
    """(rule, wildcards) of every job `snakemake -n` plans in workdir (its own Snakefile)."""
    out = run([sys.executable, "-m", "snakemake", "--profile", "workflow/profiles/local", "--dry-run"], workdir)
    planned = []
    for rule, body in re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)*)", out, flags=re.M):
        match = re.search(r"wildcards: (.*)", body)
        planned.append((rule, match.group(1) if match else ""))
    return sorted(planned)


def outputs(repo: Path) -> dict[str, bytes]:
    """Every file the workflow wrote (resources/ and results/), by path."""
    return {str(p.relative_to(repo)): p.read_bytes()
            for top in ("resources", "results") for p in sorted((repo / top).rglob("*")) if p.is_file()}


def edited(workdir: Path, where: Path, edit) -> Path:
    """A copy of workdir (with its .snakemake metadata) at `where`, params.yaml changed by `edit`."""
    shutil.copytree(workdir, where, symlinks=True)
    params = yaml.safe_load((where / "params.yaml").read_text())
    edit(params)
    (where / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return where


def other_sparsity(params: dict) -> None:
    params["studies"]["curve"]["sparsities"] = [0.0, 0.7]


def other_learning_rate(params: dict) -> None:
    params["recipes"]["quick"]["learning_rate"] = 2.0e-3


def test_default_remote_is_a_local_folder_outside_the_repository():
    config = Config(dvc_dir=str(REPO / ".dvc")).load_one("repo")
    url = Path(config["remote"][config["core"]["remote"]]["url"])
    assert url.is_absolute() and REPO not in url.parents and url != REPO, url


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, Path]:
    """The tiny workflow run and published from `repo`, then cloned and fetched into `clone`."""
    root = tmp_path_factory.mktemp("sharing")
    repo, remote = root / "repo", root / "remote"
    for name in PROJECT:
        source, target = REPO / name, repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    write_workdir(root, small_params(root))  # tiny model and data in root; local: paths are absolute
    shutil.move(root / "params.yaml", repo / "params.yaml")
    run(["git", "init", "-q", "-b", "main"], repo)
    # the team's shared remote: here a temporary folder, committed like a real one would be
    name = Config(dvc_dir=str(repo / ".dvc")).load_one("repo")["core"]["remote"]
    run([DVC, "remote", "modify", name, "url", str(remote)], repo)
    run(["git", "add", "-A"], repo)
    run(["git", *GIT_ID, "commit", "-q", "-m", "project"], repo)

    run([sys.executable, "-m", "snakemake", "--profile", "workflow/profiles/local"], repo)  # make reproduce
    make("publish", repo)
    assert run(["git", "status", "--porcelain"], repo).split() == ["??", "dvc.lock"]  # nothing else to commit
    run(["git", "add", "dvc.lock"], repo)
    run(["git", *GIT_ID, "commit", "-q", "-m", "results"], repo)

    clone = root / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], root)
    assert not (clone / "results").exists()
    make("fetch", clone)
    return {"root": root, "repo": repo, "clone": clone, "remote": remote}


def test_fetched_clone_has_every_output_byte_for_byte_and_nothing_to_do(shared):
    published, fetched = outputs(shared["repo"]), outputs(shared["clone"])
    assert published, "the workflow wrote nothing"
    assert sorted(fetched) == sorted(published)  # every output is a DVC output: nothing lost
    assert all(fetched[path] == published[path] for path in published)
    assert plan(shared["clone"]) == []
    assert run([DVC, "status", "workflow"], shared["clone"]).strip() == "Data and pipelines are up to date."


def test_one_sparsity_changed_in_the_clone_plans_only_its_chain(shared, tmp_path):
    planned = plan(edited(shared["clone"], tmp_path / "clone", other_sparsity))
    mask, run_ = "mask=tiny/toy/magnitude/global-unstructured/s0.7/seed0", "tiny/toy/magnitude/global-unstructured/s0.7/quick/seed0"
    assert planned == sorted({("prune", mask), ("finetune", f"run={run_}"), ("evaluate_finetuned", f"run={run_}"),
                              ("evaluate_oneshot", f"oneshot_run={run_}"), *SUMMARY})
    assert plan(edited(shared["repo"], tmp_path / "repo", other_sparsity)) == planned


def test_a_recipe_change_in_the_clone_reruns_what_it_would_where_computed(shared, tmp_path):
    # the fetch recorded every job's params: a changed recipe reruns every fine-tune, as at home
    planned = plan(edited(shared["clone"], tmp_path / "clone", other_learning_rate))
    runs = ["tiny/toy/dense/quick/seed0", "tiny/toy/magnitude/global-unstructured/s0.5/quick/seed0"]
    assert planned == sorted({*(("finetune", f"run={r}") for r in runs), *(("evaluate_finetuned", f"run={r}") for r in runs),
                              ("evaluate_oneshot", f"oneshot_run={runs[1]}"), *SUMMARY})
    assert plan(edited(shared["repo"], tmp_path / "repo", other_learning_rate)) == planned


def test_fetch_refuses_to_mark_up_to_date_outputs_of_other_params(shared, tmp_path):
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(shared["repo"]), str(clone)], tmp_path)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    other_learning_rate(params)
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = make("fetch", clone, check=False)
    assert result.returncode != 0
    assert "error: params.yaml or the code differ from what dvc.lock records" in result.stdout + result.stderr
    assert not (clone / ".snakemake/metadata").exists()  # nothing was marked up to date


def test_metrics_and_plots_show_the_fetched_results(shared):
    clone = shared["clone"]
    shown = json.loads(run([DVC, "metrics", "show", "--json"], clone))
    metrics = next(iter(shown.values()))["data"]["results/metrics.json"]["data"]
    assert metrics == json.loads((clone / "results/metrics.json").read_text())
    plots = json.loads(run([DVC, "plots", "show", "--json"], clone))
    assert not plots.get("errors")
    assert sorted(plots["data"]) == ["results/tables/curves.csv", "results/tables/runs.csv"]
    assert all(render["type"] == "vega" for renders in plots["data"].values() for render in renders)


def test_exp_run_set_param_reruns_only_what_the_param_touches(shared, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(shared["repo"], repo, symlinks=True)
    # the stage's command is `snakemake`: found on PATH, as in an activated environment
    out = run(["env", f"PATH={BIN}{os.pathsep}{os.environ['PATH']}", DVC, "exp", "run", "-S", "evaluation.epsilon=0.3"], repo)
    ran = sorted(set(re.findall(r"^(?:local)?rule (\w+):", out, flags=re.M)))
    assert ran == ["aggregate", "all", "study_figure"], out  # epsilon only changes the summaries
    assert yaml.safe_load((repo / "params.yaml").read_text())["evaluation"]["epsilon"] == 0.3
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["workflow"]["params"]["params.yaml"]["evaluation"]["epsilon"] == 0.3
    shown = json.loads(run([DVC, "exp", "show", "--json"], repo))
    experiments = [exp for rev in shown for exp in (rev.get("experiments") or [])]
    assert len(experiments) == 1
