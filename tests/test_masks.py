"""Allocation x structure: exact k, deterministic ties, nested masks, n:m validity."""

from __future__ import annotations

import math

import pytest
import torch

from sparselab import kernels
from sparselab.masks import (ALLOCATIONS, LastThresholds, SelectionWindow, Structure, _count_above, build_masks,
                             drop_extra_ties, keep_count, kth_largest, nm_mask, row_thresholds, sparsity_report,
                             top_k_flat, top_k_parts, top_k_rows)
from sparselab.prunable import PrunableSetError, select_prunable


def test_keep_count_rounds_half_up():
    assert keep_count(10, 0.25) == 8  # 7.5 -> 8 (round() would give 8 too)
    assert keep_count(10, 0.35) == 7  # 6.5 -> 7 (round() would give 6)
    assert keep_count(10, 0.9) == 1
    assert keep_count(10, 0.0) == 10


def test_top_k_flat_breaks_ties_by_position():
    scores = torch.tensor([1.0, 3.0, 2.0, 2.0, 2.0, 0.5])
    assert top_k_flat(scores, 3).tolist() == [False, True, True, True, False, False]
    assert top_k_flat(scores, 2).tolist() == [False, True, True, False, False, False]
    assert top_k_flat(scores, 0).sum() == 0
    assert top_k_flat(scores, 6).all()


def reference_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k highest by a full stable sort (ties to the lower index): slow but obviously right."""
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    keep[torch.sort(scores, descending=True, stable=True).indices[:k]] = True
    return keep


LARGE = 300_000  # above the size where the sampled bracket is used


def seven_like(n: int, g: torch.Generator) -> torch.Tensor:
    """SEVEN's scores mid-window: 40% pruned (-1), 20% live with a zero score, the rest positive."""
    kind = torch.rand(n, generator=g)
    return torch.where(kind < 0.4, -1.0, torch.where(kind < 0.6, 0.0, torch.rand(n, generator=g)))


def large_scores(case: str, g: torch.Generator) -> torch.Tensor:
    """(LARGE,) scores of one kind: continuous, heavy-tailed or full of ties."""
    return {
        "uniform": lambda: torch.rand(LARGE, generator=g),
        "heavy_tail": lambda: torch.randn(LARGE, generator=g).exp() ** 4,
        "half_zeros": lambda: torch.rand(LARGE, generator=g) * (torch.rand(LARGE, generator=g) < 0.5),  # ties at 0
        "few_values": lambda: torch.randint(0, 5, (LARGE,), generator=g).float(),  # huge tie groups
        "sorted": lambda: torch.arange(LARGE, dtype=torch.float32),  # a strided sample sees a pattern
        "one_huge": lambda: torch.cat([torch.full((LARGE - 1,), 1.0), torch.tensor([1e30])]),
        "middle_ties": lambda: torch.rand(LARGE, generator=g).index_fill_(0, torch.arange(0, LARGE, 3), 0.5),
        "seven_like": lambda: seven_like(LARGE, g),
    }[case]()


