"""The ViT prunable set, every scorer and allocation on images, and sparse fine-tuning of a ViT."""

from __future__ import annotations

import pytest
import timm
import torch
from vision_helpers import TINY_VIT, VIT_PRUNABLE, build_digits_csv, build_tiny_vit

from sparselab.data import fetch_task, load_split, load_task
from sparselab.inputs import input_pipeline
from sparselab.masks import ALLOCATIONS, Structure, build_masks
from sparselab.modeling import load_classifier, load_finetuned
from sparselab.pipeline import compute_scores, finetune_stage
from sparselab.prunable import select_prunable
from sparselab.scoring import SCORERS
from sparselab.vision_models import fetch_vision_model

SMALL = {"taylor": {"num_batches": 2, "batch_size": 8}, "seven_pre": {"window": 2, "batch_size": 8},
         "wanda": {"num_batches": 2, "batch_size": 8}}


@pytest.fixture(scope="module")
def fetched(tmp_path_factory):
    """A tiny ViT folder and a fetched task of 100 synthetic digits."""
    root = tmp_path_factory.mktemp("vision")
    model_dir = build_tiny_vit(root / "vit")
    (model_dir / "source.json").write_text('{"files": {}}')
    csv = build_digits_csv(root / "digits.csv", rows=100)
    fetch_task("digits", {"source": f"local:{csv}", "reader": "mnist_csv",
                          "split": {"validation": 0.1, "test": 0.2, "seed": 0}}, root / "digits")
    return model_dir, root / "digits"


def test_the_vit_prunable_set_is_qkv_proj_fc1_fc2_of_every_block(fetched):
    model_dir, data_dir = fetched
    model = load_classifier(model_dir, load_task(data_dir), seed=0)
    prunable = select_prunable(model, VIT_PRUNABLE["include"], VIT_PRUNABLE["exclude"])
    width, depth = TINY_VIT["embed_dim"], TINY_VIT["depth"]
    expected = {}
    for block in range(depth):
        prefix = f"timm_model.blocks.{block}."
        expected |= {prefix + "attn.qkv.weight": (3 * width, width), prefix + "attn.proj.weight": (width, width),
                     prefix + "mlp.fc1.weight": (4 * width, width), prefix + "mlp.fc2.weight": (width, 4 * width)}
    assert {name: tuple(p.shape) for name, p in prunable.items()} == expected
    names = dict(model.named_parameters())
    assert "timm_model.patch_embed.proj.weight" in names and "timm_model.head.weight" in names  # kept dense


@pytest.mark.parametrize("scorer", sorted(SCORERS))
def test_every_scorer_scores_a_vit_on_image_batches(fetched, scorer):
    model_dir, data_dir = fetched
    model = load_classifier(model_dir, load_task(data_dir), seed=0)
    method = {"scorer": scorer, **SMALL.get(scorer, {})}
    scores = compute_scores(model, method, VIT_PRUNABLE, data_dir, model_dir, seed=0, trust_remote_code=False)
    prunable = select_prunable(model, VIT_PRUNABLE["include"], [])
    assert {name: s.shape for name, s in scores.items()} == {name: p.shape for name, p in prunable.items()}
    assert all(torch.isfinite(s).all() for s in scores.values())


@pytest.mark.parametrize("allocation", sorted(ALLOCATIONS))
def test_every_allocation_prunes_a_vit_to_its_exact_sparsity(fetched, allocation):
    model_dir, data_dir = fetched
    model = load_classifier(model_dir, load_task(data_dir), seed=0)
    scores = compute_scores(model, {"scorer": "magnitude"}, VIT_PRUNABLE, data_dir, model_dir, 0, trust_remote_code=False)
    masks = build_masks(scores, 0.75, allocation, Structure.parse("unstructured"))
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == sum(m.numel() for m in masks.values()) // 4


def test_a_masked_vit_fine_tunes_with_its_pruned_weights_held_at_zero(fetched, tmp_path):
    from sparselab.io import save_masks

    model_dir, data_dir = fetched
    model = load_classifier(model_dir, load_task(data_dir), seed=0)
    scores = compute_scores(model, {"scorer": "magnitude"}, VIT_PRUNABLE, data_dir, model_dir, 0, trust_remote_code=False)
    masks = build_masks(scores, 0.5, "global", Structure.parse("unstructured"))
    save_masks(tmp_path / "mask.safetensors", masks)
    recipe = {"epochs": 2, "batch_size": 16, "learning_rate": 1.0e-3, "max_train_examples": 64}
    finetune_stage(model_dir, data_dir, tmp_path / "mask.safetensors", tmp_path / "run", recipe, 0, 1,
                   trust_remote_code=False)
    tuned = dict(load_finetuned(tmp_path / "run").named_parameters())
    for name, mask in masks.items():
        assert torch.all(tuned[name][~mask] == 0)
        assert torch.any(tuned[name][mask] != 0)
    pipeline = input_pipeline(model_dir, load_task(data_dir), 128, trust_remote_code=False)
    assert len(pipeline.encode(load_split(data_dir, "train"), False)) == 70


def test_a_timm_source_loads_a_local_weights_file_offline(tmp_path):
    """timm:<name> with `weights_file`: timm's own pretrained loading from a local file (the offline
    route), its position embeddings resampled to the entry's image size, the head dropped."""
    torch.manual_seed(0)
    saved = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10)  # a 224 px model
    weights = tmp_path / "vit_tiny.pth"
    torch.save(saved.state_dict(), weights)
    entry = {"source": "timm:vit_tiny_patch16_224", "image_size": 32, "weights_file": str(weights),
             "prunable": dict(VIT_PRUNABLE)}
    fetch_vision_model(entry, tmp_path / "model", key="models.vit")
    model = load_classifier(tmp_path / "model", {"num_labels": 3, "labels": ["a", "b", "c"]}, seed=0)
    fetched = model.timm_model.state_dict()
    assert torch.equal(fetched["blocks.0.attn.qkv.weight"], saved.state_dict()["blocks.0.attn.qkv.weight"])
    assert fetched["pos_embed"].shape == (1, 1 + (32 // 16) ** 2, 192)  # 4 patches + the class token
    assert model(pixel_values=torch.zeros(2, 3, 32, 32)).logits.shape == (2, 3)
