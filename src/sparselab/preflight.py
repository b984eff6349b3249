"""Checks of what params.yaml points at on disk, run by the workflow before any job starts.

`validate_config` judges the config by itself; these look at files. Local sources must exist and a
local model folder must hold weights. For a model already fetched, whose source.json lists the
shapes of its matrices, the prunable set must match some matrix and every n:m structure a study
asks of the model must divide the input dimension of each prunable matrix. (For a model not yet
fetched, the first job after its fetch finds these two problems.) Errors are ConfigErrors, one
line naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

import math
from pathlib import Path

from sparselab.config import ConfigError
from sparselab.fetch import fetched_matrices, has_model_files
from sparselab.masks import Structure
from sparselab.prunable import prunable_names

WEIGHTS_WORDS = "a folder with config.json and model.safetensors (or sharded *.safetensors, or pytorch_model.bin)"


def check_on_disk(config: dict, resources: Path = Path("resources")) -> None:
    """ConfigError for the first problem with a validated config's files, else None."""
    for name, model in config["models"].items():
        _check_local_model(f"models.{name}.source", model["source"])
        matrices = fetched_matrices(resources / "models" / name)
        if matrices is None:
            continue
        prunable = prunable_shapes(matrices, model["prunable"], f"models.{name}.prunable")
        for study_name, study in config["studies"].items():
            if name in study["models"]:
                for index, text in enumerate(study["structures"]):
                    _check_nm(prunable, Structure.parse(text), f"studies.{study_name}.structures[{index}]", text)
    for name, task in config["tasks"].items():
        scheme, _, target = task["source"].partition(":")
        if scheme == "local" and not Path(target).exists():
            raise ConfigError(f"tasks.{name}.source", f"{task['source']!r} does not exist (allowed: a data file or folder)")


def _check_local_model(key: str, source: str) -> None:
    scheme, _, target = source.partition(":")
    if scheme != "local":
        return
    folder = Path(target)
    if not folder.is_dir():
        raise ConfigError(key, f"{source!r} is not a folder (allowed: {WEIGHTS_WORDS})")
    names = sorted(path.name for path in folder.iterdir())
    if not has_model_files(names):
        found = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") if names else "nothing"
        raise ConfigError(key, f"{source!r} has no weights, only {found} (allowed: {WEIGHTS_WORDS})")


def prunable_shapes(matrices: dict[str, list[int]], prunable: dict, key: str) -> dict[str, list[int]]:
    """The [out, in] shapes of the matrices the include/exclude regexes select; ConfigError if none."""
    chosen = {name: matrices[name] for name in prunable_names(matrices, prunable["include"], prunable.get("exclude", []))}
    if not chosen:
        example = next(iter(matrices), "none")
        raise ConfigError(
            f"{key}.include", f"{prunable['include']} (exclude {prunable.get('exclude', [])}) matches no matrix of "
            f"the model (allowed: regexes searched in its {len(matrices)} matrix names, such as {example!r})"
        )
    return chosen


def _check_nm(prunable: dict[str, list[int]], structure: Structure, key: str, text: str) -> None:
    if not structure.is_nm:
        return
    m = structure.m
    for name, (_, inputs) in prunable.items():
        if inputs % m:
            common = math.gcd(*(shape[1] for shape in prunable.values()))
            raise ConfigError(
                key, f"{text!r} groups M={m} input weights, but {name} has {inputs} inputs (allowed: an M that "
                f"divides the input dimension {common} shared by the prunable matrices)"
            )
