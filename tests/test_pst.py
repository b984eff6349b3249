"""PST (methods.md section 5): first mask, exact per-layer sparsity, schedule, counts, gradients, export."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import BERT_PRUNABLE
from torch import nn
from torch.nn.utils import parametrize
from transformers import BertConfig, BertForSequenceClassification

from sparselab import kernels
from sparselab.masks import SelectionWindow, Structure, build_masks, keep_count, top_k_rows
from sparselab.prunable import select_prunable
from sparselab.sparsifiers import SPARSIFIERS, Target
from sparselab.sparsifiers.pst import ParameterEfficientSparseTraining, PSTGroup, _straight_through_grads, extend
from sparselab.kernels import straight_through_grads


def layerwise(sparsity: float) -> Target:
    return Target(sparsity, "layerwise", Structure())


def attach_pst(model, sparsity=0.75, **hyper):
    prunable = select_prunable(model, BERT_PRUNABLE["include"], BERT_PRUNABLE["exclude"])
    sparsifier = ParameterEfficientSparseTraining(**hyper)
    sparsifier.attach(model, prunable, layerwise(sparsity))
    return sparsifier, prunable


def toy_batch(step: int, size: int = 8, length: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    ids = torch.randint(5, 120, (size, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": (ids[:, 1] > 60).long()}


def run_steps(model, sparsifier, steps: int, lr: float = 1e-2, on_step=None) -> None:
    """The hook sequence of the training loop (finetune.train), with a real AdamW."""
    sparsifier.begin(steps)
    optimizer = torch.optim.AdamW(sparsifier.trainable_parameters(), lr=lr, weight_decay=0.01)
    model.train()
    for step in range(steps):
        loss = model(**toy_batch(step)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sparsifier.after_backward(step)
        optimizer.step()
        sparsifier.after_step(step)
        if on_step is not None:
            on_step(step)


def grads_of(sparsifier, name: str) -> dict[str, torch.Tensor]:
    """The gradients of one matrix's U, V, A, B, R, C (slices of its group's), None before any."""
    group, index = sparsifier.slots[name]
    return {letter: None if getattr(group, letter).grad is None else getattr(group, letter).grad[index]
            for letter in "UVABRC"}


def linear_of(model, name: str) -> nn.Linear:
    return model.get_submodule(name.rpartition(".")[0])


def test_registered_with_its_defaults():
    cls = SPARSIFIERS.get("pst")
    assert cls is ParameterEfficientSparseTraining
    assert cls.hyperparameters == {"rank_w": 8, "rank_m": 8, "start": 0.1, "end": 0.7, "train_head": True}
    assert cls.allowed_allocations == ("layerwise",) and cls.allows_nm is False


@pytest.mark.parametrize("target", [Target(0.5, "global", Structure()), Target(0.5, "layerwise", Structure(2, 4))])
def test_refuses_global_allocation_and_nm(tiny_bert, target):
    prunable = select_prunable(tiny_bert, BERT_PRUNABLE["include"], [])
    with pytest.raises(ValueError, match="layerwise"):
        ParameterEfficientSparseTraining().attach(tiny_bert, prunable, target)


def test_first_mask_is_the_layerwise_magnitude_mask(tiny_bert):
    magnitudes = {n: p.detach().abs().clone() for n, p in tiny_bert.named_parameters()}
    sparsifier, prunable = attach_pst(tiny_bert, sparsity=0.75)
    sparsifier.begin(100)
    s0 = sparsifier.scheduled_sparsity(0)
    assert s0 == 0.0
    expected = build_masks({n: magnitudes[n] for n in prunable}, s0, "layerwise", Structure())
    assert all(torch.equal(sparsifier.masks[n], expected[n]) for n in prunable)
    assert all(m.all() for m in sparsifier.masks.values())

    # forced non-zero sparsity at step 0 (start = end = 0: the target at once)
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert.config).eval()
    magnitudes = {n: p.detach().abs().clone() for n, p in model.named_parameters()}
    sparsifier, prunable = attach_pst(model, sparsity=0.6, start=0.0, end=0.0)
    sparsifier.begin(100)
    assert sparsifier.scheduled_sparsity(0) == 0.6
    expected = build_masks({n: magnitudes[n] for n in prunable}, 0.6, "layerwise", Structure())
    for name, weight in prunable.items():
        assert torch.equal(sparsifier.masks[name], expected[name]), name
        # the layer computes with W * M (U V = 0 at the start)
        assert torch.equal(linear_of(model, name).weight, weight.detach() * expected[name])


def test_schedule_at_10_40_70_percent(tiny_bert):
    sparsifier, _ = attach_pst(tiny_bert, sparsity=0.9)
    sparsifier.begin(100)
    assert sparsifier.scheduled_sparsity(10) == pytest.approx(0.0)
    assert sparsifier.scheduled_sparsity(40) == pytest.approx(0.9 - 0.9 * 0.5**3)
    assert sparsifier.scheduled_sparsity(70) == pytest.approx(0.9)


def test_per_layer_sparsity_is_exact_at_every_step(tiny_bert):
    sparsifier, prunable = attach_pst(tiny_bert, sparsity=0.8)
    seen = []

    def check(step):
        sparsity = sparsifier.scheduled_sparsity(step + 1)
        seen.append(sparsity)
        for name, mask in sparsifier.masks.items():
            assert int(mask.sum()) == keep_count(mask.numel(), sparsity), (step, name)
            with torch.no_grad():
                assert (linear_of(tiny_bert, name).weight[~mask] == 0).all()

    run_steps(tiny_bert, sparsifier, 10, on_step=check)
    assert seen[0] == 0.0 and 0.0 < seen[2] < 0.8 and seen[-1] == 0.8  # 0, ramp, target


def bert_base_on_meta(rank_w, rank_m, train_head):
    config = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    with torch.device("meta"):
        model = BertForSequenceClassification(config)
    sparsifier, prunable = attach_pst(model, rank_w=rank_w, rank_m=rank_m, train_head=train_head)
    assert len(prunable) == 72
    return model, sparsifier


def test_trainable_count_on_bert_base_shapes():
    model, pst = bert_base_on_meta(8, 8, train_head=False)
    base_total = 109_482_240  # BERT-base without head (embeddings, encoder, pooler)
    assert sum(p.numel() for n, p in model.base_model.named_parameters() if "parametrizations" not in n
               or n.endswith("original")) == base_total
    # per matrix (r_w + r_m + 1) * (out + in); per layer 4 * (768 + 768) + 2 * (3072 + 768)
    assert pst.trainable_count() == 17 * (4 * 1536 + 2 * 3840) * 12 == 2_820_096
    assert round(100 * pst.trainable_count() / base_total, 2) == 2.58

    _, pst4 = bert_base_on_meta(4, 4, train_head=False)
    assert pst4.trainable_count() == 9 * 13_824 * 12
    assert round(100 * pst4.trainable_count() / base_total, 2) == 1.36

    _, with_head = bert_base_on_meta(8, 8, train_head=True)
    assert with_head.trainable_count() == 2_820_096 + 768 * 2 + 2  # classifier weight and bias


def test_gradients_reach_the_pst_parameters_only(tiny_bert):
    sparsifier, prunable = attach_pst(tiny_bert, sparsity=0.5, start=0.0, end=0.0)
    sparsifier.begin(10)
    optimizer = torch.optim.AdamW(sparsifier.trainable_parameters(), lr=1e-2)
    tiny_bert.train()

    tiny_bert(**toy_batch(0)).loss.backward()
    for name in prunable:
        grads = grads_of(sparsifier, name)
        for letter in "VBRC":
            assert grads[letter].abs().sum() > 0, (name, letter)
        # V = B = 0 at the start, so U and A get exactly zero gradients (as in LoRA) ...
        assert grads["U"].abs().sum() == 0 and grads["A"].abs().sum() == 0
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    tiny_bert(**toy_batch(1)).loss.backward()
    for name in prunable:  # ... and non-zero ones once V and B have moved
        for letter, grad in grads_of(sparsifier, name).items():
            assert grad.abs().sum() > 0, (name, letter)

    for weight in prunable.values():
        assert not weight.requires_grad and weight.grad is None
    params = dict(tiny_bert.named_parameters())
    for name in ("bert.embeddings.word_embeddings.weight", "bert.pooler.dense.weight",
                 "bert.encoder.layer.0.attention.output.LayerNorm.weight", "bert.encoder.layer.0.intermediate.dense.bias"):
        assert not params[name].requires_grad and params[name].grad is None, name
    assert params["classifier.weight"].grad is not None and params["classifier.bias"].grad is not None
    trainable = {id(p) for p in sparsifier.trainable_parameters()}
    assert {n for n, p in tiny_bert.named_parameters() if id(p) in trainable and "parametrizations" not in n} == {
        "classifier.weight", "classifier.bias"}


def one_linear_pst(in_features: int, out_features: int, rank_w: int, rank_m: int, sparsity: float):
    """(model, sparsifier, PST layer) of one bias-free Linear with its mask at `sparsity` from step 0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(in_features, out_features, bias=False))
    sparsifier = ParameterEfficientSparseTraining(rank_w=rank_w, rank_m=rank_m, start=0.0, end=0.0)
    sparsifier.attach(model, {"0.weight": model[0].weight}, layerwise(sparsity))
    sparsifier.begin(1)
    return model, sparsifier, sparsifier.layer_parameters("0.weight")


