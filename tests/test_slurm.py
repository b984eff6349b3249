"""The tiny workflow through a real SLURM cluster (one node on localhost, tests/cluster/slurm.sh)
with the production profile workflow/profiles/slurm, against a local run of the same config.

Checked in SLURM's own records (slurmctld's job table, `scontrol show job`): every job Snakemake
ran outside its localrules went through sbatch, exactly once, with the rule's partition, memory and
GPU, and ended COMPLETED; and the outputs equal those of the local run: scores, masks and
fine-tuned weights tensor for tensor, and every JSON/CSV result except its timing fields.

Both runs use 1 thread per job (`--max-threads 1`): CPU results depend on the thread count. The
SLURM run's other command-line overrides are for this cluster and speed only: the first status
check after 2 s instead of 40 s, and `squeue` status checks (this cluster has no accounting, so
no sacct). The two runs go side by side to keep the test short; the timings printed are theirs.
Needs root (the script installs slurmctld, slurmd, slurm-client and munge with apt-get when they
are missing, and slurmd runs as root); skips, saying why, when that is not possible.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from statistics import median

import pytest
import torch
from safetensors.torch import load_file
from tiny_workflow import REPO, SNAKEMAKE, small_params, write_workdir

pytestmark = pytest.mark.workflow

SCRIPT = REPO / "tests/cluster/slurm.sh"
RUN_LIMIT_S = 900  # each run; `timeout -k` ends a hung one (Snakemake finishes running jobs on SIGTERM)
SAME_THREADS = ["--max-threads", "1"]
SLURM_OVERRIDES = ["--slurm-init-seconds-before-status-checks", "2", "--slurm-status-command", "squeue"]
TIMING = {"wall_seconds", "latency_ms", "seconds"}  # measured durations: differ from run to run
SKIP_CODES = {2: "not root", 3: "the SLURM packages could not be installed",
              4: "this machine has a SLURM configuration of its own"}


def env() -> dict:
    """Our environment without the variables of an enclosing SLURM job or another cluster."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}


@pytest.fixture(scope="module")
def cluster():
    """The one-node cluster, started for this module (and stopped after it) unless it ran already."""
    try:
        start = subprocess.run(["timeout", "-k", "10", "600", str(SCRIPT), "start"], capture_output=True,
                               text=True, env=env(), timeout=660)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.fail(f"tests/cluster/slurm.sh start: {error}")
    output = start.stdout + start.stderr
    print(output, end="")
    if start.returncode in SKIP_CODES:
        pytest.skip(f"no SLURM cluster: {SKIP_CODES[start.returncode]}: {output.strip().splitlines()[-1]}")
    assert start.returncode == 0, f"tests/cluster/slurm.sh start failed ({start.returncode}):\n{output}"
    started = "already running" not in output
    yield
    if started:
        stop = subprocess.run([str(SCRIPT), "stop"], capture_output=True, text=True, env=env(), timeout=120)
        print(stop.stdout + stop.stderr, end="")


@dataclass
class Run:
    workdir: Path
    log: str
    seconds: float


@dataclass
class Job:
    """One job block of a Snakemake log."""
    local: bool
    rule: str
    jobid: int
    wildcards: str
    resources: dict[str, str]
    runs: bool  # has outputs (a target like `all` runs nothing)


def launch(root: Path, profile: str, *args: str) -> tuple[subprocess.Popen, Path]:
    log = root.with_suffix(".log")
    command = ["timeout", "-k", "30", str(RUN_LIMIT_S), *SNAKEMAKE, "--directory", str(root),
               "--profile", str(REPO / "workflow/profiles" / profile), *SAME_THREADS, *args]
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True, env=env()), log


