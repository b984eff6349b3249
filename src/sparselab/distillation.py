"""Knowledge distillation from the dense fine-tuned teacher (methods.md section 4).

The teacher is the dense run of the same model and task (a job of the workflow, fine-tuned once and
shared by every student). Its outputs on the training examples are computed once, before the
student's first step, with the teacher in eval mode: without dropout they are a fixed function of
the example, so precomputing them gives the same targets as a teacher forward pass per step, at a
fraction of the cost of 1x-4x budgets.

Loss of a batch, with student logits s, teacher logits t, labels y, temperature T, hardness h:

    classification: h * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - h) * CE(s, y)
    regression:     h * MSE(s, t) + (1 - h) * MSE(s, y)

hardness 1.0 is pure distillation (the oBERT recipes); T^2 keeps the soft term's gradient scale
independent of T (Hinton et al.). KL is the mean over the batch (`batchmean`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sparselab.batches import Encoded
from sparselab.evaluate import forward_logits


@dataclass(frozen=True)
class Distillation:
    """A recipe's distillation settings (params.yaml `recipes.<name>.distillation`): the teacher is
    the dense run of `teacher_recipe` with seed `teacher_seed`, of the student's model and task."""

    teacher_recipe: str
    teacher_seed: int = 0
    temperature: float = 2.0
    hardness: float = 1.0


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float, hardness: float,
    regression: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(training objective, task loss on the labels) of a batch; student and teacher are (batch,
    classes) logits, or (batch, 1) predictions for regression. Both in float32."""
    student = student.float()
    if regression:
        task = F.mse_loss(student.squeeze(-1), labels.float())
        soft = F.mse_loss(student, teacher)
    else:
        task = F.cross_entropy(student, labels)
        soft = F.kl_div(F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1),
                        reduction="batchmean", log_target=True) * temperature ** 2
    return hardness * soft + (1.0 - hardness) * task, task


def teacher_outputs(teacher: nn.Module, data: Encoded, batch_size: int, device: torch.device,
                    precision: str) -> torch.Tensor:
    """The teacher's logits on every example of `data`, in order: (examples, classes) float32 on CPU
    (evaluate.forward_logits: eval mode, batches of similar lengths)."""
    return forward_logits(teacher, data, batch_size, device, precision)


class DistillationLoss:
    """The loss function of a distilled run's training step: reads the batch's `teacher_logits`."""

    def __init__(self, distillation: Distillation, regression: bool) -> None:
        self.distillation = distillation
        self.regression = regression

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "teacher_logits")}
        logits = model(**inputs).logits
        return distillation_loss(logits, batch["teacher_logits"], batch["labels"],
                                 self.distillation.temperature, self.distillation.hardness, self.regression)