def test_straight_through_gradients_by_hand():
    # one Linear, loss = sum of outputs: dL/dW_masked[i, j] = sum_b x[b, j] whatever the mask
    model, sparsifier, layer = one_linear_pst(4, 3, rank_w=2, rank_m=2, sparsity=0.5)
    with torch.no_grad():
        layer["V"].normal_()
    x = torch.randn(5, 4)
    model(x).sum().backward()
    g = x.sum(0).expand(3, 4)  # (out, in)
    effective = (model[0].parametrizations.weight.original + layer["U"] @ layer["V"]).detach()
    mask = sparsifier.masks["0.weight"]
    grads = grads_of(sparsifier, "0.weight")
    assert int(mask.sum()) == 6
    assert torch.allclose(grads["R"], (g * effective).sum(1))  # dS = g * W' (straight through M)
    assert torch.allclose(grads["C"], (g * effective).sum(0))
    d_effective = g * mask + g * effective * effective.sign()  # through W' * M and through |W'| in S
    assert torch.allclose(grads["V"], layer["U"].detach().T @ d_effective, atol=1e-6)


def test_train_then_finalize_exports_a_plain_sparse_model(tiny_bert):
    keys = set(tiny_bert.state_dict())
    before = {n: p.detach().clone() for n, p in tiny_bert.named_parameters()}
    sparsifier, prunable = attach_pst(tiny_bert, sparsity=0.75)
    count = sparsifier.trainable_count()
    run_steps(tiny_bert, sparsifier, 6)
    assert sparsifier.sparsity == 0.75

    expected = {}
    with torch.no_grad():
        for name in prunable:
            layer = sparsifier.layer_parameters(name)
            expected[name] = (prunable[name] + layer["U"] @ layer["V"]) * sparsifier.masks[name]
        tiny_bert.eval()
        logits_before = tiny_bert(**toy_batch(99)).logits
    masks = {n: m.clone() for n, m in sparsifier.masks.items()}

    sparsifier.finalize()
    assert not any(parametrize.is_parametrized(m) for m in tiny_bert.modules())
    assert set(tiny_bert.state_dict()) == keys
    assert all(p.requires_grad for p in tiny_bert.parameters())
    params = dict(tiny_bert.named_parameters())
    for name, weight in prunable.items():
        assert params[name] is weight
        assert torch.allclose(weight, expected[name], rtol=0, atol=1e-7), name
        assert int((weight != 0).sum()) == keep_count(weight.numel(), 0.75), name
        assert torch.equal(sparsifier.masks[name], masks[name])
        assert torch.equal(sparsifier.masks[name], weight != 0)
        assert not torch.equal(weight, before[name] * masks[name])  # U V was merged
    assert sparsifier.trainable_count() == count
    with torch.no_grad():
        assert torch.allclose(tiny_bert(**toy_batch(99)).logits, logits_before, atol=1e-5)
    # frozen parts did not move; the head (train_head: true by default) did
    assert torch.equal(params["bert.embeddings.word_embeddings.weight"], before["bert.embeddings.word_embeddings.weight"])
    assert torch.equal(params["bert.pooler.dense.weight"], before["bert.pooler.dense.weight"])
    assert not torch.equal(params["classifier.weight"], before["classifier.weight"])


