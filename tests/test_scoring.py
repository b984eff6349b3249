"""Every registered scorer: shapes, determinism, and hand-checkable values."""

from __future__ import annotations

import pytest
import torch
from conftest import SMALL

from sparselab.masks import ALLOCATIONS, Structure, build_masks, sparsity_report
from sparselab.prunable import select_prunable
from sparselab.scoring import SCORERS, ScoringContext


def context(model, prunable, seed=0, calibration=None):
    return ScoringContext(
        model=model,
        prunable=select_prunable(model, prunable["include"], prunable["exclude"]),
        calibration=calibration,
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.mark.parametrize("name", SCORERS.names())
def test_scorer_contract(name, tiny_bert, bert_prunable, calibration):
    """Keys and shapes of the prunable set, finite float32, deterministic, and every allowed
    allocation and structure reach the requested sparsity exactly."""
    scorer_class = SCORERS.get(name)
    ctx = context(tiny_bert, bert_prunable, calibration=calibration)
    scores = scorer_class(**SMALL.get(name, {})).score(ctx)
    assert list(scores) == list(ctx.prunable)
    for weight_name, weight in ctx.prunable.items():
        assert scores[weight_name].shape == weight.shape
        assert scores[weight_name].dtype == torch.float32
        assert torch.isfinite(scores[weight_name]).all()
    again = scorer_class(**SMALL.get(name, {})).score(context(tiny_bert, bert_prunable, calibration=calibration))
    assert all(torch.equal(scores[k], again[k]) for k in scores), "same seed, same scores"
    for allocation in scorer_class.allowed_allocations or ALLOCATIONS.names():
        for sparsity in (0.3, 0.75):
            masks = build_masks(scores, sparsity, allocation, Structure())
            sparsity_report(masks, sparsity, allocation, Structure())  # raises unless exact
    nm = build_masks(scores, 0.5, "layerwise", Structure.parse("2:4"))
    for mask in nm.values():
        assert (mask.reshape(mask.shape[0], -1, 4).sum(-1) == 2).all()


@pytest.mark.parametrize("name", SCORERS.names())
def test_scorer_rejects_unknown_hyperparameter(name):
    with pytest.raises(ValueError, match="unknown hyper-parameter 'bogus'"):
        SCORERS.get(name)(bogus=1)


def test_magnitude_is_absolute_weight(tiny_bert, bert_prunable):
    ctx = context(tiny_bert, bert_prunable)
    name = next(iter(ctx.prunable))
    with torch.no_grad():
        ctx.prunable[name][0, :3] = torch.tensor([-2.0, 0.5, 0.0])
    scores = SCORERS.get("magnitude")().score(ctx)
    assert scores[name][0, :3].tolist() == [2.0, 0.5, 0.0]


def test_random_depends_on_seed(tiny_bert, bert_prunable):
    a = SCORERS.get("random")().score(context(tiny_bert, bert_prunable, seed=0))
    b = SCORERS.get("random")().score(context(tiny_bert, bert_prunable, seed=1))
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_scorer_names_the_allowed_ones():
    with pytest.raises(KeyError, match=r"unknown scorer 'magnitud' \(allowed: .*magnitude.*\); did you mean 'magnitude'\?"):
        SCORERS.get("magnitud")
