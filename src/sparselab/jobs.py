"""One workflow job's process: its imports, its log and its exit.

Every rule script runs in a fresh Python process that imports torch and transformers (~430,000
objects that live until the process ends), runs one stage and exits. Python's cyclic garbage
collector traverses all of them in every full collection while they are being imported (~0.5 s)
and again at interpreter shutdown (~1 s): about 1.5 s of every job, for ~200 jobs in the default
run. `job_imports` pauses the collector while a script imports its stage and then freezes
(gc.freeze) what the imports made; `job` sends the stage's output to the job's log and freezes
again at its end, so that shutdown has nothing left to traverse. Objects the stage makes while it
runs are collected as usual. Only scripts use these: a long-lived process (a test run) must not
freeze its garbage.
"""

from __future__ import annotations

import contextlib
import gc
from pathlib import Path
from typing import Iterator

from sparselab.logs import log_to


@contextlib.contextmanager
def job_imports() -> Iterator[None]:
    """The block's imports with the cyclic collector paused; what they made is frozen after."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


@contextlib.contextmanager
def job(log_path: str | Path) -> Iterator[None]:
    """Run the block as the job: its output goes to `log_path` (logs.log_to); when it ends,
    every object left is frozen, since the process exits next."""
    try:
        with log_to(log_path):
            yield
    finally:
        gc.freeze()
