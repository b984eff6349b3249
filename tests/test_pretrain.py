"""Masked-LM pre-training: token blocks, BERT's 80/10/10 masking, learning, gmp's exact masks, checkpoints."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from transformers import BertTokenizer

from sparselab.io import check_tensors_file, load_tensors
from sparselab.pretrain import (
    PretrainConfig,
    build_model,
    data_fraction,
    evaluate,
    make_blocks,
    Vocabulary,
    mask_tokens,
    pretrain,
)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4
WORDS = [f"w{i}" for i in range(200)]  # w<i> has id 5 + i
CLS, SEP, MASK, V = 2, 3, 4, 205
# 12 prunable matrices per 2 layers: query, key, value, attention output, intermediate, output
MATRICES = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
            "intermediate.dense", "output.dense")
TINY = dict(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_length=16, batch_size=8,
            warmup_steps=2)


@pytest.fixture
def tokenizer(tmp_path) -> BertTokenizer:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + WORDS) + "\n")
    return BertTokenizer(str(vocab))


def corpus(n: int, offset: int = 0) -> list[str]:
    """Repetitive sentences: w0..w7 shifted by i mod 5, so every next word is predictable."""
    return [" ".join(WORDS[j] for j in range((i + offset) % 5, (i + offset) % 5 + 8)) for i in range(n)]


def test_blocks_by_hand(tokenizer):
    texts = ["w0 w1 w2", "", "w3", "w4 w5 w6 w7"]
    # stream: 5 6 7 SEP 8 SEP 9 10 11 12 SEP; 3 tokens after [CLS] per block; the tail (12 SEP) is dropped
    assert make_blocks(texts, tokenizer, 4).tolist() == [[CLS, 5, 6, 7], [CLS, SEP, 8, SEP], [CLS, 9, 10, 11]]
    with pytest.raises(ValueError, match="fewer than one block"):
        make_blocks(["w0"], tokenizer, 4)


def test_data_fraction_takes_nested_prefixes():
    texts = [str(i) for i in range(10)]
    assert data_fraction(texts, 1.0) == texts
    assert data_fraction(texts, 0.8) == texts[:8]
    assert data_fraction(texts, 0.6) == texts[:6]
    with pytest.raises(ValueError, match="fraction"):
        data_fraction(texts, 0.0)


def full_vocabulary(tokenizer) -> Vocabulary:
    return Vocabulary.from_corpus(tokenizer, torch.zeros(1, dtype=torch.long), None)


def test_a_compact_vocabulary_keeps_the_specials_and_the_most_frequent_pieces(tokenizer):
    special = sorted(set(tokenizer.all_special_ids))
    blocks = torch.tensor([[CLS, 10, 10, 10, 11, 11, 12, SEP], [CLS, 13, 10, 11, 14, 14, 14, SEP]])
    vocab = Vocabulary.from_corpus(tokenizer, blocks, len(special) + 3)  # room for 10, 11 and 14 (3 each)
    assert vocab.size == len(special) + 3 and vocab.special_ids == list(range(len(special)))
    encoded = vocab.encode(blocks)
    unk = special.index(tokenizer.unk_token_id)
    assert encoded[0, 0] == special.index(CLS) and encoded[0, -1] == special.index(SEP)
    assert encoded[0, 6] == unk and encoded[1, 1] == unk  # 12 and 13 occur once: rare, so [UNK]
    assert sorted(set(encoded[encoded >= len(special)].tolist())) == [len(special), len(special) + 1, len(special) + 2]
    assert vocab.mask_id == special.index(MASK)
    assert Vocabulary.from_corpus(tokenizer, blocks, None).encode(blocks) is blocks  # the tokenizer's own
    with pytest.raises(ValueError, match="vocab_size=3 leaves no room beside the"):
        Vocabulary.from_corpus(tokenizer, blocks, 3)


def test_masking_rate_and_80_10_10_split(tokenizer):
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(5, V, (400, 256), generator=g)
    blocks[:, 0], blocks[:, 9::10] = CLS, SEP  # specials at known places
    special = (blocks == CLS) | (blocks == SEP)
    inputs, labels = mask_tokens(blocks, full_vocabulary(tokenizer), 0.15, torch.Generator().manual_seed(1))
    chosen = labels != -100
    assert torch.equal(labels[chosen], blocks[chosen])
    assert not chosen[special].any() and torch.equal(inputs[special], blocks[special])
    assert torch.equal(inputs[~chosen], blocks[~chosen])
    assert int(chosen.sum()) / int((~special).sum()) == pytest.approx(0.15, abs=0.006)  # ~15k of 92k; 5 s.e.
    n = int(chosen.sum())
    masked = int((inputs[chosen] == MASK).sum()) / n
    unchanged = int((inputs[chosen] == blocks[chosen]).sum()) / n
    # a random replacement is [MASK] or the token itself with probability 1/V each
    assert masked == pytest.approx(0.8 + 0.1 / V, abs=0.015)
    assert unchanged == pytest.approx(0.1 + 0.1 / V, abs=0.012)
    assert 1 - masked - unchanged == pytest.approx(0.1 - 0.2 / V, abs=0.012)
    # every non-special token is chosen at probability 1
    assert torch.equal(mask_tokens(blocks, full_vocabulary(tokenizer), 1.0, g)[1] != -100, ~special)


def test_masking_is_deterministic_under_a_seed(tokenizer):
    blocks = make_blocks(corpus(40), tokenizer, 16)
    first = mask_tokens(blocks, full_vocabulary(tokenizer), 0.15, torch.Generator().manual_seed(7))
    again = mask_tokens(blocks, full_vocabulary(tokenizer), 0.15, torch.Generator().manual_seed(7))
    other = mask_tokens(blocks, full_vocabulary(tokenizer), 0.15, torch.Generator().manual_seed(8))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[1], other[1])


def non_embedding_by_hand(h: int, layers: int, inter: int) -> int:
    per_layer = 4 * (h * h + h) + 2 * h + (inter * h + inter) + (h * inter + h) + 2 * h
    return 2 * h + layers * per_layer + (h * h + h) + 2 * h  # embeddings' LayerNorm, layers, head transform


def test_dense_run_learns_and_counts(tokenizer):
    config = PretrainConfig(**{**TINY, "hidden_size": 32, "intermediate_size": 64}, steps=60, learning_rate=5e-3)
    initial = evaluate(build_model(config, V), make_blocks(corpus(40, 1), tokenizer, 16), full_vocabulary(tokenizer), config)
    assert initial == pytest.approx(math.log(V), abs=0.1)  # near-uniform predictions at init
    rng, threads = torch.random.get_rng_state(), torch.get_num_threads()
    result = pretrain(corpus(200), corpus(40, 1), tokenizer, config, threads=1)
    assert torch.equal(torch.random.get_rng_state(), rng) and torch.get_num_threads() == threads
    assert result.eval_loss < initial - 1.5
    # the eval masks do not depend on the run's seed: the same tokens are scored in every run
    eval_blocks = make_blocks(corpus(40, 1), tokenizer, 16)
    assert evaluate(result.model, eval_blocks, full_vocabulary(tokenizer), replace(config, seed=5)) == result.eval_loss
    assert (result.steps, result.sequences_seen, result.tokens_seen) == (60, 60 * 8, 60 * 8 * 16)
    assert [entry.step for entry in result.log] == list(range(1, 61))
    assert [entry.lr for entry in result.log[:3]] == pytest.approx([2.5e-3, 5e-3, 5e-3])
    assert result.log[-1].lr == pytest.approx(5e-3 / 58)
    assert result.train_loss == pytest.approx(sum(entry.loss for entry in result.log[-6:]) / 6)
    assert result.non_embedding_params == non_embedding_by_hand(32, 2, 64)
    assert result.nonzero_non_embedding_params == result.non_embedding_params
    assert result.sparsity == 0 and result.masks is None and result.checkpoints == []


def test_sparse_run_keeps_exactly_its_share(tokenizer):
    config = PretrainConfig(**TINY, steps=40, learning_rate=5e-3, sparsity=0.75, gmp_frequency=5)
    result = pretrain(corpus(100), corpus(20, 1), tokenizer, config, threads=1)
    weights = dict(result.model.named_parameters())
    assert len(result.masks) == 12
    for name, mask in result.masks.items():
        assert int(mask.sum()) == round(0.25 * mask.numel())  # 64 of 256, 128 of 512
        assert (weights[name].detach()[~mask].view(torch.int32) == 0).all()  # +0.0 exactly
        assert weights[name].detach()[mask].count_nonzero() == mask.sum()
    pruned = 2 * (4 * (16 * 16 - 64) + 2 * (16 * 32 - 128))
    assert result.nonzero_non_embedding_params == non_embedding_by_hand(16, 2, 32) - pruned
    assert result.sparsity == 0.75
    # cubic ramp from step 10 to step 30 of 40, updated every 5 steps: dense before, 0.75 after
    sparsity = [entry.sparsity for entry in result.log]
    assert sparsity[:14] == [0.0] * 14 and sparsity[29:] == [0.75] * 11
    assert sparsity == sorted(sparsity) and len(set(sparsity)) == 5  # updates at steps 15, 20, 25, 30


def test_checkpoints_at_the_right_steps_hold_only_prunable_weights(tokenizer, tmp_path):
    config = PretrainConfig(**TINY, steps=12, checkpoint_every=4)
    result = pretrain(corpus(60), corpus(20, 1), tokenizer, config, tmp_path / "run", threads=1)
    names = [f"step{n:06d}.safetensors" for n in (0, 4, 8, 12)]
    assert [path.name for path in result.checkpoints] == names
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == names
    expected = {f"bert.encoder.layer.{i}.{m}.weight" for i in range(2) for m in MATRICES}
    initial = dict(build_model(config, V).named_parameters())
    final = dict(result.model.named_parameters())
    for path, step in zip(result.checkpoints, (0, 4, 8, 12)):
        assert check_tensors_file(path)["step"] == str(step)
        tensors = load_tensors(path)
        assert set(tensors) == expected
        reference = {0: initial, 12: final}.get(step)
        for name, tensor in tensors.items():
            if reference is not None:
                assert torch.equal(tensor, reference[name].detach())
    # the same run with checkpoints every 5 steps: the same losses, and a last one off the grid
    again = pretrain(corpus(60), corpus(20, 1), tokenizer, PretrainConfig(**TINY, steps=12, checkpoint_every=5),
                     tmp_path / "again", threads=1)
    assert [path.name for path in again.checkpoints] == [f"step{n:06d}.safetensors" for n in (0, 5, 10, 12)]
    assert [entry.loss for entry in again.log] == [entry.loss for entry in result.log]
    with pytest.raises(ValueError, match="checkpoint_dir"):
        pretrain(corpus(60), corpus(20, 1), tokenizer, config, threads=1)


@pytest.mark.parametrize(("field", "value"), [
    ("hidden_size", 0), ("num_heads", 3), ("max_length", 1), ("batch_size", 2.5), ("steps", True),
    ("learning_rate", 0.0), ("warmup_steps", 200), ("weight_decay", -0.1), ("mlm_probability", 0.0),
    ("dropout", 1.0), ("sparsity", 1.0), ("gmp_start", -0.1), ("gmp_end", 0.2), ("gmp_frequency", 0),
    ("checkpoint_every", 0), ("seed", -1), ("precision", "fp16"),
])
def test_bad_config_names_the_field(field, value):
    named = "hidden_size" if field == "num_heads" else field  # 64 is not a multiple of 3 heads
    with pytest.raises(ValueError, match=rf"^PretrainConfig\.{named}=.*\(allowed: "):
        PretrainConfig(**{field: value})
