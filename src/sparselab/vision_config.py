"""Checks of params.yaml for image models and tasks (called by sparselab.config.validate_config).

A model entry is an image model when it has `image_size` (timm:, finetuned: and converted sources
need one); a task is an image task when its reader reads images (mnist_csv) or its hf: source is an
image dataset. Each message is one line naming the key, the bad value and what is allowed:
- image model sources carry `image_size`; `convert` names a registered converter and applies to
  wheel: and local: sources, `weights_file` to timm: ones; dinov2_onnx needs a multiple of 14;
- a `finetuned:` source names a dense run of an image model, task and recipe defined here, at the
  same image size;
- a study crosses models and tasks of one modality, and its recipes and methods set no text-only
  option (max_length, group_by_length) when its tasks are images;
- an ssl_vs_supervised study compares two or more image models; `taus` belong to such studies.
"""

from __future__ import annotations

import re

from sparselab.config import ConfigError, _error, _format_path
from sparselab.data import READERS
from sparselab.images import HF_IMAGE_DATASETS
from sparselab.inputs import IMAGE, TEXT
from sparselab.vision_models import CONVERTERS

IMAGE_ONLY_SCHEMES = ("timm", "finetuned")
CONVERTIBLE_SCHEMES = ("wheel", "local")
FINETUNED = re.compile(r"finetuned:([^/]+)/([^/]+)/dense/([^/]+)/seed(\d+)")
PATCH_SIZES = {"dinov2_onnx": 14}  # the patch size of what a converter builds
TEXT_RECIPE_OPTIONS = ("max_length", "group_by_length")
TEXT_METHOD_OPTIONS = ("max_length",)
SSL_FIGURE = "ssl_vs_supervised"
ARTICLES = {TEXT: "a text", IMAGE: "an image"}


def model_modality(entry: dict) -> str:
    """image for an entry with image_size (or a source only image models have), else text."""
    scheme = entry["source"].split(":", 1)[0]
    return IMAGE if "image_size" in entry or scheme in IMAGE_ONLY_SCHEMES or "convert" in entry else TEXT


def task_modality(entry: dict) -> str:
    """image for a task whose reader reads images or whose hf: source is an image dataset."""
    scheme, _, target = entry["source"].partition(":")
    reader = READERS.get(entry["reader"]) if entry.get("reader") in READERS else None
    if getattr(reader, "modality", TEXT) == IMAGE or (scheme == "hf" and target in HF_IMAGE_DATASETS):
        return IMAGE
    return TEXT


def finetuned_source(source: str) -> tuple[str, str, str, int] | None:
    """(model, task, recipe, seed) of a finetuned: source, or None for other sources."""
    match = FINETUNED.fullmatch(source)
    return None if match is None else (*match.groups()[:3], int(match.group(4)))


def check_vision(config: dict, explicit: dict) -> None:
    """ConfigError for the first problem with image models, tasks and studies. `explicit` is the
    config before the schema's defaults (what the user wrote, recipe bases resolved)."""
    for name, entry in config["models"].items():
        _check_image_model(config, name, entry)
    for name, study in config["studies"].items():
        _check_study(config, explicit, name, study)


def _check_image_model(config: dict, name: str, entry: dict) -> None:
    parts = ["models", name]
    scheme = entry["source"].split(":", 1)[0]
    if model_modality(entry) == TEXT:
        if "weights_file" in entry:
            raise _error(parts + ["weights_file"], entry["weights_file"], "applies only to timm: sources",
                         "leave it out, or use a timm:<name> source with image_size")
        return
    if "image_size" not in entry:
        raise ConfigError(_format_path(parts + ["image_size"]),
                          f"missing required key 'image_size' for the image model source {entry['source']!r} "
                          "(allowed: the input side in pixels, a multiple of the patch size, e.g. 56 or 224)")
    if scheme == "hf":
        raise _error(parts + ["source"], entry["source"], "is not an image model source (hf: models are text "
                     "classifiers)", "timm:<name>, wheel: or local: with convert, local:<timm folder>, finetuned:")
    if "weights_file" in entry and scheme != "timm":
        raise _error(parts + ["weights_file"], entry["weights_file"], f"applies only to timm: sources, not to "
                     f"{entry['source']!r}", "leave it out")
    if "convert" in entry:
        _check_converter(parts, entry, scheme)
    upstream = finetuned_source(entry["source"])
    if scheme == "finetuned":
        _check_finetuned(config, parts, entry, upstream)