def wait_all(processes: dict[str, subprocess.Popen], started: float) -> dict[str, float]:
    """Seconds from `started` until each process ended (killed past the limit, if `timeout` was not enough)."""
    seconds = {}
    while len(seconds) < len(processes):
        for name, process in processes.items():
            if name not in seconds and process.poll() is not None:
                seconds[name] = time.monotonic() - started
        if time.monotonic() - started > RUN_LIMIT_S + 60:
            for name, process in processes.items():
                if process.poll() is None:
                    process.kill()
                    process.wait()
        time.sleep(0.5)
    return seconds


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory) -> dict[str, Run]:
    """The small config run twice side by side: locally, and through SLURM with the production profile."""
    roots = {}
    for name in ("local", "slurm"):
        root = tmp_path_factory.mktemp(name)
        roots[name] = write_workdir(root, small_params(root))
    started = time.monotonic()
    processes, logs = {}, {}
    processes["local"], logs["local"] = launch(roots["local"], "local")
    processes["slurm"], logs["slurm"] = launch(roots["slurm"], "slurm", *SLURM_OVERRIDES)
    seconds = wait_all(processes, started)
    print(f"\nside by side: local profile {seconds['local']:.0f} s, SLURM profile {seconds['slurm']:.0f} s")
    for name, process in processes.items():
        assert process.returncode == 0, (f"the {name} run failed ({process.returncode}) after {seconds[name]:.0f} s:\n"
                                         f"{logs[name].read_text()[-6000:]}")
    return {name: Run(roots[name], logs[name].read_text(), seconds[name]) for name in processes}


def job_blocks(log: str) -> list[Job]:
    jobs = []
    for kind, rule, body in re.findall(r"^(localrule|rule) (\w+):\n((?:    .*\n)*)", log, flags=re.M):
        fields = dict(re.findall(r"^    (\w+): (.*)$", body, flags=re.M))
        resources = dict(re.findall(r"(\w+)=([^,]*)", fields.get("resources", "")))
        jobs.append(Job(kind == "localrule", rule, int(fields["jobid"]), fields.get("wildcards", ""), resources,
                        "output" in fields))
    return jobs


def localrules() -> set[str]:
    """The rules every `localrules:` directive of workflow/rules/*.smk names."""
    names = set()
    for smk in (REPO / "workflow/rules").glob("*.smk"):
        for block in re.findall(r"^localrules:\s*\n((?:[ \t]+.*\n)+)", smk.read_text(), flags=re.M):
            names |= set(re.findall(r"\w+", block))
    return names


def comment(job: Job) -> str:
    """What the SLURM executor puts in sbatch --comment: the rule and its wildcard values."""
    values = [value.split("=", 1)[1].replace("/", "_") for value in job.wildcards.split(", ") if value]
    return f"rule_{job.rule}" + (f"_wildcards_{'_'.join(values)}" if values else "")


def slurm_records(name: str) -> dict[str, dict[str, str]]:
    """slurmctld's records of the jobs named `name` (the Snakemake run's id), by SLURM job id."""
    out = subprocess.run(["scontrol", "--oneliner", "show", "job"], capture_output=True, text=True, env=env(),
                         timeout=60, check=True).stdout
    records = {}
    for line in out.splitlines():
        record = dict(re.findall(r"(\S+?)=(\S*)", line))
        if record.get("JobName") == name:
            records[record["JobId"]] = record
    return records


@pytest.fixture(scope="module")
def submissions(runs):
    """Snakemake's view of the SLURM run (its job blocks and sbatch submissions) and SLURM's records."""
    log = runs["slurm"].log
    run_id = re.search(r"^SLURM run ID: (\S+)$", log, flags=re.M).group(1)
    jobs = {job.jobid: job for job in job_blocks(log)}
    submitted = {int(jobid): slurm_id for jobid, slurm_id in
                 re.findall(r"^Job (\d+) has been submitted with SLURM jobid (\d+)", log, flags=re.M)}
    return jobs, submitted, slurm_records(run_id)


def test_every_remote_job_went_through_sbatch(runs, submissions):
    jobs, submitted, records = submissions
    local_rules = localrules()
    assert {"fetch_model", "fetch_data", "aggregate", "study_table", "study_figure"} <= local_rules
    # the same jobs ran in both runs (the local run runs every one locally)
    ran_locally = Counter((job.rule, job.wildcards) for job in job_blocks(runs["local"].log) if job.runs)
    ran_slurm = Counter((job.rule, job.wildcards) for job in jobs.values() if job.runs)
    assert ran_slurm == ran_locally
    # Snakemake submitted exactly the jobs outside localrules, each once
    remote = {jobid: job for jobid, job in jobs.items() if not job.local}
    assert remote and {job.rule for job in remote.values()}.isdisjoint(local_rules)
    assert {job.rule for job in jobs.values() if job.local and job.runs} <= local_rules
    assert Counter((job.rule, job.wildcards) for job in remote.values()) == Counter(
        key for key in ran_locally.elements() if key[0] not in local_rules)
    assert set(submitted) == set(remote), "a non-local job was not submitted, or a local one was"
    # SLURM saw exactly these submissions, named after each job's rule and wildcards
    assert set(records) == set(submitted.values()), f"SLURM's jobs of this run: {sorted(records)}"
    assert Counter(record["Comment"] for record in records.values()) == Counter(map(comment, remote.values()))
    for jobid, slurm_id in submitted.items():
        assert records[slurm_id]["Comment"] == comment(remote[jobid])


