"""Encoded examples and their batches for training, evaluation and calibration.

A split is encoded once per job into an `Encoded` (token ids, padded per batch) or an
`ImageEncoded` (pixel tensors, stacked); both give `len`, `labels`, `regression`, optional
`teacher_logits`, `lengths()` (what batching and evaluation order by) and `collate(indices)`, so
training, evaluation, distillation and calibration never ask which modality they hold. The input
pipelines of sparselab.inputs make them from a task's rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass
class Encoded:
    """A tokenized split: one list of token ids per example, plus labels (int or float), and for a
    distilled run the teacher's logits of every example, (examples, classes)."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: list[float]
    pad_token_id: int
    regression: bool
    teacher_logits: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def lengths(self) -> list[int]:
        """Tokens of every example."""
        return [len(ids) for ids in self.input_ids]

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """Pad the chosen examples to the longest among them. Returns (batch, length) tensors + labels
        (+ the examples' teacher logits, (batch, classes), when the split has them)."""
        length = max(len(self.input_ids[i]) for i in indices)
        input_ids = torch.full((len(indices), length), self.pad_token_id, dtype=torch.long)
        token_type_ids = torch.zeros((len(indices), length), dtype=torch.long)
        attention_mask = torch.zeros((len(indices), length), dtype=torch.long)
        for row, i in enumerate(indices):
            ids = self.input_ids[i]
            input_ids[row, : len(ids)] = torch.tensor(ids)
            token_type_ids[row, : len(ids)] = torch.tensor(self.token_type_ids[i])
            attention_mask[row, : len(ids)] = 1
        label_dtype = torch.float32 if self.regression else torch.long
        labels = torch.tensor([self.labels[i] for i in indices], dtype=label_dtype)
        batch = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask, "labels": labels}
        if self.teacher_logits is not None:
            batch["teacher_logits"] = self.teacher_logits[indices]
        return batch


@dataclass
class ImageEncoded:
    """A preprocessed image split: (examples, channels, height, width) float32 pixels, labels,
    and for a distilled run the teacher's logits of every example, (examples, classes)."""

    pixel_values: torch.Tensor
    labels: list[float]
    regression: bool
    teacher_logits: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def lengths(self) -> list[int]:
        """Every image has the same size: one 'length' for all, so orders keep file order."""
        return [1] * len(self.labels)

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """pixel_values (batch, channels, height, width) and labels (+ teacher logits)."""
        label_dtype = torch.float32 if self.regression else torch.long
        batch = {
            "pixel_values": self.pixel_values[indices],
            "labels": torch.tensor([self.labels[i] for i in indices], dtype=label_dtype),
        }
        if self.teacher_logits is not None:
            batch["teacher_logits"] = self.teacher_logits[indices]
        return batch


def encode(rows: list[dict], tokenizer, text_fields: list[str], max_length: int, regression: bool) -> Encoded:
    """Tokenize rows (text, optional text_pair) without padding; batches are padded on the fly.

    token_type_ids are kept: the essential-sparsity code never passed them, which hurts
    sentence-pair tasks (methods.md, section 1).
    """
    texts = [row[text_fields[0]] for row in rows]
    pairs = [row[text_fields[1]] for row in rows] if len(text_fields) > 1 else None
    tokens = tokenizer(texts, pairs, truncation=True, max_length=max_length, return_token_type_ids=True)
    return Encoded(
        input_ids=tokens["input_ids"],
        token_type_ids=tokens["token_type_ids"],
        labels=[row["label"] for row in rows],
        pad_token_id=tokenizer.pad_token_id,
        regression=regression,
    )


def iterate_batches(
    data: Encoded | ImageEncoded, batch_size: int, generator: torch.Generator | None = None, group_by_length: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches in a shuffled order drawn from `generator`, or in file order when it is None.

    group_by_length: shuffle, sort each window of 50 batches by length and shuffle the batches,
    so that a batch holds examples of similar length and pads little (random batches of short
    reviews pad to about twice their mean length, which doubles the cost of every step).
    """
    if generator is None:
        order = list(range(len(data)))
    else:
        order = torch.randperm(len(data), generator=generator).tolist()
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    if group_by_length and generator is not None:
        window = 50 * batch_size
        by_length = []
        lengths = data.lengths()
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
            by_length += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        batches = [by_length[i] for i in torch.randperm(len(by_length), generator=generator).tolist()]
    for indices in batches:
        yield data.collate(indices)


@dataclass
class CalibrationData:
    """Labelled training rows that data-driven scorers draw calibration batches from."""

    rows: list[dict]
    tokenizer: object
    text_fields: list[str]
    regression: bool
    seed: int

    def batches(self, num_batches: int, batch_size: int, max_length: int) -> Iterator[dict[str, torch.Tensor]]:
        """`num_batches` shuffled batches (fewer if the rows run out), the same for the same seed."""
        data = encode(self.rows, self.tokenizer, self.text_fields, max_length, self.regression)
        generator = torch.Generator().manual_seed(self.seed)
        for index, batch in enumerate(iterate_batches(data, batch_size, generator)):
            if index == num_batches:
                return
            yield batch
