"""Benchmark: the time Snakemake takes to plan a paper-scale grid, and the fixed cost of one job.

Target of the sharing issue: a dry run of a paper-scale grid takes at most 30 s. The grid is
8 GLUE tasks x 7 methods (magnitude, taylor, seven_pre, wanda, gmp, seven_dyn, pst, at their
native allocations) x 10 sparsities (0 and 0.1 ... 0.9) x 3 seeds on one model, some 4,900 jobs.
Its params.yaml is written to a temporary folder with `hf:` sources (a dry run fetches nothing;
the methods, recipe, evaluation settings and prunable set are those of the repository's
params.yaml), and `snakemake --dry-run --quiet rules` of the real Snakefile and local profile runs
there as a fresh process, as a user would type it (Python start, imports, config validation, DAG,
the job table, which gives the job count). The median wall time of --repeats runs is printed,
with the CPU time (user + system of the process, which load from other processes on the machine
does not inflate). With --verbose-too it also times the plain dry run that prints every job (what
`snakemake -n` shows); --snakefile plans another copy of the workflow (to compare a change).

With --job-overhead it also runs a throw-away workflow under the local profile: --jobs trivial
jobs of each kind, one after another (1 core): a shell job (`touch`, Snakemake's own cost per
job) and a `script:` job that only imports sparselab.pipeline, as every job script of this
workflow does (a fresh Python with torch and transformers). Wall and CPU seconds per job are printed.

    .venv/bin/python bench/dry_run.py [--repeats 3] [--verbose-too] [--job-overhead] [--jobs 8]
        [--snakefile path/to/Snakefile] [--record FILE]
"""

from __future__ import annotations

import argparse
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from targets import record

REPO = Path(__file__).resolve().parents[1]
PROFILE = ["--profile", str(REPO / "workflow/profiles/local")]
GLUE = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]
METHODS = ["magnitude", "taylor", "seven_pre", "wanda", "gmp", "seven_dyn", "pst"]
SPARSITIES = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
SEEDS = [0, 1, 2]
# the standard recipe of params.yaml at 1x, 2x and 4x its budget, each with and without distillation
PAPER_RECIPES = {
    "standard_x2": {"base": "standard", "epochs_multiplier": 2},
    "standard_x4": {"base": "standard", "epochs_multiplier": 4},
    "standard_kd": {"base": "standard", "distillation": {"teacher_recipe": "standard"}},
    "standard_kd_x2": {"base": "standard_kd", "epochs_multiplier": 2},
    "standard_kd_x4": {"base": "standard_kd", "epochs_multiplier": 4},
}


def paper_params() -> dict:
    """The paper-scale grid over the repository's own method, recipe and evaluation settings."""
    ours = yaml.safe_load((REPO / "params.yaml").read_text())
    prunable = next(iter(ours["models"].values()))["prunable"]
    return {
        "models": {"bert": {"source": "hf:bert-base-uncased", "prunable": prunable}},
        # GLUE defines columns, labels and the test split (its validation set): only a held-out
        # validation fraction of the training set is ours to choose.
        "tasks": {task: {"source": f"hf:glue/{task}", "split": {"validation": 0.1, "seed": 0}} for task in GLUE},
        "methods": {name: ours["methods"][name] for name in METHODS},
        "recipes": PAPER_RECIPES | {"standard": ours["recipes"]["standard"]},
        "studies": {
            "paper": {
                "figure": "method_comparison",
                "models": ["bert"],
                "tasks": GLUE,
                "methods": METHODS,
                "allocations": ["native"],
                "structures": ["unstructured"],
                "sparsities": SPARSITIES,
                "recipes": ["standard", *PAPER_RECIPES],
                "seeds": SEEDS,
            }
        },
        "evaluation": ours["evaluation"],
    }


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system, unaffected by other load) and the output."""
    cpu, start = child_cpu(), time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - start, child_cpu() - cpu
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds, cpu, result.stdout + result.stderr


def job_count(output: str) -> int:
    """The `total` row of the dry run's job table."""
    match = re.search(r"^total\s+(\d+)", output, flags=re.M)
    if not match:
        sys.exit(f"no job table in the dry run's output:\n{output[-3000:]}")
    return int(match.group(1))