def test_slurm_jobs_got_the_profile_resources(runs, submissions):
    jobs, submitted, records = submissions
    for jobid, slurm_id in submitted.items():
        job, record = jobs[jobid], records[slurm_id]
        where = f"{job.rule} ({job.wildcards}), SLURM job {slurm_id}"
        assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), where
        assert record["WorkDir"] == str(runs["slurm"].workdir), where
        assert record["Partition"] == job.resources["slurm_partition"], where
        assert f"mem={job.resources['mem_mb']}M" in record["TRES"], where
        assert record["NumCPUs"] == "1", where  # --max-threads 1: threads are the CPUs asked for
        assert ("gres:gpu:1" in record.get("TresPerJob", "")) == (job.resources.get("gpu") == "1"), where
    finetunes = [records[slurm_id] for jobid, slurm_id in submitted.items() if jobs[jobid].rule == "finetune"]
    assert len(finetunes) == 2
    assert all(r["Partition"] == "gpu" and "gres:gpu:1" in r["TresPerJob"] and "mem=8000M" in r["TRES"]
               for r in finetunes)
    report_overhead(runs, jobs, submitted, records)


def report_overhead(runs, jobs, submitted, records) -> None:
    """Print where a SLURM job's time goes: queued, running, and ended until Snakemake noticed."""
    finished = {int(jobid): datetime.strptime(stamp, "%a %b %d %H:%M:%S %Y") for stamp, jobid in
                re.findall(r"^\[(.+?)\]\nFinished jobid: (\d+)", runs["slurm"].log, flags=re.M)}
    parse = datetime.fromisoformat
    queued, running, noticed = [], [], []
    for jobid, slurm_id in submitted.items():
        record = records[slurm_id]
        queued.append((parse(record["StartTime"]) - parse(record["SubmitTime"])).total_seconds())
        running.append((parse(record["EndTime"]) - parse(record["StartTime"])).total_seconds())
        noticed.append((finished[jobid] - parse(record["EndTime"])).total_seconds())
    print(f"\n{len(submitted)} SLURM jobs, median (max) seconds: queued {median(queued):.0f} ({max(queued):.0f}), "
          f"running {median(running):.0f} ({max(running):.0f}), ended until Snakemake noticed "
          f"{median(noticed):.0f} ({max(noticed):.0f})")


def comparable(path: Path):
    """A result's content without what differs between two correct runs (measured durations)."""
    if path.suffix == ".safetensors":
        return load_file(path)
    if path.suffix == ".json":
        return drop_timing(json.loads(path.read_text()))
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]
    return None  # figures (PDF dates), logs


def drop_timing(value):
    if isinstance(value, dict):
        return {k: drop_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [drop_timing(v) for v in value]
    return value


def test_outputs_equal_the_local_run(runs):
    results = {name: run.workdir / "results" for name, run in runs.items()}
    files = {name: sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
             for name, folder in results.items()}
    assert files["slurm"] == files["local"]
    compared = Counter()
    for relative in files["local"]:
        local, slurm = (comparable(results[name] / relative) for name in ("local", "slurm"))
        if local is None:
            continue
        compared[Path(relative).suffix] += 1
        if isinstance(local, dict) and all(isinstance(v, torch.Tensor) for v in local.values()):
            assert local.keys() == slurm.keys(), relative
            for key in local:
                assert torch.equal(local[key], slurm[key]), f"{relative}: {key} differs"
        else:
            assert slurm == local, relative
    # scores, a mask, 2 fine-tuned checkpoints; eval records, metrics, tables
    assert compared[".safetensors"] == 4 and compared[".json"] >= 8 and compared[".csv"] >= 5
    train = json.loads((results["slurm"] / "finetune/tiny/toy/dense/quick/seed0/train_metrics.json").read_text())
    assert train["threads"] == 1
