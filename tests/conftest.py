"""Shared fixtures: tiny random BERT models built from a config (no hub, no download)."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

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
