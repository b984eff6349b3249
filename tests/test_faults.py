"""Faults injected for real into the tiny workflow: killed jobs, damaged files, a full disk and a
read-only results folder. Each ends with complete outputs or none, and a one-line error."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from tiny_workflow import REPO, SNAKEMAKE, error_lines, planned_jobs, small_params, snakemake, write_workdir

from sparselab.io import load_compact

pytestmark = pytest.mark.workflow
SPARSE_RUN = "tiny/toy/magnitude/global-unstructured/s0.5/quick/seed0"
DENSE_RUN = "tiny/toy/dense/quick/seed0"
MASK = "results/masks/tiny/toy/magnitude/global-unstructured/s0.5/seed0/mask.safetensors"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A complete run of the small config; fine-tunes of 50 steps leave time to kill one."""
    root = tmp_path_factory.mktemp("faults")
    write_workdir(root, small_params(root, epochs=20))
    snakemake(root)
    return root


@pytest.fixture
def workdir(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished run to damage."""
    copy = tmp_path / "run"
    shutil.copytree(finished, copy, symlinks=True)
    return copy


def forget(workdir: Path, run: str) -> Path:
    """Remove a fine-tune's outputs and its evaluation; its folder. (Snakemake redoes them when
    asked for the evaluation: results downstream of them would not call for missing inputs.)"""
    run_dir = workdir / "results/finetune" / run
    shutil.rmtree(run_dir)
    (workdir / "results/eval" / run / "finetuned.json").unlink()
    return run_dir


def evaluation(run: str) -> str:
    return f"results/eval/{run}/finetuned.json"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder (relative path -> bytes), except logs, Snakemake's metadata and the
    temporary files a killed job leaves (the next write of the same output removes them)."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "logs" not in path.parts and ".snakemake" not in path.parts and ".tmp-" not in path.name
    }


def start(workdir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*SNAKEMAKE, "--directory", str(workdir), "--profile", str(REPO / "workflow/profiles/local"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def wait_for_training(run_dir: Path, process: subprocess.Popen, timeout: float = 300) -> int:
    """The pid of the fine-tune job once it is mid-training (its log is being written)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        partial = list(run_dir.glob(".train_log.csv.tmp-*"))
        if partial:
            return int(partial[0].name.rsplit("-", 1)[1])
        assert process.poll() is None, process.communicate()[0]
        time.sleep(0.01)
    raise AssertionError("the fine-tune job never started training")


def leftovers(workdir: Path) -> list[Path]:
    return [p for p in (workdir / "results").rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]


@pytest.mark.parametrize("victim", ["job", "everything"])
def test_a_killed_job_leaves_no_output_and_only_it_reruns(workdir, victim):
    run_dir = forget(workdir, SPARSE_RUN)
    before = snapshot(workdir)
    process = start(workdir, evaluation(SPARSE_RUN))
    job = wait_for_training(run_dir, process)
    if victim == "job":  # the cluster kills the job (time limit, OOM); Snakemake sees it fail
        os.kill(job, signal.SIGKILL)
    else:  # the machine goes down: Snakemake and the job die together
        os.killpg(process.pid, signal.SIGKILL)
    output = process.communicate(timeout=120)[0]
    assert process.returncode != 0, output
    assert not any(p.is_file() and not p.name.startswith(".") for p in run_dir.glob("*")), sorted(run_dir.iterdir())
    assert snapshot(workdir) == before  # nothing else changed
    if victim == "everything":
        snakemake(workdir, "--unlock")
    planned = planned_jobs(workdir, evaluation(SPARSE_RUN))
    assert sorted(rule for rule, _ in planned) == ["evaluate_finetuned", "finetune"], planned
    assert all("s0.5" in wildcards for _, wildcards in planned)
    snakemake(workdir, evaluation(SPARSE_RUN))
    assert not leftovers(workdir)
    assert load_compact(run_dir / "model.compact.safetensors")


