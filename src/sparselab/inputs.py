"""Input pipelines: how a task's rows become model inputs, one class per modality.

A task folder's task.json says its modality (`"modality": "image"`; text when absent, as for every
task fetched before images existed). The pipeline of that modality turns rows into an encoded split
(sparselab.batches: `Encoded` for text, `ImageEncoded` for images), calibration data for the
data-driven scorers, and the batch a latency measurement runs on. Stages ask `input_pipeline` for
one and never look at the modality themselves.

- text: the model folder's tokenizer over the task's text fields, truncated to the recipe's
  max_length, padded per batch.
- image: the evaluation transform timm's data config gives for the model (the `pretrained_cfg` in
  its config.json: resolution, resize and crop, mean and std), applied once per split to the
  decoded images, grey-scale images repeated to 3 channels.
"""

from __future__ import annotations

import base64
import io
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterator

import torch

from sparselab.batches import CalibrationData, Encoded, ImageEncoded, encode, iterate_batches
from sparselab.registry import Registry

TEXT, IMAGE = "text", "image"
IMAGE_FIELD = "image"  # the row field of an image task: a base64 PNG


def task_modality(task: dict) -> str:
    """The modality of a task (its task.json): text unless it says otherwise."""
    return task.get("modality", TEXT)


class InputPipeline(ABC):
    """Rows of one task -> encoded splits and batches for one model."""

    @abstractmethod
    def encode(self, rows: list[dict], regression: bool) -> Encoded | ImageEncoded:
        """The rows as one encoded split."""

    @abstractmethod
    def calibration(self, rows: list[dict], regression: bool, seed: int):
        """Calibration data (`batches(num_batches, batch_size, max_length)`) over the rows."""

    @abstractmethod
    def latency_batch(self, model: torch.nn.Module, batch_size: int) -> dict[str, torch.Tensor]:
        """A batch of the model's input shape for timing a forward pass."""

    @abstractmethod
    def latency_shape(self, batch_size: int) -> list[int]:
        """The shape of `latency_batch` as the evaluation record states it."""


PIPELINES: Registry[type[InputPipeline]] = Registry("modality")


@PIPELINES.register(TEXT)
class TextPipeline(InputPipeline):
    """The model's tokenizer over the task's text fields, at most `max_length` tokens."""

    def __init__(self, model_dir: Path, task: dict, max_length: int, *, trust_remote_code: bool) -> None:
        from sparselab.modeling import load_tokenizer

        self.tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
        self.text_fields = task["text_fields"]
        self.max_length = max_length

    def encode(self, rows: list[dict], regression: bool) -> Encoded:
        return encode(rows, self.tokenizer, self.text_fields, self.max_length, regression)

    def calibration(self, rows: list[dict], regression: bool, seed: int) -> CalibrationData:
        return CalibrationData(rows, self.tokenizer, self.text_fields, regression, seed)

    def latency_batch(self, model: torch.nn.Module, batch_size: int) -> dict[str, torch.Tensor]:
        token = min(1000, model.config.vocab_size - 1)  # any valid token
        input_ids = torch.full((batch_size, self.max_length), token, dtype=torch.long)  # (batch, length)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}

    def latency_shape(self, batch_size: int) -> list[int]:
        return [batch_size, self.max_length]


def decode_image(text: str):
    """A row's base64 PNG as an RGB PIL image (grey-scale repeated to 3 channels)."""
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")


def image_transform(model_dir: Path):
    """The evaluation transform of timm's data config for the model in `model_dir`: its config.json's
    `pretrained_cfg` (input_size, interpolation, crop_pct, crop_mode, mean, std), and that config."""
    import timm.data

    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    data_config = timm.data.resolve_data_config(config.get("pretrained_cfg", {}), model=None, verbose=False)
    return timm.data.create_transform(**data_config, is_training=False), data_config


@PIPELINES.register(IMAGE)
class ImagePipeline(InputPipeline):
    """timm's evaluation transform of the model over the task's images (max_length is unused)."""

    def __init__(self, model_dir: Path, task: dict, max_length: int, *, trust_remote_code: bool) -> None:
        self.transform, self.data_config = image_transform(model_dir)

    def encode(self, rows: list[dict], regression: bool) -> ImageEncoded:
        pixels = [self.transform(decode_image(row[IMAGE_FIELD])) for row in rows]  # each (3, height, width)
        return ImageEncoded(torch.stack(pixels), [row["label"] for row in rows], regression)

    def calibration(self, rows: list[dict], regression: bool, seed: int) -> ImageCalibration:
        return ImageCalibration(self, rows, regression, seed)

    def latency_batch(self, model: torch.nn.Module, batch_size: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.zeros(batch_size, *self.data_config["input_size"])}

    def latency_shape(self, batch_size: int) -> list[int]:
        return [batch_size, *self.data_config["input_size"]]


class ImageCalibration:
    """Labelled training images that data-driven scorers draw calibration batches from."""

    def __init__(self, pipeline: ImagePipeline, rows: list[dict], regression: bool, seed: int) -> None:
        self.pipeline, self.rows, self.regression, self.seed = pipeline, rows, regression, seed

    def batches(self, num_batches: int, batch_size: int, max_length: int) -> Iterator[dict[str, torch.Tensor]]:
        """`num_batches` shuffled batches (fewer if the rows run out), the same for the same seed;
        only the images drawn are decoded. `max_length` is the text pipelines' and unused here."""
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(self.rows), generator=generator).tolist()[: num_batches * batch_size]
        data = self.pipeline.encode([self.rows[i] for i in order], self.regression)
        yield from iterate_batches(data, batch_size)


def input_pipeline(model_dir: Path, task: dict, max_length: int, *, trust_remote_code: bool) -> InputPipeline:
    """The input pipeline of the task's modality for the model in `model_dir`."""
    return PIPELINES.get(task_modality(task))(model_dir, task, max_length, trust_remote_code=trust_remote_code)
