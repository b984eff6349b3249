"""Preemption and resume: a fine-tune stopped by SIGTERM/SIGUSR1 saves its state and exits; run
again, it continues and ends with the same weights and train log, bit for bit, as a run that was
never stopped. A damaged state is refused with its path; another run's state is ignored."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import BERT_PRUNABLE, tiny_bert_config
from test_finetune import fixed_mask, toy_data
from test_sparsifiers import attached
from tiny_workflow import build_tiny_data, build_tiny_model
from transformers import BertForSequenceClassification

import sparselab.finetune as finetune
from sparselab.data import fetch_task
from sparselab.distillation import Distillation, DistillationLoss
from sparselab.fetch import fetch_model
from sparselab.finetune import Recipe, train
from sparselab.io import CorruptFileError
from sparselab.modeling import CHECKPOINT_FILE
from sparselab.resume import STOP_SIGNALS, Checkpointing, TrainingInterrupted, state_path
from sparselab.sparsifiers import SPARSIFIERS

# 48 toy rows, batch 8: 6 steps an epoch; 2.5 epochs = 15 steps, the last epoch cut short.
# Dropout is on (the tiny BERT's 0.1), so torch's RNG state matters as much as the data order's.
RECIPE = Recipe(epochs=2.5, batch_size=8, learning_rate=1e-3, weight_decay=0.01, warmup_ratio=0.2)
HYPER = {"gmp": {"frequency": 2, "start": 0.1, "end": 0.8}, "seven_dyn": {"window_start": 2, "window_length": 8},
         "pst": {"rank_w": 2, "rank_m": 2}, "acdc": {"warmup": 0.1, "phase": 0.2, "final": 0.2}}
KINDS = ["dense", "fixed", *SPARSIFIERS.names()]
DECLARED = ["model.compact.safetensors", "config.json", "train_log.csv", "train_metrics.json"]


def fresh(kind: str):
    """A new tiny BERT (the same weights every time) and its sparsifier (None for dense)."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config()).eval()
    prunable = {"include": list(BERT_PRUNABLE["include"]), "exclude": []}
    if kind == "dense":
        return model, None
    if kind == "fixed":
        return model, fixed_mask(model, prunable)
    return model, attached(kind, model, prunable, sparsity=0.6, **HYPER.get(kind, {}))


def bits(state: dict[str, torch.Tensor]) -> dict[str, bytes]:
    return {name: tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
            for name, tensor in state.items()}


def log_rows(path: Path, keep_seconds: bool = False) -> list[list[str]]:
    return [row if keep_seconds else row[:-1] for row in csv.reader(open(path))]


def run(kind: str, log_path: Path, checkpointing: Checkpointing | None = None, recipe: Recipe = RECIPE):
    model, sparsifier = fresh(kind)
    result = train(model, toy_data(n=48), recipe, 0, torch.device("cpu"), log_path, sparsifier, checkpointing)
    return model, result


def stop_after(monkeypatch, steps: int, signum: int) -> None:
    """Send `signum` to this process during optimizer step number `steps` (1-based)."""
    real = finetune.training_step

    def step_then_signal(model, batch, optimizer, sparsifier, step, *args):
        losses = real(model, batch, optimizer, sparsifier, step, *args)
        if step + 1 == steps:
            os.kill(os.getpid(), signum)  # the real handler: it only sets the flag
        return losses

    monkeypatch.setattr(finetune, "training_step", step_then_signal)


@pytest.mark.parametrize("kind", KINDS)
def test_stopped_twice_and_resumed_ends_bit_for_bit(kind, tmp_path, monkeypatch):
    reference, expected = run(kind, tmp_path / "reference.csv")
    state = tmp_path / "run" / ".resume" / "state.safetensors"
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    # stopped mid-epoch 1 (SIGTERM), then mid-epoch 2 (SIGUSR1), with periodic saves every 3 steps
    for stop, signum in ((4, signal.SIGTERM), (11, signal.SIGUSR1)):
        stop_after(monkeypatch, stop, signum)
        with pytest.raises(TrainingInterrupted, match=rf"stopped by {signal.Signals(signum).name} after step {stop} of 15"):
            run(kind, tmp_path / "log.csv", Checkpointing(state, 3, {"run": kind}))
        monkeypatch.undo()
        assert state.is_file() and not list(state.parent.glob(".*.tmp-*"))
        assert {signum: signal.getsignal(signum) for signum in STOP_SIGNALS} == previous  # handlers restored
        assert [int(row[0]) for row in log_rows(tmp_path / "log.csv")[1:]][-1] == stop
    resumed, result = run(kind, tmp_path / "log.csv", Checkpointing(state, 3, {"run": kind}))
    assert bits(resumed.state_dict()) == bits(reference.state_dict())
    assert log_rows(tmp_path / "log.csv") == log_rows(tmp_path / "reference.csv")
    assert (result.steps, result.final_train_loss, result.trainable_params) == \
        (expected.steps, expected.final_train_loss, expected.trainable_params)


