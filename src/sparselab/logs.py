"""Send a job's logging, stdout and stderr to its Snakemake log file."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def log_to(path: str | Path) -> Iterator[None]:
    """Everything the block prints or logs goes to `path`; an exception is logged before it propagates."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as stream, contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            yield
        except Exception:
            logging.getLogger("sparselab").exception("job failed")
            raise
        finally:
            root.removeHandler(handler)