def dry_runs(folder: Path, snakefile: Path, repeats: int, extra: list[str]) -> tuple[list[float], list[float], int]:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(folder),
               *PROFILE, "--dry-run", *extra]
    walls, cpus, jobs = [], [], 0
    for _ in range(repeats):
        wall, cpu, output = timed(command, folder)
        walls.append(wall)
        cpus.append(cpu)
        jobs = job_count(output)
    return walls, cpus, jobs


def summary(walls: list[float], cpus: list[float]) -> str:
    runs = ", ".join(f"{w:.1f}" for w in walls)
    return f"median {statistics.median(walls):.1f} s wall ({runs}), {statistics.median(cpus):.1f} s CPU"


OVERHEAD_SNAKEFILE = """
N = {jobs}
rule all:
    input: expand("shell/{{i}}", i=range(N)), expand("script/{{i}}", i=range(N))
rule shell_job:
    output: "shell/{{i}}"
    shell: "touch {{output}}"
rule script_job:
    output: "script/{{i}}"
    script: "noop.py"
"""
OVERHEAD_SCRIPT = """
import sparselab.pipeline  # what every job script of the workflow imports first
from pathlib import Path
Path(snakemake.output[0]).touch()
"""


def job_overhead(folder: Path, jobs: int) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds per job of a trivial shell job and of a trivial script job, one at a
    time: (the run - the same invocation with nothing left to do) / jobs."""
    (folder / "Snakefile").write_text(OVERHEAD_SNAKEFILE.format(jobs=jobs))
    (folder / "noop.py").write_text(OVERHEAD_SCRIPT)
    base = [sys.executable, "-m", "snakemake", "--directory", str(folder), *PROFILE, "--cores", "1", "--quiet", "all"]
    per_job = {}
    for rule in ("shell_job", "script_job"):
        wall, cpu, _ = timed([*base, "--until", rule], folder)
        empty_wall, empty_cpu, _ = timed([*base, "--until", rule], folder)
        per_job[rule] = ((wall - empty_wall) / jobs, (cpu - empty_cpu) / jobs)
    return per_job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--snakefile", type=Path, default=REPO / "Snakefile", help="the workflow to plan (default ours)")
    parser.add_argument("--verbose-too", action="store_true", help="also time the dry run that lists every job")
    parser.add_argument("--job-overhead", action="store_true", help="also time trivial jobs under the local profile")
    parser.add_argument("--jobs", type=int, default=8, help="trivial jobs of each kind for --job-overhead")
    parser.add_argument("--record", type=Path, help="append the target rows to this JSON-lines file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dry_run_") as tmp:
        folder = Path(tmp)
        (folder / "params.yaml").write_text(yaml.safe_dump(paper_params(), sort_keys=False))
        grid = f"{len(GLUE)} tasks x {len(METHODS)} methods x {len(SPARSITIES)} sparsities x {len(SEEDS)} seeds"
        walls, cpus, jobs = dry_runs(folder, args.snakefile, args.repeats, ["--quiet", "rules"])
        print(f"paper grid ({grid}): {jobs} jobs")
        print(f"snakemake --dry-run --quiet rules: {summary(walls, cpus)}, "
              f"{1000 * statistics.median(walls) / jobs:.1f} ms wall per job planned")
        record(args.record, f"snakemake --dry-run of the paper grid ({jobs} jobs)", statistics.median(walls), "s",
               target="<= 30 s", met=statistics.median(walls) <= 30)
        if args.verbose_too:
            walls, cpus, _ = dry_runs(folder, args.snakefile, args.repeats, [])
            print(f"snakemake --dry-run (every job listed): {summary(walls, cpus)}")
    if args.job_overhead:
        with tempfile.TemporaryDirectory(prefix="job_overhead_") as tmp:
            per_job = job_overhead(Path(tmp), args.jobs)
        for rule, what in (("shell_job", "shell job (touch)"), ("script_job", "script job importing sparselab.pipeline")):
            wall, cpu = per_job[rule]
            print(f"per-job overhead of a {what}: {wall:.2f} s wall, {cpu:.2f} s CPU ({args.jobs} jobs, one at a time)")
        shell_wall = per_job["shell_job"][0]
        script_wall = per_job["script_job"][0]
        record(args.record, "per-job overhead of a trivial job script (imports sparselab.pipeline)", script_wall, "s",
               peer=shell_wall, ratio=script_wall / shell_wall, target="measured (peer: a trivial shell job)")


if __name__ == "__main__":
    main()
