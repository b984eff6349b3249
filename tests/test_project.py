"""The project's own files agree with each other: layout, pins, rules with logs."""

from __future__ import annotations

import io
import re
from pathlib import Path

import docutils.core
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_required_layout():
    for path in ["Snakefile", "dvc.yaml", "params.yaml", "environment.yml", "pyproject.toml", "README.md", ".ci/run",
                 "workflow/Snakefile", "workflow/rules", "workflow/scripts", "workflow/schemas",
                 "workflow/profiles/local/config.yaml", "workflow/profiles/slurm/config.yaml", "workflow/report",
                 "src/sparselab", "tests"]:
        assert (ROOT / path).exists(), path
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "/results/" in ignored and "/resources/" in ignored


def test_conda_environment_pins_the_lock_file():
    lock = [line for line in (ROOT / "requirements.lock").read_text().splitlines() if line and not line.startswith("#")]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert [p for p in pip if p != "-e ."] == lock


def test_pyproject_pins_match_the_lock_file():
    lock = dict(line.split("==") for line in (ROOT / "requirements.lock").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    lock = {name.lower().replace("_", "-"): version for name, version in lock.items()}
    pins = re.findall(r'"([A-Za-z0-9_.-]+)==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    for name, version in pins:
        assert lock[name.lower().replace("_", "-")] == version, name


def test_every_rule_has_a_log_and_a_script():
    for rule_file in (ROOT / "workflow/rules").glob("*.smk"):
        for block in re.split(r"\n(?=rule )", rule_file.read_text())[1:]:
            name = block.split(":", 1)[0]
            assert "\n    log:" in block, f"{rule_file.name}: {name} has no log"
            assert "\n    script:" in block, f"{rule_file.name}: {name} has no script"


@pytest.mark.parametrize("caption", sorted((ROOT / "workflow/report").glob("*.rst")), ids=lambda path: path.name)
def test_report_captions_are_valid_restructured_text(caption):
    """Snakemake renders each caption with docutils: a stray |x| is a substitution reference, and
    its error message would be printed into the report in place of the text."""
    warnings = io.StringIO()
    docutils.core.publish_string(caption.read_text(), writer="html",
                                 settings_overrides={"warning_stream": warnings, "report_level": 2})
    assert warnings.getvalue() == ""
