"""The real Snakefile on a tiny vision config: a random tiny timm ViT (built from a config) and its
supervised fine-tune compared on synthetic digits, in a temporary directory."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tiny_workflow import snakemake
from vision_helpers import TINY_IMAGE_SIZE, VIT_PRUNABLE, build_digits_csv, build_tiny_vit

pytestmark = pytest.mark.workflow


def vision_params(root: Path) -> dict:
    prunable = {"include": list(VIT_PRUNABLE["include"]), "exclude": []}
    return {
        "models": {
            "vit": {"source": f"local:{root / 'vit'}", "image_size": TINY_IMAGE_SIZE, "description": "tiny ViT",
                    "prunable": prunable},
            "vit_sup": {"source": "finetuned:vit/digits/dense/quick/seed0", "image_size": TINY_IMAGE_SIZE,
                        "description": "tiny ViT after a supervised fine-tune", "prunable": prunable},
        },
        "tasks": {"digits": {"source": f"local:{root / 'digits.csv'}", "reader": "mnist_csv",
                             "split": {"validation": 0.1, "test": 0.25, "seed": 0}}},
        "methods": {"magnitude": {"scorer": "magnitude"},
                    "wanda": {"scorer": "wanda", "num_batches": 2, "batch_size": 8}},
        "recipes": {"quick": {"epochs": 2, "batch_size": 16, "learning_rate": 1.0e-3, "max_train_examples": 64}},
        "studies": {"ssl": {"figure": "ssl_vs_supervised", "models": ["vit", "vit_sup"], "tasks": ["digits"],
                            "methods": ["magnitude", "wanda"], "allocations": ["native"],
                            "sparsities": [0.0, 0.5], "recipes": ["quick"], "taus": [0.01, 0.05]}},
        "evaluation": {"batch_size": 32, "latency_batch_size": 2, "latency_repeats": 1},
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vision_workflow")
    build_tiny_vit(root / "vit")
    build_digits_csv(root / "digits.csv", rows=120)
    (root / "params.yaml").write_text(yaml.safe_dump(vision_params(root), sort_keys=False))
    snakemake(root)
    return root


def test_the_study_table_figure_and_near_zero_shares(workdir):
    table = pd.read_csv(workdir / "results/tables/ssl.csv")
    headline = table[table["headline"]]
    # 2 models x 2 methods x (the dense point and 0.5), each as pruned and fine-tuned rows
    assert len(headline) == 2 * 2 * 2 * 2
    assert set(headline["model"]) == {"vit", "vit_sup"}
    sparse = headline[headline["sparsity"] > 0]
    assert (sparse["achieved_sparsity"] - 0.5).abs().max() < 1e-6
    near_zero = pd.read_csv(workdir / "results/tables/near_zero/ssl.csv")
    assert len(near_zero) == 2 * 2 and near_zero["share"].between(0, 1).all()
    assert set(near_zero["description"]) == {"tiny ViT", "tiny ViT after a supervised fine-tune"}
    for suffix in ("png", "pdf"):
        assert (workdir / f"results/figures/ssl.{suffix}").stat().st_size > 1000


def test_the_supervised_backbone_is_the_dense_run_without_its_head(workdir):
    record = json.loads((workdir / "resources/models/vit_sup/source.json").read_text())
    assert record["source"] == "finetuned:vit/digits/dense/quick/seed0"
    config = json.loads((workdir / "resources/models/vit_sup/config.json").read_text())
    assert config["num_classes"] == 0 and config["model_args"]["depth"] == 2
    evaluation = json.loads((workdir / "results/eval/vit/digits/dense/quick/seed0/finetuned.json").read_text())
    assert evaluation["latency_batch"] == [2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE]
    assert set(record["matrices"]) >= {"timm_model.blocks.0.attn.qkv.weight", "timm_model.blocks.1.mlp.fc2.weight"}


def test_a_rerun_with_nothing_changed_does_nothing(workdir):
    assert "Nothing to be done" in snakemake(workdir, "--dry-run").stdout