def test_a_distilled_gmp_run_with_a_cyclic_rate_resumes_bit_for_bit(tmp_path, monkeypatch):
    """The teacher's logits, the task loss column and the cyclic learning rate survive a stop."""
    recipe = Recipe(epochs=2.5, batch_size=8, learning_rate=1e-3, lr_schedule="cyclic", final_lr_ratio=0.1,
                    distillation=Distillation("standard", temperature=2.0, hardness=0.7))

    def distilled(log_path, checkpointing=None):
        model, sparsifier = fresh("gmp")
        data = toy_data(n=48)
        data.teacher_logits = torch.randn(len(data), 2, generator=torch.Generator().manual_seed(3))
        result = train(model, data, recipe, 0, torch.device("cpu"), log_path, sparsifier, checkpointing,
                       DistillationLoss(recipe.distillation, regression=False))
        return model, result

    reference, expected = distilled(tmp_path / "reference.csv")
    state = tmp_path / "run" / ".resume" / "state.safetensors"
    stop_after(monkeypatch, 7, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted):
        distilled(tmp_path / "log.csv", Checkpointing(state, 0, {"run": "kd"}))
    monkeypatch.undo()
    resumed, result = distilled(tmp_path / "log.csv", Checkpointing(state, 0, {"run": "kd"}))
    assert bits(resumed.state_dict()) == bits(reference.state_dict())
    assert log_rows(tmp_path / "log.csv") == log_rows(tmp_path / "reference.csv")
    assert (result.final_train_loss, result.final_task_loss) == (expected.final_train_loss, expected.final_task_loss)


