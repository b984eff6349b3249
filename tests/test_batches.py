"""Tokenized batches: padding, token_type_ids, length grouping, determinism."""

from __future__ import annotations

import torch

from sparselab.batches import Encoded, iterate_batches


def ragged(n=200, seed=0) -> Encoded:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 60, (n,), generator=g).tolist()
    ids = [[7] * length for length in lengths]
    return Encoded(ids, [[0] * (length // 2) + [1] * (length - length // 2) for length in lengths],
                   list(range(n)), pad_token_id=0, regression=False)


def test_collate_pads_to_longest_and_keeps_segments():
    data = Encoded([[5, 6, 7], [5]], [[0, 1, 1], [0]], [1, 0], pad_token_id=0, regression=False)
    batch = data.collate([0, 1])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 1, 1], [0, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]


def test_grouped_batches_cover_every_example_once_and_pad_less():
    data = ragged()
    plain = list(iterate_batches(data, 16, torch.Generator().manual_seed(0)))
    grouped = list(iterate_batches(data, 16, torch.Generator().manual_seed(0), group_by_length=True))
    for batches in (plain, grouped):
        labels = sorted(int(x) for b in batches for x in b["labels"])
        assert labels == list(range(len(data)))
    padded = lambda batches: sum(b["input_ids"].numel() for b in batches)  # noqa: E731
    assert padded(grouped) < 0.75 * padded(plain)


def test_batches_are_deterministic_per_seed():
    data = ragged()
    first = [b["labels"].tolist() for b in iterate_batches(data, 16, torch.Generator().manual_seed(3), True)]
    again = [b["labels"].tolist() for b in iterate_batches(data, 16, torch.Generator().manual_seed(3), True)]
    other = [b["labels"].tolist() for b in iterate_batches(data, 16, torch.Generator().manual_seed(4), True)]
    assert first == again and first != other