def test_train_head_false_leaves_the_classifier_unchanged(tiny_bert):
    head = {n: p.detach().clone() for n, p in tiny_bert.classifier.named_parameters()}
    sparsifier, _ = attach_pst(tiny_bert, sparsity=0.5, train_head=False)
    assert sparsifier.trainable_count() == sum(p.numel() for p in sparsifier.pst_parameters())
    assert not any(p is tiny_bert.classifier.weight for p in sparsifier.trainable_parameters())
    run_steps(tiny_bert, sparsifier, 4)
    sparsifier.finalize()
    for name, param in tiny_bert.classifier.named_parameters():
        assert torch.equal(param, head[name]), name


def test_mask_is_cached_between_optimizer_steps(tiny_bert):
    sparsifier, prunable = attach_pst(tiny_bert, sparsity=0.5, start=0.0, end=0.0)
    sparsifier.begin(10)
    name = next(iter(prunable))
    layer, linear = sparsifier.layer_parameters(name), linear_of(tiny_bert, name)
    first = sparsifier.masks[name].clone()
    with torch.no_grad():
        layer["C"][:16] = 100.0  # the first 16 inputs now outscore every other column
    tiny_bert.train()
    tiny_bert(**toy_batch(0)).loss.backward()  # forward passes reuse the cached mask
    with torch.no_grad():
        tiny_bert.eval()(**toy_batch(1))
        assert torch.equal(sparsifier.masks[name], first)
        assert torch.equal(linear.weight, prunable[name] * first)
    sparsifier.after_step(0)  # the update keeps columns 0..15 (half of the 32 x 32 query matrix)
    expected = torch.zeros_like(first)
    expected[:, :16] = True
    assert torch.equal(sparsifier.masks[name], expected)


