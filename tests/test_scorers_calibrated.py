"""Data-driven scorers (taylor, seven_pre, wanda): the scorer contract and hand-checkable values."""

from __future__ import annotations

import pytest
import torch
from conftest import SMALL
from torch import nn

from sparselab.prunable import select_prunable
from sparselab.scoring import SCORERS, ScoringContext
from sparselab.scoring.seven_pre import SevenState

CALIBRATED = ["seven_pre", "taylor", "wanda"]


def context(model: nn.Module, prunable: dict, calibration) -> ScoringContext:
    return ScoringContext(
        model=model,
        prunable=select_prunable(model, prunable["include"], prunable["exclude"]),
        calibration=calibration,
        generator=torch.Generator().manual_seed(0),
    )


def hand_gradients(model: nn.Module, ctx: ScoringContext, batches: list[dict]) -> list[dict[str, torch.Tensor]]:
    """Task-loss gradients of every prunable weight, one dict per batch, by plain backward()."""
    grads = []
    for batch in batches:
        model.zero_grad()
        model(**batch).loss.backward()
        grads.append({name: weight.grad.clone() for name, weight in ctx.prunable.items()})
    model.zero_grad()
    return grads


# ---------------------------------------------------------------- contract, all three scorers


@pytest.mark.parametrize("name", CALIBRATED)
def test_calibrated_scorer_contract(name, tiny_bert, bert_prunable, calibration):
    ctx = context(tiny_bert, bert_prunable, calibration)
    tiny_bert.bert.embeddings.word_embeddings.weight.requires_grad_(False)  # a frozen part stays frozen
    flags = {n: p.requires_grad for n, p in tiny_bert.named_parameters()}
    before = {n: p.detach().clone() for n, p in tiny_bert.named_parameters()}
    tiny_bert.train()  # dropout on: the scorer must switch it off and restore train mode

    scores = SCORERS.get(name)(**SMALL[name]).score(ctx)

    assert list(scores) == list(ctx.prunable)
    for weight_name, weight in ctx.prunable.items():
        assert scores[weight_name].shape == weight.shape
        assert scores[weight_name].dtype == torch.float32
        assert torch.isfinite(scores[weight_name]).all()
        assert scores[weight_name].abs().sum() > 0
    assert all(torch.equal(p, before[n]) for n, p in tiny_bert.named_parameters()), "weights unchanged"
    assert {n: p.requires_grad for n, p in tiny_bert.named_parameters()} == flags
    assert all(p.grad is None for p in tiny_bert.parameters()), "no gradient left behind"
    assert tiny_bert.training

    tiny_bert.eval()
    again = SCORERS.get(name)(**SMALL[name]).score(context(tiny_bert, bert_prunable, calibration))
    assert all(torch.equal(scores[k], again[k]) for k in scores), "same seed, same scores"


@pytest.mark.parametrize("name", CALIBRATED)
def test_calibrated_scorer_needs_calibration(name, tiny_bert, bert_prunable):
    assert SCORERS.get(name).needs_data
    with pytest.raises(ValueError, match=f"scorer '{name}' needs calibration data") as error:
        SCORERS.get(name)().score(context(tiny_bert, bert_prunable, None))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", CALIBRATED)
def test_hyperparameter_defaults_have_the_right_types(name):
    for key, default in SCORERS.get(name).hyperparameters.items():
        assert type(default) is (float if key in ("a1", "a2") else int), key


# ---------------------------------------------------------------- taylor


def test_taylor_is_the_sum_of_per_batch_abs_weight_times_gradient(tiny_bert, bert_prunable, calibration):
    ctx = context(tiny_bert, bert_prunable, calibration)
    batches = list(calibration.batches(2, 4, 16))
    grads = hand_gradients(tiny_bert, ctx, batches)

    one = SCORERS.get("taylor")(num_batches=1, batch_size=4, max_length=16).score(ctx)
    two = SCORERS.get("taylor")(num_batches=2, batch_size=4, max_length=16).score(ctx)

    for name, weight in ctx.prunable.items():
        w = weight.detach()
        torch.testing.assert_close(one[name], (w * grads[0][name]).abs())
        torch.testing.assert_close(two[name], (w * grads[0][name]).abs() + (w * grads[1][name]).abs())


# ---------------------------------------------------------------- SEVEN


def test_seven_first_step_bias_correction_gives_g_and_g_squared():
    state = SevenState(a1=0.8, a2=0.9)
    grad = torch.tensor([[-3.0, 0.5], [2.0, 0.0]])
    state.update([torch.ones(2, 2)], [grad])
    torch.testing.assert_close(state.m_hat, grad.abs().flatten())
    torch.testing.assert_close(state.v_hat, grad.pow(2).flatten())


def test_seven_steady_gradient_has_ratio_one_at_every_step():
    state = SevenState(a1=0.8, a2=0.9)
    g = torch.full((3, 4), 0.7)
    for _ in range(20):
        state.update([torch.ones(3, 4)], [g])
        ratio = state.m_hat / state.v_hat.sqrt()
        assert (ratio - 1).abs().max() < 1e-6


def test_seven_alternating_gradient_scores_less_than_a_steady_one_of_the_same_mean():
    steady, noisy = SevenState(), SevenState()
    weight = torch.ones(1, 1)
    ratios = []
    for t in range(20):
        steady.update([weight], [torch.ones(1, 1)])  # |g| = 1 every step
        noisy.update([weight], [torch.full((1, 1), 2.0 * (t % 2))])  # |g| = 0, 2, 0, 2, ...: the same mean
        ratios.append(float(noisy.m_hat / noisy.v_hat.sqrt()))
    assert max(ratios[1:]) < 0.85  # t = 0 has g = 0, so 0 / 0 is not a ratio
    assert float(noisy.score) < 0.8 * float(steady.score)


