"""Send a job's logging, stdout and stderr to its Snakemake log file."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def log_to(path: str | Path) -> Iterator[None]:
    """Everything the block prints or logs goes to `path`; an exception is logged before it propagates.

    Redirection is at the file-descriptor level, so libraries that captured sys.stderr at import
    time (transformers' handler) and C extensions write to the log too. A failing job also prints
    its error as one line on the console (`error: <message> (log: <path>)`), so that the cause
    shows next to Snakemake's report instead of only inside the log.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with open(path, "w") as stream:
        for fd in saved:
            os.dup2(stream.fileno(), fd)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            yield
        except Exception as error:
            logging.getLogger("sparselab").exception("job failed")
            message = (str(error).splitlines() or [type(error).__name__])[0]
            os.write(saved[2], f"error: {message} (log: {path})\n".encode())
            raise
        finally:
            root.removeHandler(handler)
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
