"""The neural baselines DisCoM-KD is compared with: models and losses (torch only).

- `SingleModalityClassifier`: one modality alone, encoder + Linear(512, K) (`mono`, and the
  student of `kd` and `dkd`).
- `MultiModalTeacher`: one encoder per modality, the two 512-d features summed, Linear(512, K).
- `kd_loss`: Hinton et al. (2015), KL(softmax(t/T) || softmax(s/T)) * T^2.
- `dkd_losses`: decoupled KD (Zhao et al., CVPR 2022), the target-class (TCKD) and
  non-target-class (NCKD) terms.

The encoders are DisCoM-KD's own (`discomkd.build_encoder`, this room's model), so only the method differs.
How each is trained is its spec in `methods.py` beside this module.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from discomkd.models.discomkd import FEATURE_DIM, build_encoder

# Hinton et al.'s temperature as used by Zhao et al. for DKD; the same T for KD and DKD keeps them comparable.
TEMPERATURE = 4.0
# Zhao et al.'s CIFAR-100 settings: alpha (TCKD) 1, beta (NCKD) 8, the KD part warmed up linearly over 20 epochs.
DKD_ALPHA = 1.0
DKD_BETA = 8.0
DKD_WARMUP_EPOCHS = 20
# Subtracted from the target logit (after dividing by T) so that its probability underflows to 0 while
# every log-probability stays finite (-inf would make the KL's 0 * log 0 a NaN).
_MASK_OFFSET = 1000.0

class Prediction(NamedTuple):
    logits: torch.Tensor  # (B, K)


class SingleModalityClassifier(nn.Module):
    """Encoder + Linear(512, K) on one modality. Shape: (B, *input_shape) -> logits (B, K)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, encoder: str):
        super().__init__()
        self.input_shape, self.encoder = tuple(input_shape), encoder
        self.feature_encoder = build_encoder(encoder, self.input_shape)
        self.classifier = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, x: torch.Tensor) -> Prediction:
        return Prediction(self.classifier(self.feature_encoder(x)))


class MultiModalTeacher(nn.Module):
    """One encoder per modality, features summed (late fusion), Linear(512, K).

    Shape: (B, *input_shapes[0]), (B, *input_shapes[1]) -> logits (B, K); both inputs of the same rows.
    """

    def __init__(self, input_shapes, num_classes: int, encoders):
        super().__init__()
        self.input_shapes, self.encoder_kinds = [tuple(s) for s in input_shapes], list(encoders)
        self.encoders = nn.ModuleList(
            [build_encoder(kind, tuple(shape)) for shape, kind in zip(input_shapes, encoders)])
        self.classifier = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, x_first: torch.Tensor, x_second: torch.Tensor) -> Prediction:
        features = self.encoders[0](x_first) + self.encoders[1](x_second)  # (B, 512)
        return Prediction(self.classifier(features))


# ----------------------------------------------------------------------------- losses
def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float = TEMPERATURE) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) * T^2, averaged over the batch.

    The T^2 keeps the gradient's scale independent of T (Hinton et al.). Shapes: (B, K), (B, K) -> scalar.
    """
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature ** 2


def dkd_losses(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
               temperature: float = TEMPERATURE) -> dict[str, torch.Tensor]:
    """The two unweighted terms of decoupled knowledge distillation, each times T^2, batch means.

    tckd: binary KL between teacher and student of (p_target, 1 - p_target) at temperature T.
    nckd: KL between teacher and student distributions over the non-target classes only.

    Shapes: (B, K), (B, K), (B,) int64 -> {"tckd": scalar, "nckd": scalar}.
    """
    target = F.one_hot(labels, student_logits.shape[1]).bool()  # (B, K)

    def binary_log_probabilities(logits):
        scaled = logits.float() / temperature
        log_all = torch.logsumexp(scaled, dim=1)
        # log p_target and log(1 - p_target) = logsumexp over the other classes - logsumexp over all:
        # exact even when p_target rounds to 1
        log_target = scaled.masked_select(target) - log_all
        log_rest = torch.logsumexp(scaled.masked_fill(target, float("-inf")), dim=1) - log_all
        return torch.stack([log_target, log_rest], dim=1)  # (B, 2)

    def non_target_log_probabilities(logits):
        return F.log_softmax(logits.float() / temperature - _MASK_OFFSET * target, dim=1)  # (B, K)

    tckd = F.kl_div(binary_log_probabilities(student_logits), binary_log_probabilities(teacher_logits),
                    reduction="batchmean", log_target=True)
    nckd = F.kl_div(non_target_log_probabilities(student_logits), non_target_log_probabilities(teacher_logits),
                    reduction="batchmean", log_target=True)
    return {"tckd": tckd * temperature ** 2, "nckd": nckd * temperature ** 2}