def test_gradients_match_autograd_through_the_explicit_importance():
    # the reference builds S and the straight-through mask W' * (M + S - S.detach()) explicitly
    model, sparsifier, layer = one_linear_pst(6, 5, rank_w=2, rank_m=3, sparsity=0.4)
    with torch.no_grad():
        for letter in "VBRC":
            layer[letter].normal_()
    x = torch.randn(7, 6)
    (model(x) ** 2).sum().backward()
    got = grads_of(sparsifier, "0.weight")

    params = {n: layer[n].detach().clone().requires_grad_() for n in "UVABRC"}
    effective = model[0].parametrizations.weight.original + params["U"] @ params["V"]
    scores = effective.abs() + params["A"] @ params["B"] + params["R"][:, None] + params["C"][None, :]
    mask = sparsifier.masks["0.weight"].float()
    (((x @ (effective * (mask + scores - scores.detach())).T) ** 2).sum()).backward()
    for n in "UVABRC":
        torch.testing.assert_close(got[n], params[n].grad, msg=n)


def test_gradients_of_a_group_of_matrices_match_autograd_each():
    # three Linears of one shape form one stacked group; the last one is skipped by the forward
    # pass, so its gradients are zero; each used one gets its own reference gradients
    torch.manual_seed(0)
    model = nn.ModuleList([nn.Linear(6, 6, bias=False) for _ in range(3)])
    prunable = {f"{i}.weight": layer.weight for i, layer in enumerate(model)}
    sparsifier = ParameterEfficientSparseTraining(rank_w=2, rank_m=3, start=0.0, end=0.0)
    sparsifier.attach(model, prunable, layerwise(0.5))
    sparsifier.begin(1)
    assert len(sparsifier._groups) == 1
    layers = {name: sparsifier.layer_parameters(name) for name in prunable}
    with torch.no_grad():
        for layer in layers.values():
            for letter in "VBRC":
                layer[letter].normal_()
    sparsifier.update_masks(0.5)  # the masks of the new scores
    x = torch.randn(7, 6)
    (model[1](torch.tanh(model[0](x))) ** 2).sum().backward()

    originals = {name: model[int(name[0])].parametrizations.weight.original for name in prunable}
    params = {name: {n: layers[name][n].detach().clone().requires_grad_() for n in "UVABRC"} for name in prunable}
    masked = {}
    for name, p in params.items():
        effective = originals[name] + p["U"] @ p["V"]
        scores = effective.abs() + p["A"] @ p["B"] + p["R"][:, None] + p["C"][None, :]
        mask = sparsifier.masks[name].float()
        masked[name] = effective * (mask + scores - scores.detach())
    (((torch.tanh(x @ masked["0.weight"].T) @ masked["1.weight"].T) ** 2).sum()).backward()
    for name in ("0.weight", "1.weight"):
        got = grads_of(sparsifier, name)
        for n in "UVABRC":
            # float32 sums in another order, of gradients up to a few hundred
            torch.testing.assert_close(got[n], params[name][n].grad, rtol=1e-5, atol=1e-3, msg=f"{name} {n}")
    assert all(grad.abs().sum() == 0 for grad in grads_of(sparsifier, "2.weight").values())


