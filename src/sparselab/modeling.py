"""Loading models and tokenizers from fetched folders, and choosing the device.

A folder's config.json decides the model class: timm models (transformers' TimmWrapper,
`model_type: timm_wrapper`) are image classifiers, everything else a sequence classifier.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from sparselab.io import load_compact

log = logging.getLogger(__name__)

# model types whose folders hold image classifiers (the rest classify sequences)
IMAGE_MODEL_TYPES = ("timm_wrapper",)


def classifier_class(config: PretrainedConfig) -> type:
    """The auto class of the classifier a model config builds: image or sequence classification."""
    if config.model_type in IMAGE_MODEL_TYPES:
        return AutoModelForImageClassification
    return AutoModelForSequenceClassification


def load_classifier(
    model_dir: str | Path, task: dict, seed: int, *, trust_remote_code: bool = False
) -> nn.Module:
    """A sequence or image classifier from `model_dir` with a head for the task (task.json).

    The head of a pretrained model is new: seeding before loading makes its initialisation, and so
    the whole run, reproducible. Weights load from safetensors only (no pickle); code from the
    model repository runs only when the model's entry opts in with `trust_remote_code`.
    """
    config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    torch.manual_seed(seed)
    regression = task["labels"] is None
    return classifier_class(config).from_pretrained(
        str(model_dir),
        num_labels=task["num_labels"],
        problem_type="regression" if regression else "single_label_classification",
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
    )


# The weights file of a fine-tuned checkpoint folder (beside its config.json): sparse matrices are
# stored compactly (sparselab.io.save_compact), so transformers cannot read it directly.
CHECKPOINT_FILE = "model.compact.safetensors"


def load_finetuned(checkpoint_dir: str | Path, *, trust_remote_code: bool = False) -> nn.Module:
    """The fine-tuned classifier saved in `checkpoint_dir` (config.json + CHECKPOINT_FILE), with
    exactly the saved weights: every tensor of the file must match one of the model (strict)."""
    checkpoint_dir = Path(checkpoint_dir)
    config = AutoConfig.from_pretrained(str(checkpoint_dir), trust_remote_code=trust_remote_code)
    model = classifier_class(config).from_config(config, trust_remote_code=trust_remote_code)
    model.load_state_dict(load_compact(checkpoint_dir / CHECKPOINT_FILE), strict=True)
    return model.eval()


def load_tokenizer(
    model_dir: str | Path, *, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """The tokenizer of `model_dir`; code from the model repository runs only on the opt-in."""
    return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)


def pick_device() -> torch.device:
    """CUDA when it is really usable (a tensor can be made on it), else CPU: a GPU job that landed
    on a node without a usable GPU (no driver, a busy or broken device) says so and runs on CPU."""
    if not torch.cuda.is_available():
        log.info("CUDA is not available: running on CPU")
        return torch.device("cpu")
    try:
        torch.zeros(1, device="cuda")
    except RuntimeError as error:
        log.warning("CUDA is present but not usable (%s): running on CPU", str(error).splitlines()[0])
        return torch.device("cpu")
    log.info("running on %s", torch.cuda.get_device_name())
    return torch.device("cuda")


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def _cpu_has_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX-512 and later). Without them a bf16
    matmul ran 73x slower than fp32 (an AVX2 AMD EPYC)."""
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


@functools.lru_cache(maxsize=None)
def _bf16_unsupported(device: str) -> bool:
    """A GPU without bf16 arithmetic (before Ampere), or a CPU without it: said once per process."""
    kind, supported = {"cuda": ("GPU", torch.cuda.is_bf16_supported), "cpu": ("CPU", _cpu_has_bf16)}.get(
        device, (device, lambda: True))
    if not supported():
        log.warning("this %s has no bf16 arithmetic: computing in fp32 instead of bf16 autocast", kind)
        return True
    return False


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass: bf16 autocast (weights and optimizer stay fp32, so a
    masked weight stays exactly zero), or plain fp32. bf16 halves the cost of matmuls on CPUs with
    AVX512-BF16/AMX and on GPUs from Ampere on; a GPU or CPU without bf16 arithmetic computes in
    fp32."""
    dtype = PRECISIONS[precision]
    if dtype is None or _bf16_unsupported(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def configure_threads(threads: int) -> None:
    """Use exactly the cores the job was given; results on CPU depend on the thread count."""
    torch.set_num_threads(max(1, threads))