CASES = ["uniform", "heavy_tail", "half_zeros", "few_values", "sorted", "one_huge", "middle_ties", "seven_like"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("fraction", [0.001, 0.3, 0.5, 0.55, 0.97])
def test_top_k_flat_on_large_inputs_matches_a_full_sort(case, fraction):
    scores = large_scores(case, torch.Generator().manual_seed(1))
    k = keep_count(LARGE, 1.0 - fraction)
    assert kth_largest(scores, k) == torch.sort(scores, descending=True).values[k - 1]
    assert torch.equal(top_k_flat(scores, k), reference_top_k(scores, k))


@pytest.mark.parametrize("case", CASES)
def test_top_k_over_rows_and_parts_matches_a_full_sort_of_each_row(case):
    # rows of different kinds and scales, each cut into parts of uneven lengths (as the global
    # allocation sees matrices): the masks are those of each whole row
    g = torch.Generator().manual_seed(2)
    rows = torch.stack([large_scores(case, g), large_scores("uniform", g) * 3.0, large_scores(case, g) - 1.0])
    k = keep_count(LARGE, 0.45)
    parts = [part.contiguous() for part in rows.split([LARGE // 7, LARGE // 2, LARGE - LARGE // 7 - LARGE // 2], 1)]
    keeps = top_k_parts(parts, k)
    whole = top_k_rows(rows, k)
    for row in range(3):
        expected = reference_top_k(rows[row], k)
        assert torch.equal(torch.cat([keep[row] for keep in keeps]), expected), row
        assert torch.equal(whole[row], expected), row


@pytest.mark.parametrize("k", [0, 1000, 150_000, LARGE])
def test_top_k_rows_writes_into_the_buffer_it_is_given(k):
    # a caller selecting every step reuses its 0/1 buffer: the same values, in that storage
    rows = torch.stack([large_scores("uniform", torch.Generator().manual_seed(3)), large_scores("middle_ties", torch.Generator().manual_seed(4))])
    buffer = torch.full(rows.shape, 7.0)
    mask = top_k_rows(rows, k, torch.float32, out=buffer)
    assert mask.data_ptr() == buffer.data_ptr()
    for row in range(2):
        assert torch.equal(mask[row].bool(), reference_top_k(rows[row], k)), row
    flat_buffer = torch.full(rows[1].shape, 7.0)  # SEVEN's global selection over one flat row
    flat = top_k_flat(rows[1], k, torch.float32, out=flat_buffer)
    assert flat.data_ptr() == flat_buffer.data_ptr() and torch.equal(flat.bool(), reference_top_k(rows[1], k))


@pytest.mark.parametrize("case", CASES)
def test_compiled_count_equals_numpy_count(case):
    # the counting pass of callers that select every step, against the plain one: rows left out
    # count 0, ties at the threshold are not above it
    g = torch.Generator().manual_seed(6)
    rows = torch.stack([large_scores(case, g) for _ in range(3)])
    thresholds = torch.stack([rows[0].median(), rows[1, 7], torch.tensor(-math.inf)])
    for subset in ([0, 1, 2], [2, 0], []):
        assert torch.equal(kernels.count_above(rows, thresholds, subset), _count_above(rows, thresholds, subset)), subset


@pytest.mark.parametrize("case", CASES)
def test_a_search_started_from_the_last_thresholds_selects_the_same(case):
    # scores drifting step by step (and k moving, as a sparsity schedule ramps) or jumping far
    # from the last thresholds: each selection equals a fresh one
    g = torch.Generator().manual_seed(5)
    rows = torch.stack([large_scores(case, g), large_scores("uniform", g)])
    last = LastThresholds()
    for step, (drift, fraction) in enumerate([(0.0, 0.5), (1e-4, 0.49), (1e-3, 0.45), (0.5, 0.3), (0.0, 0.3), (3.0, 0.9)]):
        rows = rows + drift * torch.randn(rows.shape, generator=g) * (rows.abs() + 1e-3)
        k = keep_count(LARGE, 1.0 - fraction)
        mask = top_k_rows(rows, k, last=last)
        assert last.values is not None and last.values.shape == (2,)
        for row in range(2):
            assert torch.equal(mask[row], reference_top_k(rows[row], k)), (step, row)


def test_top_k_flat_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        top_k_flat(torch.tensor([1.0, float("nan")]), 1)
    with pytest.raises(ValueError, match="NaN"):
        top_k_flat(torch.rand(LARGE).index_fill_(0, torch.tensor([7]), float("nan")), 10)


def test_top_k_flat_accepts_infinities():
    scores = torch.tensor([1.0, float("inf"), float("-inf"), 2.0])
    assert top_k_flat(scores, 2).tolist() == [False, True, False, True]


def test_rowwise_compares_within_rows_by_hand():
    scores = {"a": torch.tensor([[1.0, 2.0, 3.0, 4.0], [40.0, 30.0, 20.0, 10.0]])}
    masks = ALLOCATIONS.get("row")(scores, 0.5)
    assert masks["a"].tolist() == [[False, False, True, True], [True, True, False, False]]
    # a global or layerwise threshold would keep the whole second row instead
    assert ALLOCATIONS.get("layerwise")(scores, 0.5)["a"].tolist() == [[False] * 4, [True] * 4]


def test_global_vs_layerwise_by_hand():
    scores = {"a": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([[10.0, 20.0], [30.0, 40.0]])}
    global_masks = ALLOCATIONS.get("global")(scores, 0.5)
    assert global_masks["a"].sum() == 0 and global_masks["b"].all()
    layer_masks = ALLOCATIONS.get("layerwise")(scores, 0.5)
    assert layer_masks["a"].tolist() == [[False, False], [True, True]]
    assert layer_masks["b"].tolist() == [[False, False], [True, True]]


@pytest.mark.parametrize("allocation", ALLOCATIONS.names())
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.37, 0.5, 0.9, 0.99])
def test_exact_k(allocation, sparsity):
    g = torch.Generator().manual_seed(1)
    scores = {f"w{i}": torch.rand(7 + i, 13, generator=g) for i in range(3)}
    masks = build_masks(scores, sparsity, allocation, Structure())
    report = sparsity_report(masks, sparsity, allocation, Structure())
    total = sum(s.numel() for s in scores.values())
    if allocation == "global":
        assert report["kept"] == keep_count(total, sparsity)
    elif allocation == "layerwise":
        for name, mask in masks.items():
            assert int(mask.sum()) == keep_count(scores[name].numel(), sparsity)
    else:
        for name, mask in masks.items():
            assert (mask.sum(dim=1) == keep_count(scores[name].shape[1], sparsity)).all()


@pytest.mark.parametrize("allocation", ALLOCATIONS.names())
def test_masks_nested_and_deterministic_with_ties(allocation):
    g = torch.Generator().manual_seed(2)
    scores = {"a": torch.randint(0, 4, (8, 16), generator=g).float(), "b": torch.randint(0, 4, (16, 8), generator=g).float()}
    previous = None
    for sparsity in [0.1, 0.3, 0.5, 0.7, 0.9]:
        masks = build_masks(scores, sparsity, allocation, Structure())
        again = build_masks({k: v.clone() for k, v in scores.items()}, sparsity, allocation, Structure())
        assert all(torch.equal(masks[k], again[k]) for k in masks)
        if previous is not None:
            assert all(bool((masks[k] <= previous[k]).all()) for k in masks), "higher sparsity must keep a subset"
        previous = masks


def test_nm_mask_by_hand():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 1.0, 1.0, 1.0, 1.0]])
    assert nm_mask(scores, 2, 4).tolist() == [[True, False, True, False, True, True, False, False]]


