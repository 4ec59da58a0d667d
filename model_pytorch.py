"""The DisCoM-KD model under the name the original layout gives it: encoders, the three feature parts, gradient
reversal, the heads and the five loss terms.

The code lives in `discomkd/models/discomkd.py` (read it there); this file hands its names on for scripts written
against the published layout, e.g. `from model_pytorch import DisCoMKD, discomkd_losses`. Nothing in the package
imports it, and it is not installed: `pip install .` installs the package `discomkd` alone.
"""
from discomkd.models.discomkd import (
    DISCRIMINATORS,
    ENCODERS,
    FEATURE_DIM,
    GRL_SCHEDULES,
    LOSS_TERMS,
    PART_DIM,
    TASK_FEATURES,
    BranchOutput,
    DisCoMKD,
    Features,
    GradientReverseFunction,
    ModalityBranch,
    build_encoder,
    default_encoder_for,
    discomkd_losses,
    gradient_reverse,
    grl_coefficient_at,
)

__all__ = ["DISCRIMINATORS", "ENCODERS", "FEATURE_DIM", "GRL_SCHEDULES", "LOSS_TERMS", "PART_DIM", "TASK_FEATURES",
           "BranchOutput", "DisCoMKD", "Features", "GradientReverseFunction", "ModalityBranch", "build_encoder",
           "default_encoder_for", "discomkd_losses", "gradient_reverse", "grl_coefficient_at"]
