"""Resume overhead: a fine-tune job stopped by SIGTERM and run again, against one never stopped.

Both are real fine-tune processes of the embedded default (the workflow's finetune stage, one
thread) with the same recipe. The stopped one gets SIGTERM once its training log shows `--stop-at`
steps; it saves its state and exits, and a second process resumes it. The figure is the total wall
time of the two processes over the uninterrupted one's, beside the time the stopped run lost (steps
done after its last periodic save are redone: none when the signal's own save is the last), and a
check that the two final checkpoints are bit-identical.

    .venv/bin/python bench/resume_overhead.py [--epochs-multiplier 4] [--stop-at 150] [--repeats 3] [--record FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from targets import record

REPO = Path(__file__).resolve().parents[1]
MODEL, DATA = REPO / "resources/models/minilm", REPO / "resources/data/rotten_tomatoes"

# The workflow's finetune stage, as its rule script calls it (argv: out_dir, recipe as JSON).
STAGE = """
import json, sys
from pathlib import Path
from sparselab.pipeline import finetune_stage
from sparselab.resume import TrainingInterrupted
try:
    finetune_stage(Path(sys.argv[1]), Path(sys.argv[2]), None, Path(sys.argv[3]), json.loads(sys.argv[4]), 0, 1,
                   trust_remote_code=False)
except TrainingInterrupted as stopped:
    print(stopped)
    sys.exit(3)
"""


def run(out_dir: Path, recipe: dict, stop_at: int | None = None) -> tuple[float, int]:
    """(wall seconds, exit code) of one fine-tune process; SIGTERM once `stop_at` steps are logged."""
    command = [sys.executable, "-c", STAGE, str(MODEL), str(DATA), str(out_dir), json.dumps(recipe)]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if stop_at is not None:
        while process.poll() is None:
            logs = list(out_dir.glob(".train_log.csv.tmp-*"))
            if logs and sum(1 for _ in open(logs[0])) - 1 >= stop_at:
                process.send_signal(signal.SIGTERM)
                break
            time.sleep(0.05)
    output, _ = process.communicate()
    wall = time.perf_counter() - start
    if process.returncode not in (0, 3):
        raise SystemExit(f"fine-tune failed ({process.returncode}):\n{output[-3000:]}")
    return wall, process.returncode


def one_pair(recipe: dict, stop_at: int) -> tuple[float, float, float, bool]:
    """(uninterrupted s, stopped s, resumed s, bit-identical) of one pair of runs in a fresh folder."""
    with tempfile.TemporaryDirectory() as tmp:
        plain, stopped = Path(tmp) / "plain", Path(tmp) / "stopped"
        uninterrupted, _ = run(plain, recipe)
        first, code = run(stopped, recipe, stop_at=stop_at)
        assert code == 3, "the stopped run finished before the signal: lower --stop-at"
        second, code = run(stopped, recipe)
        assert code == 0
        assert len(list(csv.DictReader(open(stopped / "train_log.csv")))) == \
            int(json.loads((plain / "train_metrics.json").read_text())["steps"]), "a step is missing or repeated"
        identical = (plain / "model.compact.safetensors").read_bytes() == \
            (stopped / "model.compact.safetensors").read_bytes()
    return uninterrupted, first, second, identical


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs-multiplier", type=float, default=4.0, help="the budget of the standard recipe")
    parser.add_argument("--stop-at", type=int, default=150, help="steps done when SIGTERM is sent")
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs; the median ratio is the figure")
    parser.add_argument("--record", type=Path, help="append the target rows to this JSON-lines file")
    args = parser.parse_args()
    recipe = {"epochs": 1, "batch_size": 32, "learning_rate": 1.0e-4, "max_length": 64, "max_train_examples": 2500,
              "precision": "bf16", "epochs_multiplier": args.epochs_multiplier,
              "checkpoint_every": args.checkpoint_every}
    pairs = []
    for repeat in range(args.repeats):
        uninterrupted, first, second, identical = one_pair(recipe, args.stop_at)
        pairs.append((uninterrupted, first + second, identical))
        print(f"pair {repeat + 1}: uninterrupted {uninterrupted:.1f} s; stopped after ~{args.stop_at} steps "
              f"{first:.1f} s + resumed {second:.1f} s = {first + second:.1f} s "
              f"({(first + second) / uninterrupted:.3f}x); final weights bit-identical: {identical}", flush=True)
    ratios = [total / uninterrupted for uninterrupted, total, _ in pairs]
    ratio = statistics.median(ratios)
    uninterrupted = statistics.median(u for u, _, _ in pairs)
    identical = all(same for _, _, same in pairs)
    print(f"median of {args.repeats}: {ratio:.3f}x the uninterrupted run ({uninterrupted:.1f} s); "
          f"bit-identical in every pair: {identical}")
    record(args.record, "fine-tune stopped by SIGTERM and resumed, total wall", ratio * uninterrupted, "s",
           peer=uninterrupted, ratio=ratio, target="<= 1.10x the uninterrupted run, bit-identical weights",
           met=ratio <= 1.10 and identical)


if __name__ == "__main__":
    main()
