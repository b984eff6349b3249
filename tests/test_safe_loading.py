"""Safe loading: pickled weights converted weights-only at fetch time, remote code only on opt-in,
fetched folders verified by every stage that reads them."""

from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import BERT_PRUNABLE, WORDS, tiny_bert_config
from safetensors.torch import load_file
from transformers import BertForMaskedLM, BertForSequenceClassification, BertTokenizer

from sparselab import modeling
from sparselab.config import ConfigError, load_config, validate_config
from sparselab.data import fetch_task, load_task
from sparselab.fetch import FetchError, fetch_model, sha256_file
from sparselab.io import save_compact
from sparselab.modeling import load_classifier
from sparselab.pipeline import evaluate_finetuned_stage, evaluate_oneshot_stage, score_stage

SRC = Path(__file__).resolve().parents[1] / "src"
TASK = {"labels": ["neg", "pos"], "num_labels": 2}
EVALUATION = {"batch_size": 32, "latency_batch_size": 4, "latency_repeats": 1, "precision": "fp32"}


class RunsAShellCommand:
    """Pickles to a call of os.system: what a malicious pytorch_model.bin holds."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def tiny_classifier() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config())


def pickled_model_folder(folder: Path, state: dict) -> Path:
    """config.json of the tiny BERT and `state` saved as pytorch_model.bin (a torch pickle)."""
    folder.mkdir(parents=True)
    tiny_bert_config().save_pretrained(folder)
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def assert_same_weights(model: torch.nn.Module, state: dict) -> None:
    loaded = model.state_dict()
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fetched tiny BERT with a tokenizer and a fetched tiny labelled data set."""
    root = tmp_path_factory.mktemp("fetched")
    source = root / "model-source"
    source.mkdir()
    vocab = source / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizer(str(vocab)).save_pretrained(source)
    tiny_classifier().save_pretrained(source)
    fetch_model(f"local:{source}", root / "models" / "tiny")
    rows = ["text,label"] + [f"{WORDS[i % len(WORDS)]} movie,{'pos' if i % 2 else 'neg'}" for i in range(40)]
    (root / "toy.csv").write_text("\n".join(rows) + "\n")
    entry = {"source": f"local:{root / 'toy.csv'}", "reader": "csv", "labels": ["neg", "pos"],
             "split": {"validation": 0.25, "test": 0.25, "seed": 0}}
    fetch_task("toy", entry, root / "data" / "toy")
    return root / "models" / "tiny", root / "data" / "toy"


def test_pickled_weights_are_converted_to_identical_safetensors(tmp_path: Path) -> None:
    state = tiny_classifier().state_dict()
    folder = pickled_model_folder(tmp_path / "source", state)
    out_dir = tmp_path / "tiny"
    record = fetch_model(f"local:{folder}", out_dir)
    assert sorted(path.name for path in out_dir.iterdir()) == ["config.json", "model.safetensors", "source.json"]
    assert record["converted"] == {"pytorch_model.bin": sha256_file(folder / "pytorch_model.bin")}
    assert record["files"]["model.safetensors"] == sha256_file(out_dir / "model.safetensors")
    assert json.loads((out_dir / "source.json").read_text()) == record
    assert_same_weights(load_classifier(out_dir, TASK, seed=0), state)