@pytest.mark.parametrize("text", ["1:4", "2:4", "3:4", "4:8"])
def test_nm_every_group_keeps_exactly_n(text):
    structure = Structure.parse(text)
    scores = {"w": torch.rand(6, 16, generator=torch.Generator().manual_seed(3))}
    masks = build_masks(scores, structure.sparsity, "global", structure)
    groups = masks["w"].reshape(6, 16 // structure.m, structure.m)
    assert (groups.sum(-1) == structure.n).all()
    report = sparsity_report(masks, structure.sparsity, "global", structure)
    assert report["achieved_sparsity"] == pytest.approx(structure.sparsity)


def test_nm_nested():
    scores = torch.rand(4, 8, generator=torch.Generator().manual_seed(4))
    assert (nm_mask(scores, 1, 4) <= nm_mask(scores, 2, 4)).all()
    assert (nm_mask(scores, 2, 4) <= nm_mask(scores, 3, 4)).all()


def test_nm_needs_m_to_divide_inputs():
    with pytest.raises(ValueError, match="m=4 to divide the input dimension 6"):
        nm_mask(torch.rand(2, 6), 2, 4, "w")


def test_nm_sparsity_must_match():
    with pytest.raises(ValueError, match="fixes sparsity 0.5"):
        build_masks({"w": torch.rand(2, 4)}, 0.3, "global", Structure.parse("2:4"))


@pytest.mark.parametrize("text", ["4:4", "5:4", "0:4", "2-4", "dense"])
def test_bad_structures(text):
    with pytest.raises(ValueError, match=r"\(allowed: .*1 <= N < M"):
        Structure.parse(text)


def test_structure_slug_and_text():
    assert Structure.parse("2:4").slug == "2of4" and str(Structure.parse("2:4")) == "2:4"
    assert Structure.parse("unstructured").slug == "unstructured"


def test_prunable_set_of_bert(tiny_bert, bert_prunable):
    chosen = select_prunable(tiny_bert, bert_prunable["include"], bert_prunable["exclude"])
    assert len(chosen) == 6 * 2  # six Linear weights per layer, two layers
    assert not any("pooler" in n or "classifier" in n or "embeddings" in n for n in chosen)
    assert sum(p.numel() for p in chosen.values()) == 2 * (4 * 32 * 32 + 2 * 32 * 64)


def test_prunable_exclude_and_no_match(tiny_bert, bert_prunable):
    chosen = select_prunable(tiny_bert, bert_prunable["include"], [r"intermediate"])
    assert len(chosen) == 10
    with pytest.raises(PrunableSetError, match="matches no 2-D weight"):
        select_prunable(tiny_bert, [r"^nothing$"], [])


@pytest.mark.parametrize("case", CASES)
def test_row_thresholds_with_the_ties_dropped_select_the_top_k(case):
    g = torch.Generator().manual_seed(8)
    rows = torch.stack([large_scores(case, g) for _ in range(2)])
    k = keep_count(LARGE, 0.6)
    threshold, kept = row_thresholds([rows], k)
    keep = rows >= threshold[:, None]
    assert kept is None or kept == keep.sum(1).tolist()
    drop_extra_ties([rows], [keep], threshold, k)
    for row in range(2):
        assert torch.equal(keep[row], reference_top_k(rows[row], k)), row


def test_drop_extra_ties_by_hand():
    scores = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0], [3.0, 2.0, 1.0, 0.0, 0.0]])
    threshold = torch.tensor([2.0, 2.0])
    keep = scores >= threshold[:, None]  # row 0 keeps 3 for k = 2: its last tied entry loses
    assert drop_extra_ties([scores], [keep], threshold, 2) == [0]
    assert keep.tolist() == [[False, True, True, False, False], [True, True, False, False, False]]