def interrupted_state(tmp_path: Path, monkeypatch, recipe: Recipe = RECIPE) -> Path:
    state = tmp_path / ".resume" / "state.safetensors"
    stop_after(monkeypatch, 5, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted):
        run("gmp", tmp_path / "log.csv", Checkpointing(state, 0, {}), recipe)
    monkeypatch.undo()
    return state


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_state_is_refused_with_its_path(damage, tmp_path, monkeypatch):
    state = interrupted_state(tmp_path, monkeypatch)
    data = state.read_bytes()
    if damage == "truncated":  # what a copy cut short or a full disk outside our atomic write leaves
        state.write_bytes(data[: len(data) // 2])
    else:
        state.write_bytes(data[:-3] + bytes([data[-3] ^ 1]) + data[-2:])
    with pytest.raises(CorruptFileError) as caught:
        run("gmp", tmp_path / "log.csv", Checkpointing(state, 0, {}))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{state} is {'truncated' if damage == 'truncated' else 'corrupted'}")
    assert f"delete {state} (the run then starts over from step 0) and rerun" in message
    assert state.read_bytes() != data and state.is_file()  # left for the user to look at


def test_a_half_written_state_is_never_read(tmp_path, monkeypatch):
    """A save killed mid-write leaves only a temporary sibling: the run starts over, as with none."""
    state = interrupted_state(tmp_path, monkeypatch)
    state.rename(state.with_name(f".{state.name}.tmp-12345"))
    reference, _ = run("gmp", tmp_path / "reference.csv")
    model, result = run("gmp", tmp_path / "log.csv", Checkpointing(state, 0, {}))
    assert result.steps == 15 and bits(model.state_dict()) == bits(reference.state_dict())


def test_another_runs_state_is_ignored_with_a_log_line(tmp_path, monkeypatch, caplog):
    state = interrupted_state(tmp_path, monkeypatch)
    other = Recipe(**{**RECIPE.__dict__, "learning_rate": 2e-3, "checkpoint_every": 7})
    reference, _ = run("gmp", tmp_path / "reference.csv", recipe=other)
    with caplog.at_level("WARNING", logger="sparselab.resume"):
        model, result = run("gmp", tmp_path / "log.csv", Checkpointing(state, 0, {}), other)
    assert any(f"ignoring the resumable state {state}" in r.message and "differs in recipe.learning_rate" in r.message
               and "starting over" in r.message for r in caplog.records), caplog.text
    assert result.steps == 15 and bits(model.state_dict()) == bits(reference.state_dict())
    assert not state.exists()


def test_checkpoint_every_is_not_part_of_the_run(tmp_path, monkeypatch):
    """The save interval changes nothing in the results, so a state saved with another one resumes."""
    state = interrupted_state(tmp_path, monkeypatch)
    reference, _ = run("gmp", tmp_path / "reference.csv")
    model, _ = run("gmp", tmp_path / "log.csv", Checkpointing(state, 0, {}), Recipe(**{**RECIPE.__dict__, "checkpoint_every": 2}))
    assert bits(model.state_dict()) == bits(reference.state_dict())
    assert log_rows(tmp_path / "log.csv") == log_rows(tmp_path / "reference.csv")


# --- a real process: SIGTERM to a running fine-tune job, then the job run again ----------------

TOY_TASK = {"source": "", "reader": "csv", "labels": ["neg", "pos"], "split": {"validation": 0.2, "test": 0.25, "seed": 0}}
STAGE = textwrap.dedent("""
    import json, logging, sys
    from pathlib import Path
    from sparselab.pipeline import finetune_stage
    logging.basicConfig(level=logging.INFO)
    root, out, recipe = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
    during = {"method": {"sparsifier": "gmp", "start": 0.1, "end": 0.6, "frequency": 10}, "sparsity": 0.5,
              "allocation": "global", "structure": "unstructured", "prunable": json.loads(sys.argv[4])}
    finetune_stage(root / "model", root / "data", None, out, recipe, 0, 1, during, trust_remote_code=False)
""")


@pytest.fixture(scope="module")
def fetched(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume_stage")
    build_tiny_model(root / "tiny_model")
    build_tiny_data(root / "toy.csv")
    fetch_model(f"local:{root / 'tiny_model'}", root / "model")
    fetch_task("toy", {**TOY_TASK, "source": f"local:{root / 'toy.csv'}"}, root / "data")
    return root


def stage(root: Path, out: Path, checkpoint_every: int) -> subprocess.Popen:
    # 80 training rows, batch 16: 5 steps an epoch, 300 steps
    recipe = {"epochs": 60, "batch_size": 16, "learning_rate": 1e-3, "max_length": 16, "max_train_examples": 80,
              "warmup_ratio": 0.1, "checkpoint_every": checkpoint_every}
    return subprocess.Popen([sys.executable, "-c", STAGE, str(root), str(out), json.dumps(recipe), json.dumps(BERT_PRUNABLE)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigterm_to_a_real_job_then_rerun_matches_an_uninterrupted_run(fetched, tmp_path):
    reference = stage(fetched, tmp_path / "reference", 1000)
    assert reference.wait(timeout=300) == 0, reference.stdout.read()

    out = tmp_path / "run"
    state = state_path(out)
    job = stage(fetched, out, 4)
    deadline = time.monotonic() + 120
    while not state.is_file():  # saved after step 4: the job is mid-training
        assert job.poll() is None, job.stdout.read()
        assert time.monotonic() < deadline, "the job never saved a state"
        time.sleep(0.005)
    job.send_signal(signal.SIGTERM)
    output = job.communicate(timeout=120)[0]
    assert job.returncode != 0, output
    assert "TrainingInterrupted: fine-tuning stopped by SIGTERM after step" in output, output
    stopped_at = int(output.split("after step ")[1].split()[0])
    assert 4 <= stopped_at < 300, output
    assert not [name for name in DECLARED if (out / name).exists()], sorted(p.name for p in out.iterdir())
    assert state.is_file()

    again = stage(fetched, out, 4)
    output = again.communicate(timeout=300)[0]
    assert again.returncode == 0, output
    assert f"resuming from {state} at step {stopped_at} of 300" in output, output
    assert not state.parent.exists()  # removed with the job's success
    assert (out / CHECKPOINT_FILE).read_bytes() == (tmp_path / "reference" / CHECKPOINT_FILE).read_bytes()
    assert (out / "config.json").read_bytes() == (tmp_path / "reference" / "config.json").read_bytes()
    assert log_rows(out / "train_log.csv") == log_rows(tmp_path / "reference" / "train_log.csv")
    metrics = [json.loads((folder / "train_metrics.json").read_text()) for folder in (out, tmp_path / "reference")]
    for record in metrics:
        del record["wall_seconds"]
    assert metrics[0] == metrics[1]
