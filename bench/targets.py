"""The benchmark targets, one row each: a figure measured beside its peer, and whether it meets its target.

Every benchmark script takes `--record FILE` and appends its rows there as JSON lines;
run_all.py collects them into one table.
"""

from __future__ import annotations

import json
from pathlib import Path


def record(path: Path | None, figure: str, value: float, unit: str, *, peer: float | None = None,
           ratio: float | None = None, target: str = "", met: bool | None = None) -> None:
    """Append one row to `path` (nothing when None): the figure, its peer in the same run (if any),
    their ratio as the target states it, the target in words, and whether it is met."""
    if path is None:
        return
    row = {"figure": figure, "value": value, "unit": unit, "peer": peer, "ratio": ratio, "target": target, "met": met}
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")