def _check_converter(parts: list, entry: dict, scheme: str) -> None:
    converter = entry["convert"]
    if converter not in CONVERTERS:
        raise ConfigError(_format_path(parts + ["convert"]), CONVERTERS.unknown_message(converter))
    if scheme not in CONVERTIBLE_SCHEMES:
        raise _error(parts + ["convert"], converter, f"applies only to wheel: and local: sources, not to "
                     f"{entry['source']!r}", "leave it out")
    patch = PATCH_SIZES.get(converter, 1)
    if entry["image_size"] % patch:
        size = entry["image_size"]
        raise _error(parts + ["image_size"], size, f"is not a multiple of the patch size {patch} of {converter}",
                     f"a multiple of {patch}, e.g. {max(patch, size - size % patch)} or {size - size % patch + patch}")


def _check_finetuned(config: dict, parts: list, entry: dict, upstream: tuple | None) -> None:
    here = parts + ["source"]
    if upstream is None:
        raise _error(here, entry["source"], "is not the key of a dense run",
                     "finetuned:<model>/<task>/dense/<recipe>/seed<seed>")
    model, task, recipe, _ = upstream
    for value, section in ((model, "models"), (task, "tasks"), (recipe, "recipes")):
        if value not in config[section]:
            raise _error(here, entry["source"], f"names {value!r}, which is not defined under {section}",
                         ", ".join(sorted(config[section])))
    base = config["models"][model]
    if model_modality(base) != IMAGE or base["source"].startswith("finetuned:"):
        raise _error(here, entry["source"], f"starts from {model!r}, which is not an image model with a source "
                     "of its own", "an image model fetched from timm:, wheel:, local:")
    if task_modality(config["tasks"][task]) != IMAGE:
        raise _error(here, entry["source"], f"fine-tunes on {task!r}, which is not an image task", "an image task")
    if base.get("image_size") != entry["image_size"]:
        raise _error(parts + ["image_size"], entry["image_size"], f"differs from the image_size of {model!r}",
                     str(base.get("image_size")))


def _check_study(config: dict, explicit: dict, name: str, study: dict) -> None:
    parts = ["studies", name]
    models = {model: model_modality(config["models"][model]) for model in study["models"]}
    for index, task in enumerate(study["tasks"]):
        modality = task_modality(config["tasks"][task])
        for model, kind in models.items():
            if kind != modality:
                same = sorted(t for t, e in config["tasks"].items() if task_modality(e) == kind)
                raise _error(parts + ["tasks", index], task, f"is {ARTICLES[modality]} task, but model {model!r} is {ARTICLES[kind]} "
                             "model", f"{kind} tasks: {', '.join(same) or 'none defined'}")
        if modality == IMAGE:
            _check_text_options(explicit, parts, study)
    if study.get("figure") == SSL_FIGURE:
        images = [model for model, kind in models.items() if kind == IMAGE]
        if len(images) < 2:
            raise _error(parts + ["models"], study["models"], f"are too few image models for figure {SSL_FIGURE}",
                         "two or more image models (a self-supervised and a supervised backbone)")
    elif "taus" in study:
        raise _error(parts + ["taus"], study["taus"], f"applies only to figure {SSL_FIGURE}", "leave it out")


def _check_text_options(explicit: dict, parts: list, study: dict) -> None:
    """Recipes and methods of a study on images set no option that only text pipelines read."""
    for section, options in (("recipes", TEXT_RECIPE_OPTIONS), ("methods", TEXT_METHOD_OPTIONS)):
        for name in study[section]:
            entry = explicit.get(section, {}).get(name, {})
            for option in options:
                if isinstance(entry, dict) and option in entry:
                    raise _error([section, name, option], entry[option],
                                 f"is a text-only option, but study {parts[-1]!r} runs {section[:-1]} {name!r} on "
                                 "image tasks", f"leave it out of {section[:-1]}s used with image tasks")