@pytest.mark.parametrize(
    "damaged, damage, target, message",
    [
        (MASK, "truncate", f"results/finetune/{SPARSE_RUN}/model.compact.safetensors",
         f"{MASK} is truncated or not a safetensors file"),
        (MASK, "flip", f"results/finetune/{SPARSE_RUN}/model.compact.safetensors", f"{MASK} is corrupted"),
        (f"results/finetune/{DENSE_RUN}/model.compact.safetensors", "flip", f"results/eval/{DENSE_RUN}/finetuned.json",
         f"results/finetune/{DENSE_RUN}/model.compact.safetensors is corrupted"),
        ("results/scores/tiny/toy/magnitude/seed0/scores.safetensors", "truncate", MASK,
         "results/scores/tiny/toy/magnitude/seed0/scores.safetensors is truncated"),
        (f"results/eval/{DENSE_RUN}/finetuned.json", "truncate", "results/tables/runs.csv",
         f"results/eval/{DENSE_RUN}/finetuned.json is not valid JSON"),
        ("resources/data/toy/train.jsonl", "flip", f"results/finetune/{DENSE_RUN}/model.compact.safetensors",
         "resources/data/toy/train.jsonl changed since it was fetched"),
    ],
    ids=["mask-truncated", "mask-flipped", "checkpoint-flipped", "scores-truncated", "record-truncated",
         "dataset-flipped"],
)
def test_a_damaged_file_is_reported_with_its_path(workdir, damaged, damage, target, message):
    path = workdir / damaged
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # one flipped bit near the end, in the data rather than the header
        path.write_bytes(data[:-3] + bytes([data[-3] ^ 1]) + data[-2:])
    result = snakemake(workdir, "--force", target, check=False)
    assert result.returncode != 0
    errors = error_lines(result)
    assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], errors
    assert f"delete {damaged}" in errors[0] or "fetch it again" in errors[0], errors


def test_a_failing_job_does_not_touch_other_outputs(workdir):
    for run in (SPARSE_RUN, DENSE_RUN):
        forget(workdir, run)
    mask = workdir / MASK
    mask.write_bytes(mask.read_bytes()[:100])
    untouched = ("resources/", "results/scores/", "results/masks/", "results/tables/", "results/figures/")
    before = {name: data for name, data in snapshot(workdir).items() if name.startswith(untouched)}
    result = snakemake(workdir, "--keep-going", evaluation(SPARSE_RUN), evaluation(DENSE_RUN), check=False)
    assert result.returncode != 0 and any(MASK in line for line in error_lines(result))
    after = snapshot(workdir)
    assert {name: after.get(name) for name in before} == before  # inputs and summaries as they were
    assert f"results/finetune/{DENSE_RUN}/model.compact.safetensors" in after  # the independent job finished
    assert not any(name.startswith(f"results/finetune/{SPARSE_RUN}") for name in after)


@contextmanager
def mounted(folder: Path, tmpfs_size: str | None = None) -> Iterator[None]:
    """For the block, folder is a tmpfs of `tmpfs_size` (a full disk), or else made read-only by a
    read-only bind mount onto itself. Root only: skips where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    if tmpfs_size:
        commands = [["mount", "-t", "tmpfs", "-o", f"size={tmpfs_size}", "tmpfs", str(folder)]]
    else:
        commands = [["mount", "--bind", str(folder), str(folder)], ["mount", "-o", "remount,bind,ro", str(folder)]]
    is_mounted = False
    try:
        for command in commands:
            if subprocess.run(command, capture_output=True).returncode:
                pytest.skip(f"cannot run {' '.join(command)} here (needs root and mount rights)")
            is_mounted = True
        yield
    finally:
        if is_mounted:
            subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_results_folder_stops_the_run_before_any_job(workdir):
    forget(workdir, SPARSE_RUN)
    with mounted(workdir / "results"):
        result = snakemake(workdir, evaluation(SPARSE_RUN), check=False)
    assert result.returncode != 0
    assert error_lines(result) == [
        "error: cannot write in results/: Read-only file system; make it writable, or run in a working "
        "directory you can write"
    ]
    assert not (workdir / "results/finetune" / SPARSE_RUN).exists()


def test_too_little_free_space_stops_the_run_before_any_job(workdir):
    shutil.rmtree(workdir / "results")
    with mounted(workdir / "results", tmpfs_size="1m"):
        result = snakemake(workdir, check=False)
        assert result.returncode != 0
        assert error_lines(result) == [
            "error: only 1.0 MiB free in results/ (a run needs at least 100 MiB for its checkpoints); free some "
            "space and rerun"
        ]
        assert not list((workdir / "results").iterdir())


def test_a_full_disk_fails_the_job_clearly_and_keeps_finished_outputs(workdir):
    run_dir = forget(workdir, SPARSE_RUN)
    run_dir.mkdir()
    before = snapshot(workdir)
    with mounted(run_dir, tmpfs_size="64k"):  # the tiny checkpoint takes about 90 kB
        result = snakemake(workdir, evaluation(SPARSE_RUN), check=False)
        left = sorted(p.name for p in run_dir.iterdir())
    assert result.returncode != 0
    errors = error_lines(result)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"error: cannot write results/finetune/{SPARSE_RUN}/model.compact.safetensors: No space "
                                f"left on device"), errors
    assert "free some space there and rerun; finished outputs are kept" in errors[0]
    assert left == []  # the outputs it did write were removed with the failed job, no partial file
    assert snapshot(workdir) == before