@pytest.mark.parametrize("out_features", [4, 6, 9])  # whole row blocks of the CPU kernel, and a remainder
def test_cpu_kernel_and_torch_path_give_the_same_gradients(out_features):
    # the one-pass CPU kernel (pst_kernels) against the batched torch code a GPU runs, and both
    # against the formulas: dS = G * W', dW' = G * (M + |W'|), dU = dW' V^T, dV = U^T dW',
    # dA = dS B^T, dB = A^T dS, dR = dS 1, dC = 1^T dS
    g = torch.Generator().manual_seed(out_features)
    n, columns, rank_w, rank_m = 3, 7, 2, 3
    grads = [torch.randn(out_features, columns, generator=g) for _ in range(n)]
    effective = torch.randn(n, out_features, columns, generator=g)
    mask = torch.rand(n, out_features, columns, generator=g) > 0.5
    U, A = torch.randn(n, out_features, rank_w, generator=g), torch.randn(n, out_features, rank_m, generator=g)
    V, B = torch.randn(n, rank_w, columns, generator=g), torch.randn(n, rank_m, columns, generator=g)
    R, C = torch.randn(n, out_features, generator=g), torch.randn(n, columns, generator=g)
    kernel = straight_through_grads(tuple(grads), mask, effective, U, V, A, B)

    G = torch.stack(grads)
    d_scores, d_effective = G * effective, G * (mask + effective.abs())
    expected = (d_effective @ V.mT, U.mT @ d_effective, d_scores @ B.mT, A.mT @ d_scores, d_scores.sum(-1), d_scores.sum(-2))
    buffers = (torch.empty_like(G), torch.empty_like(G))
    dU, dV, dA_ext, dB_ext = _straight_through_grads.__wrapped__(G.clone(), effective, mask, U, V, *extend(A, B, R, C), *buffers)
    torch_path = (dU, dV, dA_ext[..., :rank_m], dB_ext[:, :rank_m], dA_ext[..., rank_m], dB_ext[:, rank_m + 1])
    for name, got_kernel, got_torch, want in zip("UVABRC", kernel, torch_path, expected):
        torch.testing.assert_close(got_kernel, want, msg=f"kernel d{name}")
        torch.testing.assert_close(got_torch, want, msg=f"torch d{name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # the CPU kernel, and torch's path
def test_effective_weight_and_scores_of_a_group(dtype):
    g = torch.Generator().manual_seed(1)
    weights = [nn.Parameter(torch.randn(9, 7, generator=g, dtype=dtype)) for _ in range(3)]
    group = PSTGroup(weights, [torch.randn(9, 2, generator=g) for _ in range(3)],
                     [torch.randn(9, 3, generator=g) for _ in range(3)], rank_w=2, rank_m=3)
    with torch.no_grad():
        for letter in "VBRC":
            getattr(group, letter).normal_(generator=g)
    effective, scores = torch.empty_like(group.weight), torch.empty_like(group.weight)
    group.effective(out=effective, scores=scores)
    want = group.weight + group.U @ group.V
    torch.testing.assert_close(effective, want.detach())
    torch.testing.assert_close(scores, (want.abs() + group.A @ group.B + group.R[..., None] + group.C[:, None]).detach())
    torch.testing.assert_close(group.effective(), want.detach())


def test_bf16_autocast_trains_in_float32():
    model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=64, vocab_size=128))
    sparsifier, _ = attach_pst(model, sparsity=0.5, start=0.0, end=0.0)
    sparsifier.begin(2)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**toy_batch(0)).loss
    loss.backward()
    for p in sparsifier.pst_parameters():
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()


