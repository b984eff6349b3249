"""Run every CPU benchmark and print one table: each target's figure beside its peer, and whether it is met.

The benchmarks run one after another as fresh processes (their own output is shown as they go),
each appending its target rows to one JSON-lines file (--record), which is then printed as a
table. The fine-tuning-step benchmark needs the embedded default model and data: they are fetched
first through the workflow when resources/ does not have them.

    .venv/bin/python bench/run_all.py [--quick]

--quick: one repeat and fewer steps (a smoke run; the figures in bench/README.md use the defaults).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MODEL, DATA = "resources/models/minilm", "resources/data/rotten_tomatoes"


def benchmarks(quick: bool) -> list[list[str]]:
    """The command line of every CPU benchmark (the 2:4 one needs CUDA and is run by hand)."""
    repeats = ["--repeats", "1" if quick else "3"]
    return [
        ["global_magnitude.py", *repeats],
        ["training_step.py", "--model", MODEL, "--data", DATA, "--steps", "4" if quick else "20"],
        ["checkpoint_size.py"],
        ["dry_run.py", *repeats, "--job-overhead", "--jobs", "2" if quick else "8"],
        ["resume_overhead.py", *(["--epochs-multiplier", "0.5", "--stop-at", "20", "--repeats", "1"] if quick else [])],
    ]


def fetch_inputs() -> None:
    """The embedded default model and data, through the workflow's own fetch rules."""
    if (REPO / MODEL).is_dir() and (REPO / DATA).is_dir():
        return
    subprocess.run([sys.executable, "-m", "snakemake", "--profile", "workflow/profiles/local", "--cores", "2",
                    MODEL, DATA], cwd=REPO, check=True)


def table(rows: list[dict]) -> str:
    lines = ["| figure | ours | peer | ratio | target | met |", "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        peer = "" if row["peer"] is None else f"{row['peer']:.3g} {row['unit']}"
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.3g}"
        met = {True: "yes", False: "NO", None: ""}[row["met"]]
        lines.append(f"| {row['figure']} | {row['value']:.3g} {row['unit']} | {peer} | {ratio} | {row['target']} | {met} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, fewer steps: a smoke run")
    args = parser.parse_args()
    fetch_inputs()
    with tempfile.TemporaryDirectory(prefix="bench_") as folder:
        rows_file = Path(folder, "rows.jsonl")
        for script, *options in benchmarks(args.quick):
            print(f"\n== {script} {' '.join(options)}", flush=True)
            subprocess.run([sys.executable, str(BENCH / script), *options, "--record", str(rows_file)],
                           cwd=REPO, check=True)
        rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    print("\n" + table(rows))


if __name__ == "__main__":
    main()
