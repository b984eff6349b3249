"""Shared fixtures: tiny random BERT models built from a config (no hub, no download)."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

from sparselab.batches import CalibrationData

BERT_PRUNABLE = {
    "include": [
        r"encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
        r"|intermediate\.dense|output\.dense)\.weight$"
    ],
    "exclude": [],
}


def tiny_bert_config(num_labels: int = 2) -> BertConfig:
    return BertConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
    )


@pytest.fixture
def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config()).eval()


@pytest.fixture
def bert_prunable() -> dict:
    return {"include": list(BERT_PRUNABLE["include"]), "exclude": []}


WORDS = ["good", "bad", "movie", "plot", "great", "awful", "the", "a", "was", "very", "not", "fun"]
SMALL = {  # hyper-parameters of data-driven scorers for tiny runs: 2 batches of 4 rows, <= 16 tokens
    "taylor": {"num_batches": 2, "batch_size": 4, "max_length": 16},
    "seven_pre": {"window": 2, "batch_size": 4, "max_length": 16},
    "wanda": {"num_batches": 2, "batch_size": 4, "max_length": 16},
}


@pytest.fixture
def calibration(tmp_path) -> CalibrationData:
    """Two dozen synthetic labelled sentences of varied length (so batches pad), seed 0."""
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(24):
        length = int(torch.randint(2, 12, (1,), generator=g))
        words = [WORDS[j] for j in torch.randint(0, len(WORDS), (length,), generator=g).tolist()]
        rows.append({"sentence": " ".join(words), "label": i % 2})
    return CalibrationData(rows, BertTokenizer(str(vocab)), ["sentence"], regression=False, seed=0)