def window_pass(window: SelectionWindow, scores: torch.Tensor) -> None:
    """What the scores kernel does with an aimed window: count above low and high, copy the
    entries in between (in order, as many as fit)."""
    low, high = window.low[:, None], window.high[:, None]
    window.counts[:, 0], window.counts[:, 1] = (scores > high).sum(1), (scores > low).sum(1)
    window.counts[:, 2] = scores.isnan().sum(1)
    for row in range(scores.shape[0]):
        inside = scores[row][(scores[row] > low[row]) & (scores[row] <= high[row])][: window.values.shape[1]]
        window.values[row, : inside.numel()] = inside


def test_selection_window_by_hand():
    # scores 0, 1, ..., 99 in each row: the 30th largest is 70
    scores = torch.arange(100.0).repeat(2, 1)
    window = SelectionWindow(2, capacity=32)
    assert not window.aim(30)  # nothing recorded yet: no guess
    window.record(torch.tensor([70.0, 70.0]), 30, counted=False)
    assert window.aim(30)  # no density known: a bracket of 2^-12 of the threshold either side
    torch.testing.assert_close(window.high - window.low, torch.full((2,), 140.0 * 2**-12))
    window_pass(window, scores)
    threshold, missed = window.resolve(30)
    assert missed == [] and threshold.tolist() == [70.0, 70.0]  # 70 itself is inside
    window.record(threshold, 30, counted=True)  # one entry inside: too few to tell the density
    assert window.aim(30)
    torch.testing.assert_close(window.high - window.low, torch.full((2,), 140.0 * 2**-12))
    window.low.fill_(60.0)  # (60, 80]: 20 entries, so one per unit of score
    window.high.fill_(80.0)
    window_pass(window, scores)
    threshold, missed = window.resolve(30)
    assert missed == [] and threshold.tolist() == [70.0, 70.0]
    window.record(threshold, 30, counted=True)
    # keeping 10 fewer moves the centre up by 10; the threshold landed on the centre, so the
    # bracket is the floor: 8 entries either side
    assert window.aim(20)
    torch.testing.assert_close((window.low + window.high) / 2, torch.full((2,), 80.0))
    torch.testing.assert_close(window.high - window.low, torch.full((2,), 16.0))
    window_pass(window, scores)
    threshold, missed = window.resolve(20)
    assert missed == [] and threshold.tolist() == [80.0, 80.0]
    window.record(torch.tensor([83.0, 80.0]), 20, counted=True)  # say row 0 landed 3 from its centre
    assert window.aim(20)
    torch.testing.assert_close(window.high - window.low, torch.tensor([24.0, 16.0]))  # 4 x 3 either side


def test_selection_window_finds_the_answer_among_unordered_and_tied_entries():
    # row 0: 1 entry above the window, 5 inside in no order; keep 4 is the 3rd largest inside, 2.0
    # (tied); row 1: 2 above, 3 equal inside: the answer is that value
    window = SelectionWindow(2, capacity=8)
    window.values[0, :5] = torch.tensor([3.0, 1.0, 2.0, 2.0, 5.0])
    window.values[1, :3] = torch.tensor([4.0, 4.0, 4.0])
    window.counts.copy_(torch.tensor([[1, 6, 0], [2, 5, 0]]))
    threshold, missed = window.resolve(4)
    assert missed == [] and threshold.tolist() == [2.0, 4.0]
    threshold, missed = window.resolve(6)  # row 0: the smallest inside; row 1: below its window
    assert missed == [1] and threshold[0] == 1.0 and threshold[1].isnan()


def test_selection_window_reports_misses_and_overflows():
    scores = torch.arange(100.0).repeat(3, 1)
    window = SelectionWindow(3, capacity=4)
    window.record(torch.tensor([70.0, 70.0, 70.0]), 30, counted=False)
    window.aim(30)
    window.low.copy_(torch.tensor([69.5, 80.0, 60.0]))  # row 1: the answer is below; row 2: 40 inside
    window.high.copy_(torch.tensor([71.0, 90.0, 99.0]))
    window_pass(window, scores)
    threshold, missed = window.resolve(30)
    assert missed == [1, 2] and threshold[0] == 70.0 and threshold[1:].isnan().all()
    scores[0, 3] = math.nan
    window_pass(window, scores)
    with pytest.raises(ValueError, match="NaN"):
        window.resolve(30)