def test_sharded_pickles_become_sharded_safetensors(tmp_path: Path) -> None:
    state = tiny_classifier().state_dict()
    folder = tmp_path / "source"
    folder.mkdir()
    tiny_bert_config().save_pretrained(folder)
    names = list(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
              "pytorch_model-00002-of-00002.bin": names[len(names) // 2 :]}
    for shard, shard_names in shards.items():
        torch.save({name: state[name] for name in shard_names}, folder / shard)
    weight_map = {name: shard for shard, shard_names in shards.items() for name in shard_names}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    out_dir = tmp_path / "tiny"
    record = fetch_model(f"local:{folder}", out_dir)
    assert sorted(record["files"]) == [
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]
    assert sorted(record["converted"]) == [*shards, "pytorch_model.bin.index.json"]
    assert_same_weights(load_classifier(out_dir, TASK, seed=0), state)


def test_tied_weights_are_converted(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = BertForMaskedLM(tiny_bert_config()).state_dict()
    decoder, embeddings = "cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"
    assert state[decoder].data_ptr() == state[embeddings].data_ptr()
    state["tied.transposed"] = state[decoder].t()
    folder = pickled_model_folder(tmp_path / "source", state)
    fetch_model(f"local:{folder}", tmp_path / "tiny")
    saved = load_file(tmp_path / "tiny" / "model.safetensors")
    assert saved.keys() == state.keys()
    assert all(torch.equal(saved[name], tensor) for name, tensor in state.items())


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    folder = pickled_model_folder(tmp_path / "source", {"weight": RunsAShellCommand(f"touch {marker}")})
    out_dir = tmp_path / "out" / "evil"
    with pytest.raises(FetchError) as caught:
        fetch_model(f"local:{folder}", out_dir, key="models.evil")
    assert str(caught.value) == (
        f"models.evil: refused pytorch_model.bin of 'local:{folder}': it is not a plain weights file "
        f"(it asks for {os.system.__module__}.system); only safetensors or weights-only pickles load"
    )
    assert not marker.exists()
    assert not out_dir.exists() and list(out_dir.parent.iterdir()) == []


def test_a_pickle_that_is_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    folder = pickled_model_folder(tmp_path / "source", [torch.zeros(2)])
    with pytest.raises(FetchError, match=r"pytorch_model.bin of .* is not a state dict"):
        fetch_model(f"local:{folder}", tmp_path / "tiny")


def test_pickles_next_to_safetensors_are_dropped_unread(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    folder = tmp_path / "source"
    tiny_classifier().save_pretrained(folder)
    torch.save({"weight": RunsAShellCommand(f"touch {marker}")}, folder / "pytorch_model.bin")
    record = fetch_model(f"local:{folder}", tmp_path / "tiny")
    assert sorted(record["files"]) == ["config.json", "model.safetensors"] and "converted" not in record
    assert not marker.exists()


def test_torch_load_in_src_is_always_weights_only() -> None:
    calls = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("torch.load", "torch.serialization.load"):
                weights_only = [ast.unparse(kw.value) for kw in node.keywords if kw.arg == "weights_only"]
                calls.append((f"{path.relative_to(SRC)}:{node.lineno}", weights_only == ["True"]))
    assert calls, "expected the weights-only torch.load of the pickle conversion"
    assert [where for where, safe in calls if not safe] == []


@pytest.mark.parametrize("config_file", ["config.json", "tokenizer_config.json"])
def test_remote_code_needs_the_opt_in(tmp_path: Path, config_file: str) -> None:
    folder = tmp_path / "source"
    tiny_classifier().save_pretrained(folder)
    path = folder / config_file
    content = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**content, "auto_map": {"AutoModel": "modeling_custom.CustomModel"}}))
    with pytest.raises(FetchError) as caught:
        fetch_model(f"local:{folder}", tmp_path / "refused", key="models.custom")
    assert str(caught.value) == (
        f"models.custom: {config_file} of 'local:{folder}' asks for code from the model repository "
        f"(auto_map); set trust_remote_code: true in models.custom to allow it"
    )
    assert not (tmp_path / "refused").exists()
    record = fetch_model(f"local:{folder}", tmp_path / "allowed", key="models.custom", trust_remote_code=True)
    assert config_file in record["files"]


def test_trust_remote_code_is_a_boolean_that_defaults_to_false() -> None:
    config = load_config()
    assert all(model["trust_remote_code"] is False for model in config["models"].values())
    config["models"]["minilm"]["trust_remote_code"] = "yes"
    with pytest.raises(ConfigError, match=r"models\.minilm\.trust_remote_code: 'yes'"):
        validate_config(config)


@pytest.mark.parametrize("trust_remote_code", [False, True])
def test_the_opt_in_reaches_from_pretrained(
    fetched: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trust_remote_code: bool
) -> None:
    model_dir, data_dir = fetched
    checkpoint = tmp_path / "checkpoint"  # a fine-tuned checkpoint as the finetune stage saves it
    model = modeling.load_classifier(model_dir, load_task(data_dir), seed=0)
    checkpoint.mkdir()
    model.config.to_json_file(str(checkpoint / "config.json"))
    save_compact(checkpoint / modeling.CHECKPOINT_FILE, dict(model.state_dict()), {})
    (checkpoint / "train_metrics.json").write_text(
        json.dumps({"trainable_params": 1, "wall_seconds": 1.0, "final_train_loss": 0.5, "final_task_loss": 0.5})
    )
    flags = []
    for loader, method in ((modeling.AutoConfig, "from_pretrained"),
                           (modeling.AutoModelForSequenceClassification, "from_config"),
                           (modeling.AutoTokenizer, "from_pretrained")):
        original = getattr(loader, method)

        def recording(*args, _original=original, **kwargs):
            flags.append(kwargs["trust_remote_code"])
            return _original(*args, **kwargs)

        monkeypatch.setattr(loader, method, recording)
    evaluate_finetuned_stage(
        checkpoint, model_dir, data_dir, tmp_path / "finetuned.json", prunable=BERT_PRUNABLE,
        evaluation=EVALUATION, max_length=16, threads=1, trust_remote_code=trust_remote_code,
    )
    assert len(flags) >= 3 and all(flag is trust_remote_code for flag in flags)  # the tokenizer reads the config too
    assert "metrics" in json.loads((tmp_path / "finetuned.json").read_text())


STAGES = {
    "score": lambda model, data, out: score_stage(
        model, data, out / "scores.safetensors", method={"scorer": "magnitude"}, prunable=BERT_PRUNABLE,
        seed=0, threads=1, trust_remote_code=False,
    ),
    "evaluate_finetuned": lambda model, data, out: evaluate_finetuned_stage(
        model, model, data, out / "finetuned.json", prunable=BERT_PRUNABLE, evaluation=EVALUATION,
        max_length=16, threads=1, trust_remote_code=False,
    ),
    "evaluate_oneshot": lambda model, data, out: evaluate_oneshot_stage(
        model, model, data, out / "pruned.json", method={"scorer": "magnitude"}, prunable=BERT_PRUNABLE,
        allocation="global", structure="unstructured", sparsity=0.5, seed=0, evaluation=EVALUATION,
        max_length=16, threads=1, trust_remote_code=False,
    ),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stages_refuse_a_changed_data_file(fetched: tuple[Path, Path], tmp_path: Path, stage: str) -> None:
    model_dir, data_dir = fetched
    changed = tmp_path / "toy"
    shutil.copytree(data_dir, changed)
    with open(changed / "validation.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"text": "good movie", "label": 1}) + "\n")
    with pytest.raises(FetchError, match=r"toy/validation\.jsonl changed since it was fetched"):
        STAGES[stage](model_dir, changed, tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["toy"]


def test_stages_refuse_a_changed_tokenizer(fetched: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, data_dir = fetched
    changed = tmp_path / "tiny"
    shutil.copytree(model_dir, changed)
    with open(changed / "vocab.txt", "a", encoding="utf-8") as handle:
        handle.write("injected\n")
    with pytest.raises(FetchError, match=r"tiny/vocab\.txt changed since it was fetched"):
        STAGES["evaluate_finetuned"](changed, data_dir, tmp_path)