# a wide window (every row has entries inside) and a narrow one (rows with one or two, which the
# kernel finds piece by piece, and a last piece shorter than the others)
@pytest.mark.parametrize("columns, half_width", [(40, 0.5), (200, 0.02)])
def test_selection_kernel_counts_collects_and_keeps_above_its_window(columns, half_width):
    g = torch.Generator().manual_seed(3)
    n, out, rank = 3, 13, 5
    weight, U, V = torch.randn(n, out, columns, generator=g), torch.randn(n, out, rank, generator=g), torch.randn(n, rank, columns, generator=g)
    A, B = torch.randn(n, out, 11, generator=g), torch.randn(n, 11, columns, generator=g)  # more than one pass of 8 ranks
    R, C = torch.randn(n, out, generator=g), torch.randn(n, columns, generator=g)
    effective, masked = torch.empty_like(weight), torch.empty_like(weight)
    mask = torch.empty_like(weight, dtype=torch.bool)
    window = SelectionWindow(n, capacity=64)
    want = (weight + U @ V).abs() + A @ B + R[..., None] + C[:, None]
    middle = want.view(n, -1).median(1).values
    window.low.copy_(middle - half_width)
    window.high.copy_(middle + half_width)
    weight[2, 0, 0] = math.nan
    kernels.pst_select(weight, U, V, A, B, R, C, effective, mask, masked, window)
    flat, low, high = want.view(n, -1), window.low[:, None], window.high[:, None]
    torch.testing.assert_close(effective, weight + U @ V, equal_nan=True)
    stored = torch.empty_like(weight)  # W' as pst_scores computes it, to the bit: a resumed run computes it there
    kernels.pst_scores(weight, U, V, A, B, R, C, stored, None)
    assert torch.equal(effective[:2], stored[:2])
    assert window.counts[:, 0].tolist()[:2] == (flat > high).sum(1).tolist()[:2]
    assert window.counts[:, 1].tolist()[:2] == (flat > low).sum(1).tolist()[:2]
    assert window.counts[:, 2].tolist() == [0, 0, 1]
    for row in range(2):
        inside = (flat[row] > low[row]) & (flat[row] <= high[row])
        size = int(inside.sum())
        assert 0 < size < 64
        torch.testing.assert_close(window.values[row, :size], flat[row][inside])
        assert window.positions[row, :size].tolist() == inside.nonzero().flatten().tolist()
        # the entries above the window are kept, with their W'; the window's await admit_window
        assert torch.equal(mask[row].flatten(), flat[row] > high[row])
        assert torch.equal(masked[row], effective[row] * mask[row])


def test_admit_window_completes_exact_top_k_with_ties_to_the_lower_position():
    # one row of 8 entries; the window (0.5, 3] held 1.0, 2.0, 2.0, 3.0 at positions 1, 3, 5, 6;
    # 2 entries are above it (positions 0 and 7), so keep = 4 needs 2 from the window: 3.0 and
    # the first 2.0 (the k-th largest), not the later tied 2.0
    window = SelectionWindow(1, capacity=8)
    window.values[0, :4] = torch.tensor([1.0, 2.0, 2.0, 3.0])
    window.positions[0, :4] = torch.tensor([1, 3, 5, 6])
    window.counts[0] = torch.tensor([2, 6, 0])
    effective = torch.arange(1.0, 9.0)[None]
    mask = torch.tensor([[True, False, False, False, False, False, False, True]])
    masked = torch.where(mask, effective, 0.0)
    kernels.admit_window(window, torch.tensor([2.0]), [0], 4, effective, mask, masked)
    assert mask[0].nonzero().flatten().tolist() == [0, 3, 6, 7]
    assert masked.tolist() == [[1.0, 0.0, 0.0, 4.0, 0.0, 0.0, 7.0, 8.0]]
    window.positions[0, :4] = torch.tensor([1, 3, 4, 6])  # a matrix not listed is left alone
    kernels.admit_window(window, torch.tensor([2.0]), [], 4, effective, mask, masked)
    assert mask[0].nonzero().flatten().tolist() == [0, 3, 6, 7]


