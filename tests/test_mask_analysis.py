"""Mask overlap, module types, pruned shares and small-weight shares on hand-checkable cases."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from sparselab.io import save_compact
from sparselab.mask_analysis import (MODULE_TYPES, OVERLAP_METRICS, mask_analysis_stage, mask_overlap, module_type,
                                     overlap_matrix, overlap_table, pruned_share_by_module, small_weight_share)
from sparselab.masks import allocate_global
from sparselab.prunable import select_prunable


def bools(*rows: str) -> torch.Tensor:
    """A bool tensor from strings of 0/1, one per row: bools("10", "01")."""
    return torch.tensor([[c == "1" for c in row] for row in rows])


def test_identical_masks_agree_fully():
    masks = {"w": bools("1010", "0111"), "v": bools("001")}
    result = mask_overlap(masks, {name: m.clone() for name, m in masks.items()})
    for metric in ["kept_iou", "kept_cosine", "pruned_iou", "pruned_cosine"]:
        assert result[metric] == 1.0


def test_disjoint_kept_sets_have_zero_kept_overlap():
    a, b = {"w": bools("1100", "0000")}, {"w": bools("0011", "0000")}
    result = mask_overlap(a, b)
    assert result["kept_iou"] == result["kept_cosine"] == 0.0
    # pruned sets: 6 each, 4 in common (the second row), union 8
    assert result["pruned_iou"] == pytest.approx(4 / 8)
    assert result["pruned_cosine"] == pytest.approx(4 / 6)


def test_hand_made_pair():
    # n = 10 over two matrices; |A| = 4, |B| = 5, |A∩B| = 3; pruned: 6, 5, both pruned 10 - 6 = 4
    a = {"w": bools("11100"), "v": bools("10000")}
    b = {"w": bools("11010"), "v": bools("10010")}
    result = mask_overlap(a, b)
    assert (result["weights"], result["kept_a"], result["kept_b"], result["kept_both"]) == (10, 4, 5, 3)
    assert result["kept_iou"] == pytest.approx(3 / 6)
    assert result["kept_cosine"] == pytest.approx(3 / math.sqrt(20))
    assert result["pruned_iou"] == pytest.approx(4 / 7)
    assert result["pruned_cosine"] == pytest.approx(4 / math.sqrt(30))
    # chance: expected intersection 4 * 5 / 10 = 2 kept, 6 * 5 / 10 = 3 pruned
    assert result["chance_kept_iou"] == pytest.approx(2 / 7)
    assert result["chance_kept_cosine"] == pytest.approx(math.sqrt(0.4 * 0.5))
    assert result["chance_pruned_iou"] == pytest.approx(3 / 8)


def test_empty_sets():
    nothing, everything = {"w": torch.zeros(2, 3, dtype=torch.bool)}, {"w": torch.ones(2, 3, dtype=torch.bool)}
    both_empty = mask_overlap(nothing, nothing)  # nothing kept by either: the kept sets agree
    assert both_empty["kept_iou"] == both_empty["kept_cosine"] == both_empty["chance_kept_cosine"] == 1.0
    one_empty = mask_overlap(nothing, everything)
    assert one_empty["kept_iou"] == one_empty["kept_cosine"] == one_empty["pruned_cosine"] == 0.0


def test_nested_masks_cosine_is_sqrt_of_size_ratio():
    torch.manual_seed(0)
    scores = {"w": torch.randn(40, 50), "v": torch.randn(30, 20)}  # n = 2600
    low, high = allocate_global(scores, 0.3), allocate_global(scores, 0.7)  # kept 1820 and 780
    assert all(bool((high[n] <= low[n]).all()) for n in scores)  # nested
    result = mask_overlap(low, high)
    assert result["kept_cosine"] == pytest.approx(math.sqrt(780 / 1820))
    assert result["kept_iou"] == pytest.approx(780 / 1820)
    assert result["pruned_iou"] == pytest.approx(780 / 1820)  # pruned sets nested the other way: 780 of 1820


def test_mismatched_masks_raise_one_line_errors():
    a = {"w": bools("10"), "v": bools("1")}
    only_v = r"different matrices: 1 only in the first \['v'\], 0 only in the second"
    with pytest.raises(ValueError, match=only_v) as error:
        mask_overlap(a, {"w": bools("10")})
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=r"mask 'w' is \(1, 2\) in the first masks, \(2, 1\) in the second") as error:
        mask_overlap(a, {"w": bools("1", "0"), "v": bools("1")})
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=r"mask 'w' has dtype torch.float32, not bool"):  # weights, not a mask
        mask_overlap({"w": torch.tensor([[0.0, 1.5]])}, {"w": bools("10")})


def test_random_masks_match_the_chance_baseline():
    g = torch.Generator().manual_seed(0)
    n, p, q = 200_000, 0.3, 0.6
    a = {"w": torch.randperm(n, generator=g) < p * n}  # exactly p n kept, at random places
    b = {"w": torch.randperm(n, generator=g) < q * n}
    result = mask_overlap(a, b)
    assert result["chance_kept_iou"] == pytest.approx(0.18 / 0.72)  # pq / (p + q - pq)
    assert result["chance_kept_cosine"] == pytest.approx(math.sqrt(0.18))
    assert result["chance_pruned_iou"] == pytest.approx(0.28 / 0.82)  # (1-p)(1-q) / (1 - pq)
    for metric in ["kept_iou", "kept_cosine", "pruned_iou", "pruned_cosine"]:
        assert result[metric] == pytest.approx(result[f"chance_{metric}"], abs=0.005)  # ~0.001 std


def test_overlap_matrix_is_symmetric_with_ones_on_the_diagonal():
    torch.manual_seed(0)
    scores = {"w": torch.randn(20, 30), "v": torch.randn(10, 10)}
    masks = {f"s={s}": allocate_global(scores, s) for s in [0.2, 0.5, 0.8]}
    table = overlap_matrix(masks, "kept_cosine")
    assert list(table.index) == list(table.columns) == ["s=0.2", "s=0.5", "s=0.8"]
    assert (table.values == table.values.T).all()
    assert (table.values.diagonal() == 1.0).all()
    assert table.loc["s=0.8", "s=0.2"] == pytest.approx(mask_overlap(masks["s=0.2"], masks["s=0.8"])["kept_cosine"])
    assert table.loc["s=0.8", "s=0.2"] < table.loc["s=0.5", "s=0.2"] < 1.0
    with pytest.raises(ValueError, match="unknown overlap metric 'kept_a'"):
        overlap_matrix(masks, "kept_a")
    assert set(OVERLAP_METRICS) <= set(mask_overlap(masks["s=0.2"], masks["s=0.5"]))


def test_module_type_on_tiny_bert(tiny_bert, bert_prunable):
    config = tiny_bert.config
    layers, hidden, inner = config.num_hidden_layers, config.hidden_size, config.intermediate_size
    prunable = select_prunable(tiny_bert, **bert_prunable)
    counts: dict[str, int] = {}
    for name, param in prunable.items():
        counts[module_type(name)] = counts.get(module_type(name), 0) + param.numel()
    assert counts == {
        "attention.query": layers * hidden * hidden, "attention.key": layers * hidden * hidden,
        "attention.value": layers * hidden * hidden, "attention.output": layers * hidden * hidden,
        "ffn.intermediate": layers * inner * hidden, "ffn.output": layers * hidden * inner,
    }
    assert module_type("bert.encoder.layer.3.attention.output.dense.weight") == "attention.output"
    assert module_type("bert.encoder.layer.3.output.dense.weight") == "ffn.output"
    others = [name for name, _ in tiny_bert.named_parameters() if name not in prunable]
    assert "bert.pooler.dense.weight" in others and "bert.encoder.layer.0.output.dense.bias" in others
    assert {module_type(name) for name in others} == {"other"}


def test_pruned_share_when_only_ffn_is_pruned(tiny_bert, bert_prunable):
    # tiny BERT: 4 attention matrices of 32x32 and 2 FFN of 32x64 per layer, 2 layers; n = 16384
    prunable = select_prunable(tiny_bert, **bert_prunable)
    masks = {name: torch.full(p.shape, not module_type(name).startswith("ffn.")) for name, p in prunable.items()}
    table = pruned_share_by_module(masks)
    assert list(table.index) == list(MODULE_TYPES)
    assert table.loc["ffn.intermediate"].to_dict() == {
        "weights": 4096, "pruned": 4096, "sparsity": 1.0, "share_of_weights": 0.25, "share_of_pruned": 0.5,
        "over_representation": 2.0,
    }
    assert table.loc["attention.query"].to_dict() == {
        "weights": 2048, "pruned": 0, "sparsity": 0.0, "share_of_weights": 0.125, "share_of_pruned": 0.0,
        "over_representation": 0.0,
    }
    assert table["share_of_pruned"].sum() == 1.0


def test_pruned_share_hand_made():
    masks = {
        "encoder.layer.0.attention.self.query.weight": bools("10", "11"),  # 4 weights, 1 pruned
        "encoder.layer.0.intermediate.dense.weight": bools("1000", "1111"),  # 8 weights, 3 pruned
        "classifier.weight": bools("11"),  # 2 weights, none pruned
    }
    table = pruned_share_by_module(masks)
    assert list(table.index) == ["attention.query", "ffn.intermediate", "other"]
    assert table["pruned"].tolist() == [1, 3, 0]
    assert table["sparsity"].tolist() == pytest.approx([1 / 4, 3 / 8, 0.0])
    assert table["share_of_weights"].tolist() == pytest.approx([4 / 14, 8 / 14, 2 / 14])
    assert table["share_of_pruned"].tolist() == pytest.approx([1 / 4, 3 / 4, 0.0])
    assert table["over_representation"].tolist() == pytest.approx([(1 / 4) / (4 / 14), (3 / 4) / (8 / 14), 0.0])
    nothing_pruned = pruned_share_by_module({"classifier.weight": bools("11")})
    assert nothing_pruned["share_of_pruned"].isna().all()


def test_small_weight_share_is_strict_and_counts_all_tensors():
    weights = {"a": torch.tensor([-0.5, -0.1, 0.0, 0.05, 0.1, 2.0]), "b": torch.tensor([[0.01, -3.0]])}  # n = 8
    shares = small_weight_share(weights, [0.0, 0.1, 1.0, 10.0])
    assert shares == {0.0: 0.0, 0.1: 3 / 8, 1.0: 6 / 8, 10.0: 1.0}  # 0.1: 0, 0.05, 0.01 (not ±0.1)
    with pytest.raises(ValueError, match="no weights given"):
        small_weight_share({}, [0.1])


def _run(method: str, sparsity: float, allocation: str = "global", task: str = "toy") -> dict:
    return {"model": "tiny", "task": task, "method": method, "allocation": allocation, "structure": "unstructured",
            "sparsity": sparsity, "recipe": "quick", "seed": 0}


def test_overlap_table_pairs_runs_that_differ_in_one_thing_only():
    kept = torch.tensor([True, True, True, True, False, False, False, False])
    masks = [{"w": kept}, {"w": kept & torch.tensor([True, True, False, False] * 2)},
             {"w": kept.flip(0)}, {"w": kept}]
    runs = [_run("magnitude", 0.5), _run("magnitude", 0.75), _run("wanda", 0.5, "row"), _run("magnitude", 0.5, task="other")]
    table = overlap_table(runs, masks)
    # sparsity: magnitude 0.5 vs 0.75 on toy; method: magnitude vs wanda at 0.5 on toy; task: toy vs other
    assert sorted(table["comparison"]) == ["method", "sparsity", "task"]
    by = table.set_index("comparison")
    assert (by.loc["sparsity", "a"], by.loc["sparsity", "b"]) == ("s=0.5", "s=0.75")
    assert by.loc["sparsity", "kept_cosine"] == pytest.approx(2 / math.sqrt(4 * 2))  # nested: sqrt(2 / 4)
    assert (by.loc["method", "a"], by.loc["method", "b"]) == ("magnitude global unstructured", "wanda row unstructured")
    assert by.loc["method", "kept_cosine"] == 0.0 and by.loc["method", "chance_kept_cosine"] == pytest.approx(0.5)
    assert by.loc["task", "kept_cosine"] == 1.0


def test_mask_analysis_stage_reads_masks_from_checkpoints_and_writes_tables_and_figure(tiny_bert, bert_prunable, tmp_path):
    chosen = select_prunable(tiny_bert, bert_prunable["include"], bert_prunable["exclude"])
    weights = {name: w.detach() for name, w in chosen.items()}
    runs, paths = [], []
    for sparsity in (0.3, 0.6):
        masks = allocate_global({n: w.abs() for n, w in weights.items()}, sparsity)
        paths.append(tmp_path / f"s{sparsity}.safetensors")
        save_compact(paths[-1], {n: torch.where(masks[n], w, 0.0) for n, w in weights.items()}, masks)
        runs.append(_run("magnitude", sparsity))
    out = {name: tmp_path / name for name in ("overlap.csv", "modules.csv", "fig.png", "fig.pdf")}
    mask_analysis_stage(runs, paths, out["overlap.csv"], out["modules.csv"], out["fig.png"], out["fig.pdf"])
    overlap, modules = pd.read_csv(out["overlap.csv"]), pd.read_csv(out["modules.csv"])
    assert list(overlap["comparison"]) == ["sparsity"]
    assert overlap["kept_cosine"].iloc[0] == pytest.approx(math.sqrt(0.4 / 0.7), abs=1e-3)  # nested global masks
    assert set(modules["module_type"]) == {"attention.query", "attention.key", "attention.value", "attention.output",
                                           "ffn.intermediate", "ffn.output"}
    assert modules.groupby("sparsity")["share_of_pruned"].sum().tolist() == pytest.approx([1.0, 1.0])
    assert out["fig.png"].stat().st_size > 10_000 and out["fig.pdf"].exists()


def test_the_figure_is_drawn_when_there_is_nothing_to_compare(tmp_path):
    """One run per set-up and sparsity: no pairs, yet the module panel and the file are made."""
    masks = [{"bert.encoder.layer.0.intermediate.dense.weight": torch.tensor([[True, False], [False, False]])}]
    out = {name: tmp_path / name for name in ("overlap.csv", "modules.csv", "fig.png", "fig.pdf")}
    path = tmp_path / "c.safetensors"
    save_compact(path, {name: torch.zeros(2, 2) for name in masks[0]}, masks[0])
    mask_analysis_stage([_run("magnitude", 0.75)], [path], *out.values())
    assert pd.read_csv(out["overlap.csv"]).empty and out["fig.png"].stat().st_size > 1000