def test_seven_score_is_the_cumulative_sum_of_the_increments():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 5, generator=g)
    grads = [torch.randn(3, 5, generator=g) for _ in range(6)]
    state = SevenState(a1=0.8, a2=0.9)
    m = v = torch.zeros(3, 5)
    expected = torch.zeros(3, 5)
    for t, grad in enumerate(grads):
        state.update([weight], [grad])
        m = 0.8 * m + 0.2 * grad.abs()
        v = 0.9 * v + 0.1 * grad.pow(2)
        m_hat, v_hat = m / (1 - 0.8 ** (t + 1)), v / (1 - 0.9 ** (t + 1))
        expected = expected + (weight * grad.abs() * m_hat / (v_hat.sqrt() + 1e-9)).abs()
        torch.testing.assert_close(state.score, expected.flatten())


def test_seven_rejects_a_decay_of_one():
    with pytest.raises(ValueError, match="0 <= a1, a2 < 1"):
        SevenState(a1=1.0)


def test_seven_pre_feeds_calibration_gradients_to_seven_state(tiny_bert, bert_prunable, calibration):
    ctx = context(tiny_bert, bert_prunable, calibration)
    grads = hand_gradients(tiny_bert, ctx, list(calibration.batches(3, 4, 16)))
    scores = SCORERS.get("seven_pre")(window=3, batch_size=4, max_length=16, a1=0.5, a2=0.7).score(ctx)
    for name, weight in ctx.prunable.items():
        state = SevenState(a1=0.5, a2=0.7)
        for batch_grads in grads:
            state.update([weight], [batch_grads[name]])
        torch.testing.assert_close(scores[name], state.score.view_as(weight))


# ---------------------------------------------------------------- wanda


class FixedBatches:
    """A calibration stand-in that yields the same given batches every time."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        self.fixed = batches

    def batches(self, num_batches: int, batch_size: int, max_length: int):
        yield from self.fixed[:num_batches]


class OneLinear(nn.Module):
    """Token id -> fixed feature row (id 0 is padding, with huge features), then one Linear."""

    def __init__(self, features: torch.Tensor, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("features", features)  # (vocab, in)
        self.proj = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(weight)

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None):
        return self.proj(self.features[input_ids])  # (batch, length, out)


def test_wanda_is_abs_weight_times_column_norms_of_real_tokens():
    features = torch.tensor([[100.0, 100.0, 100.0], [1.0, 0.0, 2.0], [0.0, 3.0, 1.0], [2.0, 1.0, 0.0]])
    weight = torch.tensor([[1.0, -0.8, 0.5], [-4.0, 2.5, 3.0]])
    batch = {
        "input_ids": torch.tensor([[1, 2, 0], [3, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]]),
        "labels": torch.tensor([0, 1]),
    }
    model = OneLinear(features, weight)
    ctx = ScoringContext(model, {"proj.weight": model.proj.weight}, FixedBatches([batch, batch]),
                         torch.Generator().manual_seed(0))

    scores = SCORERS.get("wanda")(num_batches=2).score(ctx)

    # real tokens 1, 2, 3 seen twice: column sums of squares 2 * (1+0+4, 0+9+1, 4+1+0)
    norms = torch.tensor([10.0, 20.0, 10.0]).sqrt()
    torch.testing.assert_close(scores["proj.weight"], weight.abs() * norms)
    # within each row the order follows |W| * norm, not |W|
    # row 0: |W| order 0, 1, 2; scores sqrt 10, 0.8 sqrt 20, 0.5 sqrt 10 -> 1, 0, 2
    # row 1: |W| order 0, 2, 1; scores 4 sqrt 10, 2.5 sqrt 20, 3 sqrt 10 -> 0, 1, 2
    assert scores["proj.weight"].argsort(dim=1, descending=True).tolist() == [[1, 0, 2], [0, 1, 2]]

def test_wanda_ignores_padding_in_bert(tiny_bert, bert_prunable, calibration):
    batch = next(calibration.batches(1, 4, 16))
    extra = 5  # the same batch padded 5 tokens longer
    padded = {key: torch.nn.functional.pad(value, (0, extra)) if value.dim() == 2 else value
              for key, value in batch.items()}
    assert padded["attention_mask"].sum() == batch["attention_mask"].sum()
    scorer = SCORERS.get("wanda")(num_batches=1)
    plain = scorer.score(context(tiny_bert, bert_prunable, FixedBatches([batch])))
    longer = scorer.score(context(tiny_bert, bert_prunable, FixedBatches([padded])))
    for name in plain:
        torch.testing.assert_close(plain[name], longer[name], rtol=1e-5, atol=1e-6)


def test_wanda_compares_within_rows_and_rejects_non_linear_weights(bert_prunable, calibration):
    assert SCORERS.get("wanda").allowed_allocations == ("row",)
    model = nn.Sequential(nn.Embedding(10, 4))
    ctx = ScoringContext(model, {"0.weight": model[0].weight}, calibration, torch.Generator())
    with pytest.raises(ValueError, match="wanda scores only nn.Linear weights; '0.weight'"):
        SCORERS.get("wanda")().score(ctx)