def test_keep_above_writes_the_mask_and_the_masked_weight_of_the_listed_rows():
    scores = torch.tensor([[0.5, 2.0, 1.0, 2.0], [3.0, -1.0, 0.0, 4.0]])
    effective = torch.tensor([[1.0, -2.0, 3.0, -4.0], [5.0, 6.0, 7.0, 8.0]])
    mask, masked = torch.zeros_like(scores, dtype=torch.bool), torch.full_like(scores, 9.0)
    kept = kernels.keep_above(scores, torch.tensor([1.0, 3.0]), effective, mask, masked)
    assert kept.tolist() == [3, 2]
    assert mask.tolist() == [[False, True, True, True], [True, False, False, True]]
    assert masked.tolist() == [[0.0, -2.0, 3.0, -4.0], [5.0, 0.0, 0.0, 8.0]]
    masked.fill_(9.0)
    kept = kernels.keep_above(scores, torch.tensor([1.0, 0.0]), effective, mask, masked, [1])
    assert kept.tolist() == [0, 3]
    assert masked.tolist() == [[9.0, 9.0, 9.0, 9.0], [5.0, 0.0, 7.0, 8.0]]


def test_scores_of_listed_matrices_only():
    g = torch.Generator().manual_seed(5)
    n, out, columns = 3, 5, 9
    weight, U, V = torch.randn(n, out, columns, generator=g), torch.randn(n, out, 2, generator=g), torch.randn(n, 2, columns, generator=g)
    A, B = torch.randn(n, out, 3, generator=g), torch.randn(n, 3, columns, generator=g)
    R, C = torch.randn(n, out, generator=g), torch.randn(n, columns, generator=g)
    effective, scores = torch.zeros_like(weight), torch.zeros_like(weight)
    kernels.pst_scores(weight, U, V, A, B, R, C, effective, scores, [2])
    want = weight + U @ V
    torch.testing.assert_close(effective[2], want[2])
    torch.testing.assert_close(scores[2], want[2].abs() + A[2] @ B[2] + R[2][:, None] + C[2])
    assert not effective[:2].any() and not scores[:2].any()


@pytest.mark.parametrize("tied", [False, True])
def test_windowed_selection_equals_top_k_at_every_step(tied):
    # the CPU path (window, admissions, searched misses) against top_k_rows on the
    # same scores, over the steps before a ramp (W' * M is W' itself: the first selection must
    # write every entry of its own buffer), the ramp and the steps after it, with scores that
    # drift; `tied` rounds W so that whole groups of scores tie at the threshold
    g = torch.Generator().manual_seed(4)
    weights = [nn.Parameter(torch.randn(64, 48, generator=g)) for _ in range(3)]
    if tied:
        for weight in weights:
            weight.data = torch.round(weight.data * 4) / 4
    group = PSTGroup(weights, [torch.randn(64, 4, generator=g) for _ in range(3)],
                     [torch.randn(64, 4, generator=g) for _ in range(3)], rank_w=4, rank_m=4)
    assert group.uses_cpu_kernels
    resolved = 0
    original = group._window.resolve

    def counting(keep):
        nonlocal resolved
        threshold, missed = original(keep)
        resolved += 3 - len(missed)
        return threshold, missed

    group._window.resolve = counting
    numel = 64 * 48
    for step in range(33):
        keep = keep_count(numel, 0.7 * min(max(step - 2, 0), 20) / 20)
        if not tied:
            with torch.no_grad():
                for letter in "VBRC":
                    getattr(group, letter).add_(torch.randn(getattr(group, letter).shape, generator=g) * 1e-3)
        group.refresh(keep)
        effective = group.effective()
        assert torch.equal(group.cached()[0], effective)
        scores = (effective.abs() + group.A @ group.B + group.R[..., None] + group.C[:, None]).detach()
        assert torch.equal(group.mask.view(3, -1), top_k_rows(scores.view(3, -1), keep)), step
        assert (group.mask.view(3, -1).sum(1) == keep).all()
        assert torch.equal(group.cached()[1], effective * group.mask)
    assert resolved > 45  # most selections came from the window
