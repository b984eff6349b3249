"""The workflow's stages as plain functions: each rule script is a one-call adapter to one of them.

Stages read their inputs from files, get every setting as an argument (never from params.yaml)
and write their outputs atomically. A stage that reads a fetched model or data folder first checks
it against its source.json (`verify_record`), so that a changed file fails before it is used.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from torch import nn

from sparselab.config import build_method
from sparselab.data import load_split, load_task
from sparselab.evaluate import count_zeros, latency_ms, task_metrics
from sparselab.fetch import RECORD_NAME, sha256_file, verify_record
from sparselab.distillation import DistillationLoss, teacher_outputs
from sparselab.finetune import recipe_from_config, supervised_loss, train
from sparselab.io import atomic_path, load_masks, load_tensors, read_json, save_compact, save_masks, save_tensors, write_json
from sparselab.masks import Structure, build_masks, sparsity_report
from sparselab.inputs import input_pipeline
from sparselab.modeling import CHECKPOINT_FILE, configure_threads, load_classifier, load_finetuned, pick_device
from sparselab.prunable import select_prunable
from sparselab.resume import Checkpointing, state_path
from sparselab.scoring import ScoringContext
from sparselab.sparsifiers import FixedMask, Sparsifier, Target

log = logging.getLogger(__name__)

# Examples per forward pass of the teacher over the training split (shortest first: the same
# batches, so the same logits, in every run); 32 as for evaluation, faster than larger batches on a CPU
TEACHER_BATCH = 32


def compute_scores(
    model: nn.Module, method: dict, prunable: dict, data_dir: Path, model_dir: Path, seed: int, *,
    trust_remote_code: bool,
) -> dict[str, torch.Tensor]:
    """Scores of the method (`{scorer: name, **hyper-parameters}`) for every prunable matrix."""
    scorer = build_method(method)
    calibration = None
    if scorer.needs_data:
        task = load_task(data_dir)
        # max_length: the scorer's own (its hyper-parameter) reaches the text pipeline per batch
        pipeline = input_pipeline(model_dir, task, 0, trust_remote_code=trust_remote_code)
        calibration = pipeline.calibration(load_split(data_dir, "train"), task["labels"] is None, seed)
    context = ScoringContext(
        model=model.eval(),
        prunable=select_prunable(model, prunable["include"], prunable["exclude"]),
        calibration=calibration,
        generator=torch.Generator().manual_seed(seed),
    )
    return scorer.score(context)


def score_stage(
    model_dir: Path, data_dir: Path, out_path: Path, method: dict, prunable: dict, seed: int, threads: int, *,
    trust_remote_code: bool,
) -> None:
    """Score the pretrained model: the input of one-shot pruning before fine-tuning."""
    configure_threads(threads)
    verify_record(model_dir)
    verify_record(data_dir)
    model = load_classifier(model_dir, load_task(data_dir), seed, trust_remote_code=trust_remote_code)
    scores = compute_scores(model, method, prunable, data_dir, model_dir, seed, trust_remote_code=trust_remote_code)
    save_tensors(out_path, scores, metadata={"method": json.dumps(method, sort_keys=True)})


def prune_stage(scores_path: Path, mask_path: Path, report_path: Path, sparsity: float, allocation: str, structure: str) -> None:
    """Scores -> masks, with the requested-vs-achieved sparsity report."""
    scores = load_tensors(scores_path)
    parsed = Structure.parse(structure)
    masks = build_masks(scores, sparsity, allocation, parsed)
    report = sparsity_report(masks, sparsity, allocation, parsed)
    save_masks(mask_path, masks)
    write_json(report_path, report)


def build_sparsifier(model: nn.Module, mask_path: Path | None, during_training: dict | None) -> Sparsifier | None:
    """The sparsifier of a run attached to `model`: the prune stage's mask held fixed, a
    during-training method (its params.yaml entry, target and prunable set), or None (dense)."""
    if mask_path is not None:
        masks = load_masks(mask_path)
        params = dict(model.named_parameters())
        sparsifier = FixedMask(masks)
        sparsifier.attach(model, {name: params[name] for name in masks}, target=None)
        return sparsifier
    if during_training is None:
        return None
    method = during_training["method"]
    sparsifier = build_method(method)
    prunable = during_training["prunable"]
    target = Target(during_training["sparsity"], during_training["allocation"], Structure.parse(during_training["structure"]))
    sparsifier.attach(model, select_prunable(model, prunable["include"], prunable["exclude"]), target)
    return sparsifier


def finetune_stage(
    model_dir: Path, data_dir: Path, mask_path: Path | None, out_dir: Path, recipe: dict, seed: int, threads: int,
    during_training: dict | None = None, teacher_dir: Path | None = None, *, trust_remote_code: bool,
) -> None:
    """Fine-tune the pretrained model and save the checkpoint, the per-step log and train metrics.

    With `mask_path` the prune stage's mask is held fixed; with `during_training` a sparsifier
    prunes on its schedule; with neither the run is dense. A recipe with distillation learns from
    the dense fine-tuned model in `teacher_dir` (its logits on the training examples, computed once).

    The run is resumable (sparselab.resume): its state is saved in out_dir/.resume/ every
    `recipe.checkpoint_every` steps and when SIGTERM or SIGUSR1 stops it (it then exits with
    TrainingInterrupted and writes no output); the next run continues from there, and the state is
    removed once the outputs are written.
    """
    configure_threads(threads)
    verify_record(model_dir)
    verify_record(data_dir)
    task = load_task(data_dir)
    parsed_recipe = recipe_from_config(recipe)
    rows = load_split(data_dir, "train")[: parsed_recipe.max_train_examples]
    pipeline = input_pipeline(model_dir, task, parsed_recipe.max_length, trust_remote_code=trust_remote_code)
    data = pipeline.encode(rows, task["labels"] is None)
    device = pick_device()
    loss_fn = supervised_loss
    if parsed_recipe.distillation is not None:
        if teacher_dir is None:
            raise ValueError("the recipe distils, but no teacher checkpoint was given")
        teacher = load_finetuned(teacher_dir, trust_remote_code=trust_remote_code)
        started = time.perf_counter()
        data.teacher_logits = teacher_outputs(teacher, data, TEACHER_BATCH, device, parsed_recipe.precision)
        log.info("teacher %s: logits of %d training examples in %.1f s", teacher_dir, len(data),
                 time.perf_counter() - started)
        del teacher
        loss_fn = DistillationLoss(parsed_recipe.distillation, task["labels"] is None)
    model = load_classifier(model_dir, task, seed, trust_remote_code=trust_remote_code).to(device)
    sparsifier = build_sparsifier(model, mask_path, during_training)
    out_dir.mkdir(parents=True, exist_ok=True)
    # what else makes the run (train adds the recipe, seed, data size and sparsifier settings)
    checkpointing = Checkpointing(state_path(out_dir), parsed_recipe.checkpoint_every, {
        "during_training": during_training,
        "mask": sha256_file(mask_path) if mask_path is not None else None,
        "teacher": sha256_file(teacher_dir / CHECKPOINT_FILE) if loss_fn is not supervised_loss else None,
        "model": sha256_file(model_dir / RECORD_NAME),
        "data": sha256_file(data_dir / RECORD_NAME),
    })
    with atomic_path(out_dir / "train_log.csv") as log_tmp:
        result = train(model, data, parsed_recipe, seed, device, log_tmp, sparsifier, checkpointing, loss_fn)
    model.to("cpu")
    with atomic_path(out_dir / "config.json") as config_tmp:
        model.config.to_json_file(str(config_tmp))
    masks = {name: mask.cpu() for name, mask in sparsifier.masks.items()} if sparsifier is not None else {}
    save_compact(out_dir / CHECKPOINT_FILE, dict(model.state_dict()), masks)
    write_json(out_dir / "train_metrics.json", {
        "steps": result.steps,
        "train_examples": len(data),
        "final_train_loss": result.final_train_loss,
        "final_task_loss": result.final_task_loss,
        "wall_seconds": result.wall_seconds,
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
        "device": device.type,
        "threads": threads,
        "torch": torch.__version__,
    })
    checkpointing.clear()


def _evaluation_record(
    model: nn.Module, pipeline, data_dir: Path, prunable: dict, evaluation: dict,
) -> dict:
    """Task metrics on the evaluation split and the sparsity and parameter counts recounted from the weights."""
    task = load_task(data_dir)
    rows = load_split(data_dir, task["eval_split"])
    data = pipeline.encode(rows, task["labels"] is None)
    device = pick_device()
    metrics = task_metrics(model, data, task["metrics"], evaluation["batch_size"], device, evaluation["precision"])
    weights = {n: p.detach() for n, p in select_prunable(model, prunable["include"], prunable["exclude"]).items()}
    zeros, prunable_total = count_zeros(weights)
    all_zeros, total = count_zeros({n: p.detach() for n, p in model.named_parameters()})
    return {
        "metrics": metrics,
        "headline_metric": task["metrics"][0],
        "eval_split": task["eval_split"],
        "eval_examples": len(data),
        "achieved_sparsity": zeros / prunable_total,
        "prunable_params": prunable_total,
        "total_params": total,
        "nonzero_params": total - all_zeros,
    }


def evaluate_finetuned_stage(
    checkpoint_dir: Path, model_dir: Path, data_dir: Path, out_path: Path, prunable: dict,
    evaluation: dict, max_length: int, threads: int, *, trust_remote_code: bool,
) -> None:
    """Evaluate a fine-tuned checkpoint as saved (the sparsity is recounted from its weights)."""
    configure_threads(threads)
    verify_record(model_dir)
    verify_record(data_dir)
    train_metrics = read_json(checkpoint_dir / "train_metrics.json")
    model = load_finetuned(checkpoint_dir, trust_remote_code=trust_remote_code)
    pipeline = input_pipeline(model_dir, load_task(data_dir), max_length, trust_remote_code=trust_remote_code)
    record = _evaluation_record(model, pipeline, data_dir, prunable, evaluation)
    batch_size = evaluation["latency_batch_size"]
    record.update(
        stage="finetuned",
        file_bytes=(checkpoint_dir / CHECKPOINT_FILE).stat().st_size,
        latency_ms=latency_ms(model, pipeline.latency_batch(model, batch_size), evaluation["latency_repeats"],
                              pick_device(), evaluation["precision"]),
        latency_batch=pipeline.latency_shape(batch_size),
        trainable_params=train_metrics["trainable_params"],
        wall_seconds=train_metrics["wall_seconds"],
        final_train_loss=train_metrics["final_train_loss"],
        final_task_loss=train_metrics["final_task_loss"],
    )
    write_json(out_path, record)


def evaluate_oneshot_stage(
    dense_dir: Path, model_dir: Path, data_dir: Path, out_path: Path, method: dict, prunable: dict,
    allocation: str, structure: str, sparsity: float, seed: int, evaluation: dict, max_length: int, threads: int, *,
    trust_remote_code: bool,
) -> None:
    """The 'without fine-tuning' reference: the dense fine-tuned model pruned one-shot, not retrained."""
    configure_threads(threads)
    verify_record(model_dir)
    verify_record(data_dir)
    start = time.perf_counter()
    model = load_finetuned(dense_dir, trust_remote_code=trust_remote_code)
    scores = compute_scores(model, method, prunable, data_dir, model_dir, seed, trust_remote_code=trust_remote_code)
    parsed = Structure.parse(structure)
    masks = build_masks(scores, sparsity, allocation, parsed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].dtype))
    pipeline = input_pipeline(model_dir, load_task(data_dir), max_length, trust_remote_code=trust_remote_code)
    record = _evaluation_record(model, pipeline, data_dir, prunable, evaluation)
    record.update(
        stage="pruned",
        file_bytes=None,
        latency_ms=None,
        trainable_params=0,
        wall_seconds=time.perf_counter() - start,
    )
    write_json(out_path, record)
