"""Methods in params.yaml: scorer or sparsifier, composition with allocations and structures."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from sparselab.config import ConfigError, validate_config
from sparselab.io import save_masks
from sparselab.masks import Structure, build_masks
from sparselab.pipeline import build_sparsifier
from sparselab.prunable import select_prunable
from sparselab.sparsifiers import FixedMask
from sparselab.sparsifiers.gmp import GradualMagnitude

PARAMS = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())


def study_with(method: dict, **study) -> dict:
    config = copy.deepcopy(PARAMS)
    config["methods"]["candidate"] = method
    config["studies"]["essential_sparsity"].update(methods=["candidate"], **study)
    return config


@pytest.mark.parametrize(
    "method, study",
    [
        ({"sparsifier": "gmp", "frequency": 10}, {"allocations": ["global", "layerwise"]}),
        ({"sparsifier": "pst", "rank_w": 4, "rank_m": 4}, {"allocations": ["layerwise"]}),
        ({"sparsifier": "seven_dyn", "window_start": 8, "window_length": 71}, {"allocations": ["global"]}),
        ({"sparsifier": "pst"}, {"allocations": ["native"]}),
        ({"scorer": "wanda"}, {"allocations": ["native"]}),
        ({"scorer": "wanda", "num_batches": 4}, {"allocations": ["row"], "structures": ["unstructured", "2:4"]}),
    ],
)
def test_methods_that_compose(method, study):
    validate_config(study_with(method, **study))


@pytest.mark.parametrize(
    "method, study, message",
    [
        ({"sparsifier": "pst"}, {"allocations": ["global"]},
         "studies.essential_sparsity.allocations[0]: 'global' is not possible with method 'candidate' (pst allocates by itself) (allowed: layerwise, native)"),
        ({"scorer": "wanda"}, {"allocations": ["layerwise"]}, "(allowed: row, native)"),
        ({"sparsifier": "gmp"}, {"structures": ["2:4"]}, "'2:4' is not possible with method 'candidate' (gmp prunes unstructured)"),
        ({"sparsifier": "seven_dyn", "window": 3}, {}, "methods.candidate.window: 'window' is not a hyper-parameter of sparsifier 'seven_dyn'"),
        ({"sparsifier": "gmpp"}, {}, "unknown sparsifier 'gmpp' (allowed: acdc, gmp, pst, seven_dyn); did you mean 'gmp'?"),
        ({"sparsifier": "gmp", "scorer": "magnitude"}, {}, "exactly one of scorer (one-shot) or sparsifier"),
        # the standard recipe makes at most 79 steps (2,500 examples, batch 32, one epoch)
        ({"sparsifier": "seven_dyn", "window_start": 8, "window_length": 72}, {},
         "methods.candidate: seven_dyn window (start 8, length 72) ends at step 80, after the run's 79 optimizer "
         "steps: the model would never reach its target sparsity (allowed: window_start + window_length <= 79"),
        ({"sparsifier": "seven_dyn", "preset": "sst2"}, {}, "(start 1000, length 4000) ends at step 5000"),
        ({"sparsifier": "seven_dyn", "preset": "sst-2"}, {},
         "methods.candidate: seven_dyn preset 'sst-2' is unknown (allowed: cola, mnli, mrpc, qnli, qqp, rte, sst2, stsb"),
        ({"sparsifier": "pst", "rank_w": 0}, {}, "methods.candidate: pst: rank_w must be a positive integer, not 0"),
        ({"scorer": "seven_pre", "a1": 1.0}, {}, "methods.candidate: SEVEN needs 0 <= a1, a2 < 1 (got a1=1.0"),
        ({"sparsifier": "seven_dyn", "a2": 1.5}, {}, "methods.candidate: SEVEN needs 0 <= a1, a2 < 1"),
        ({"sparsifier": "pst", "start": 0.8, "end": 0.2}, {}, "methods.candidate: pst: need 0 <= start <= end <= 1"),
    ],
)
def test_methods_that_do_not_compose(method, study, message):
    with pytest.raises(ConfigError) as error:
        validate_config(study_with(method, **study))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_official_window_fits_a_recipe_without_an_example_cap():
    config = study_with({"sparsifier": "seven_dyn", "preset": "sst2"})
    config["recipes"]["standard"]["max_train_examples"] = None  # steps known only once the data is fetched
    validate_config(config)


def test_build_sparsifier_for_each_kind_of_run(tiny_bert, bert_prunable, tmp_path):
    assert build_sparsifier(tiny_bert, None, None) is None
    chosen = select_prunable(tiny_bert, bert_prunable["include"], bert_prunable["exclude"])
    masks = build_masks({n: p.detach().abs() for n, p in chosen.items()}, 0.5, "global", Structure())
    save_masks(tmp_path / "mask.safetensors", masks)
    fixed = build_sparsifier(tiny_bert, tmp_path / "mask.safetensors", None)
    assert isinstance(fixed, FixedMask) and all(torch.equal(fixed.masks[k], masks[k]) for k in masks)
    during = build_sparsifier(tiny_bert, None, {
        "method": {"sparsifier": "gmp", "frequency": 5}, "sparsity": 0.7, "allocation": "layerwise",
        "structure": "unstructured", "prunable": bert_prunable,
    })
    assert isinstance(during, GradualMagnitude) and during.hyper["frequency"] == 5
    assert during.target.sparsity == 0.7 and during.target.allocation == "layerwise"
    assert list(during.prunable) == list(chosen)
