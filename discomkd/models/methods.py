"""Every neural method the training loop runs, each a small spec in one table, `METHODS`.

A method says how to build its model, which modalities a training step reads (and whether the two
are the same rows), a pure function returning its named, unweighted loss terms, their weights, and
the classifiers it yields. The training loop (`training.loop.fit`) does the rest identically for all: batching,
augmentation, the compiled step, loss sums read once per epoch, stop requests, non-finite checks,
best-on-validation selection per classifier and checkpoints. Adding a method touches this file only.

This module knows only torch and the models: no files, command lines or metrics.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from discomkd.models.alignment import NO_ALIGNMENT, alignment_term
from discomkd.models.baselines import (
    DKD_WARMUP_EPOCHS,
    MultiModalTeacher,
    SingleModalityClassifier,
    dkd_losses,
    kd_loss,
)
from discomkd.models.discomkd import (
    LOSS_TERMS,
    TASK_FEATURES,
    DisCoMKD,
    ModalityBranch,
    discomkd_losses,
    grl_coefficient_at,
)

FUSED = "fused"  # the column of a classifier that reads both modalities (the teacher)
# The settings each family of methods reads alone (config fields): DisCoM-KD's and its variants', kd's, dkd's.
DISCOMKD_SETTINGS = ("weight_cl", "weight_aux", "weight_mod", "weight_adv", "weight_perp", "grl_coefficient",
                     "grl_schedule", "grl_warmup", "discriminator", "discriminator_lr_scale", "align", "align_weight",
                     "align_per_class", "legacy_modality_targets")
KD_SETTINGS = ("kd_temperature", "kd_weight")
DKD_SETTINGS = ("dkd_alpha", "dkd_beta", "dkd_temperature")
DML_SETTINGS = ("dml_temperature", "dml_weight")
ALIGN_TERM = "align"  # the loss term of --align, after DisCoM-KD's five


@dataclass(frozen=True)
class ModelShape:
    """What every model is built from: the per-sample shape and encoder of each modality, K classes,
    and DisCoM-KD's modality discriminator kind (a key of discomkd.DISCRIMINATORS)."""

    input_shapes: tuple[tuple[int, ...], tuple[int, ...]]
    encoders: tuple[str, str]
    num_classes: int
    discriminator: str = "linear"


class DistilledStudent(nn.Module):
    """A single-modality student and the frozen multi-modal teacher it learns from (kd, dkd).

    The teacher stays in eval mode and out of the optimizer (`requires_grad` off) whatever mode the
    module is put in; only the student is a classifier of the method.
    """

    def __init__(self, student: SingleModalityClassifier, teacher: MultiModalTeacher, modality: int):
        super().__init__()
        self.student, self.modality = student, modality
        self.teacher = teacher.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self


@dataclass(frozen=True)
class MethodSpec:
    """One method, as the training loop sees it.

    Attributes:
        description: one line for tables and --help.
        terms: names of the loss terms `losses` returns, in order (`method_spec` adds ALIGN_TERM under --align).
        build: (shape, the modality a per-modality model trains on, or None, teacher or None) -> the model to train.
        losses: (model, inputs {modality: (B, ...)}, labels {modality: (B,)}, config, progress) -> {term:
            scalar}, unweighted; run under autocast by the training step. `progress` is the training progress at
            this step, a 0-d float32 tensor on the device in [0, 1) (a tensor, so that a compiled step
            reads a new value without being traced again); None outside the training loop.
        weights: (config, epoch 1-based) -> {term: weight}; the training step applies them, in one place
            (`setup.TrainingSetup.step_losses`).
        classifiers: (model, modality) -> ((modality it classifies or None for fused, module), ...); each
            module's forward reads the inputs of that modality (both for fused) and returns `.logits`.
        per_modality: one model per modality (modality 0, then 1) instead of one for both.
        reads_both: a step reads both modalities (else only its own modality).
        paired: the two modalities of a step are the same rows (needs rows in both training sets).
        needs_teacher: the model is built around a trained teacher (config.teacher, a checkpoint).
        overrides: config fields this method sets (e.g. the published modality targets).
        parameter_groups: (model, config) -> Adam parameter groups (dicts with "params" and maybe "lr").
        invariant_parts: its classifiers are `ModalityBranch`es with an invariant part, so the training loop
            probes that part for the modality at the end of a run (probes.py).
        compared_by_default: compare.py runs it when --methods is not given.
        own_settings: the config fields this method reads and no method of another family does (DisCoM-KD's
            loss weights, kd's temperature, ...): a settings file of another method is told apart by them.
    """

    description: str
    terms: tuple[str, ...]
    build: Callable
    losses: Callable
    weights: Callable
    classifiers: Callable
    per_modality: bool = False
    reads_both: bool = True
    paired: bool = False
    needs_teacher: bool = False
    overrides: dict = field(default_factory=dict)
    parameter_groups: Callable = lambda model, config: [{"params": [p for p in model.parameters() if p.requires_grad]}]
    invariant_parts: bool = False
    compared_by_default: bool = True
    own_settings: tuple[str, ...] = ()

    def step_modalities(self, modality: int | None) -> tuple[int, ...]:
        """The modalities a training step of this method reads."""
        return (0, 1) if self.reads_both else (modality,)


# ----------------------------------------------------------------------------- DisCoM-KD
def _discomkd_build(shape: ModelShape, modality, teacher) -> DisCoMKD:
    return DisCoMKD(shape.input_shapes, shape.num_classes, shape.encoders, shape.discriminator)


def _discomkd_losses(model: DisCoMKD, inputs, labels, config, progress=None) -> dict[str, torch.Tensor]:
    """The five DisCoM-KD terms, and with --align the alignment of the two invariant parts (alignment.py)."""
    coefficient = grl_coefficient_at(config.grl_schedule, config.grl_coefficient, progress, config.grl_warmup)
    first, second = model(inputs[0], inputs[1], coefficient)
    terms = discomkd_losses(first, second, labels[0], labels[1], config.legacy_modality_targets)
    if config.align != NO_ALIGNMENT:  # a setting, not data: a compiled step holds one branch or the other
        terms[ALIGN_TERM] = alignment_term(config.align, config.align_per_class, first.invariant, second.invariant,
                                           labels[0], labels[1], num_classes=first.logits.shape[1])
    return terms


def _discomkd_weights(config, epoch: int) -> dict[str, float]:
    """The five terms' weights, and --align-weight when --align adds the alignment term."""
    weights = {term: float(getattr(config, f"weight_{term}")) for term in LOSS_TERMS}
    if config.align != NO_ALIGNMENT:
        weights[ALIGN_TERM] = float(config.align_weight)
    return weights


def _aligned_weights(config, epoch: int) -> dict[str, float]:
    """A method aligning by its overrides has the alignment term whatever config it is shown."""
    return {**_discomkd_weights(config, epoch), ALIGN_TERM: float(config.align_weight)}


def _discomkd_classifiers(model: DisCoMKD, modality) -> tuple:
    return ((0, model.branches[0]), (1, model.branches[1]))


def _discomkd_parameter_groups(model: DisCoMKD, config) -> list[dict]:
    """One group, as the paper; with --discriminator-lr-scale k != 1 the discriminator gets its own
    group at k times the learning rate (a faster discriminator with the one optimizer step per batch,
    rather than k discriminator steps per encoder step, which would need a second optimizer)."""
    if config.discriminator_lr_scale == 1:
        return [{"params": list(model.parameters())}]
    discriminator = {id(p) for p in model.discriminator.parameters()}
    return [{"params": [p for p in model.parameters() if id(p) not in discriminator]},
            {"params": list(model.discriminator.parameters()),
             "lr": config.learning_rate * config.discriminator_lr_scale}]


def _discomkd_invariant_build(shape: ModelShape, modality, teacher) -> DisCoMKD:
    return DisCoMKD(shape.input_shapes, shape.num_classes, shape.encoders, shape.discriminator,
                    task_features="invariant")


def _discomkd(description: str, compared_by_default: bool = True, build=_discomkd_build, **overrides) -> MethodSpec:
    # a method that aligns by its overrides lists the alignment term itself, so its spec says so without a config
    aligned = overrides.get("align", NO_ALIGNMENT) != NO_ALIGNMENT
    terms, weights = (LOSS_TERMS + (ALIGN_TERM,), _aligned_weights) if aligned else (LOSS_TERMS, _discomkd_weights)
    return MethodSpec(description, terms, build, _discomkd_losses, weights, _discomkd_classifiers,
                      overrides=overrides, parameter_groups=_discomkd_parameter_groups, invariant_parts=True,
                      compared_by_default=compared_by_default, own_settings=DISCOMKD_SETTINGS)


# The discriminator's learning rate in the fast-discriminator variants: 10x, the usual order of
# magnitude for a critic that must keep up with the encoders (one optimizer step per batch).
FAST_DISCRIMINATOR_LR_SCALE = 10.0


# ----------------------------------------------------------------------------- baselines
def _mono_build(shape: ModelShape, modality: int, teacher) -> SingleModalityClassifier:
    return SingleModalityClassifier(shape.input_shapes[modality], shape.num_classes, shape.encoders[modality])


def _mono_losses(model: SingleModalityClassifier, inputs, labels, config, progress=None) -> dict[str, torch.Tensor]:
    (modality, x), = inputs.items()
    return {"ce": F.cross_entropy(model(x).logits.float(), labels[modality])}


def _teacher_build(shape: ModelShape, modality, teacher) -> MultiModalTeacher:
    return MultiModalTeacher(shape.input_shapes, shape.num_classes, shape.encoders)


def _teacher_losses(model: MultiModalTeacher, inputs, labels, config, progress=None) -> dict[str, torch.Tensor]:
    return {"ce": F.cross_entropy(model(inputs[0], inputs[1]).logits.float(), labels[0])}


def _student_build(shape: ModelShape, modality: int, teacher: MultiModalTeacher) -> DistilledStudent:
    # the student first: its weights then come from the freshly seeded generator, as mono's do
    return DistilledStudent(_mono_build(shape, modality, None), teacher, modality)


def _distillation_inputs(model: DistilledStudent, inputs, labels):
    """(student logits, teacher logits, labels): the student reads its modality of the same rows the
    teacher reads both modalities of (augmented alike)."""
    modality = model.modality
    with torch.no_grad():
        teacher_logits = model.teacher(inputs[0], inputs[1]).logits
    return model.student(inputs[modality]).logits, teacher_logits, labels[modality]


def _kd_losses(model: DistilledStudent, inputs, labels, config, progress=None) -> dict[str, torch.Tensor]:
    student, teacher, y = _distillation_inputs(model, inputs, labels)
    return {"ce": F.cross_entropy(student.float(), y), "kd": kd_loss(student, teacher, config.kd_temperature)}


def _dkd_losses(model: DistilledStudent, inputs, labels, config, progress=None) -> dict[str, torch.Tensor]:
    student, teacher, y = _distillation_inputs(model, inputs, labels)
    return {"ce": F.cross_entropy(student.float(), y), **dkd_losses(student, teacher, y, config.dkd_temperature)}


def _dkd_weights(config, epoch: int) -> dict[str, float]:
    """DKD's part warmed up linearly over its first epochs (Zhao et al.)."""
    warmup = min(epoch / DKD_WARMUP_EPOCHS, 1.0)
    return {"ce": 1.0, "tckd": config.dkd_alpha * warmup, "nckd": config.dkd_beta * warmup}


def _cross_entropy_only(config, epoch: int) -> dict[str, float]:
    return {"ce": 1.0}


class MutualPair(nn.Module):
    """Deep mutual learning's two single-modality networks, trained together (dml): each a mono classifier."""

    def __init__(self, first: SingleModalityClassifier, second: SingleModalityClassifier):
        super().__init__()
        self.networks = nn.ModuleList([first, second])


def _dml_build(shape: ModelShape, modality, teacher) -> MutualPair:
    return MutualPair(*(_mono_build(shape, m, None) for m in (0, 1)))


def _dml_losses(model: MutualPair, inputs, labels, config, progress=None) -> dict[str, torch.Tensor]:
    """Each network's cross-entropy, and each one's KL divergence from the other's softened predictions on the
    same rows, the other's held fixed (Zhang et al., CVPR 2018: each network's update treats its peer's output as
    a target; here both update in one step)."""
    first, second = (network(inputs[m]).logits for m, network in enumerate(model.networks))
    ce = F.cross_entropy(first.float(), labels[0]) + F.cross_entropy(second.float(), labels[1])
    mutual = (kd_loss(first, second.detach(), config.dml_temperature)
              + kd_loss(second, first.detach(), config.dml_temperature))
    return {"ce": ce, "mutual": mutual}


METHODS: dict[str, MethodSpec] = {  # in the order the comparison lists them
    "mono": MethodSpec("each modality alone: its encoder + Linear(512, K)", ("ce",), _mono_build, _mono_losses,
                       _cross_entropy_only, lambda model, modality: ((modality, model),),
                       per_modality=True, reads_both=False),
    "teacher": MethodSpec("one encoder per modality, features summed, Linear(512, K); reads both at test time",
                          ("ce",), _teacher_build, _teacher_losses, _cross_entropy_only,
                          lambda model, modality: ((None, model),), paired=True),
    "kd": MethodSpec("single-modality student distilled from the teacher (Hinton et al.)", ("ce", "kd"),
                     _student_build, _kd_losses, lambda config, epoch: {"ce": 1.0, "kd": config.kd_weight},
                     lambda model, modality: ((modality, model.student),), per_modality=True, paired=True,
                     needs_teacher=True, own_settings=KD_SETTINGS),
    "dkd": MethodSpec("decoupled KD (Zhao et al., CVPR 2022)", ("ce", "tckd", "nckd"), _student_build, _dkd_losses,
                      _dkd_weights, lambda model, modality: ((modality, model.student),), per_modality=True,
                      paired=True, needs_teacher=True, own_settings=DKD_SETTINGS),
    "dml": MethodSpec("deep mutual learning (Zhang et al., CVPR 2018): both single-modality networks trained together, "
                      "each matching the other's softened predictions; no teacher", ("ce", "mutual"), _dml_build,
                      _dml_losses, lambda config, epoch: {"ce": 1.0, "mutual": config.dml_weight},
                      lambda model, modality: ((0, model.networks[0]), (1, model.networks[1])), paired=True,
                      own_settings=DML_SETTINGS),
    "discomkd": _discomkd("DisCoM-KD: both single-modality classifiers trained at once"),
    "discomkd-legacy": _discomkd("DisCoM-KD with the published code's modality targets",
                                 legacy_modality_targets=True),
    # the remedies for a fooled discriminator, alone and together (docs/training.md: "Is the invariant
    # part invariant?"): methods of their own so that one comparison trains them on the same splits
    "discomkd-dann": _discomkd("DisCoM-KD, DANN schedule of the reversal coefficient", False, grl_schedule="dann"),
    "discomkd-mlp-disc": _discomkd("DisCoM-KD, one-hidden-layer discriminator", False, discriminator="mlp"),
    "discomkd-fast-disc": _discomkd("DisCoM-KD, discriminator learning rate x10", False,
                                    discriminator_lr_scale=FAST_DISCRIMINATOR_LR_SCALE),
    "discomkd-remedies": _discomkd("DisCoM-KD, DANN schedule + one-hidden-layer discriminator + its learning rate x10",
                                   False, grl_schedule="dann", discriminator="mlp",
                                   discriminator_lr_scale=FAST_DISCRIMINATOR_LR_SCALE),
    # the adversary kept, and the invariant parts also aligned without one (--align; docs/training.md: "Aligning
    # the invariant parts"), over each batch or class by class
    "discomkd-mmd": _discomkd("DisCoM-KD + multi-kernel MMD between the modalities' invariant parts (DAN)", False,
                              align="mmd"),
    "discomkd-coral": _discomkd("DisCoM-KD + CORAL (means and covariances) between the invariant parts", False,
                                align="coral"),
    "discomkd-mmd-per-class": _discomkd("DisCoM-KD + multi-kernel MMD between the invariant parts, class by class",
                                        False, align="mmd", align_per_class=True),
    "discomkd-coral-per-class": _discomkd("DisCoM-KD + CORAL between the invariant parts, class by class", False,
                                          align="coral", align_per_class=True),
}


# The paper's loss ablation: DisCoM-KD without one term (its weight 0), or with a task classifier reading
# the invariant part alone. Each differs from "discomkd" in that one thing only; compare.py's --ablation
# adds them to a comparison (they are not among its default methods).
ABLATIONS: dict[str, MethodSpec] = {
    **{f"discomkd-no-{term}": _discomkd(f"DisCoM-KD without L_{term}", False, **{f"weight_{term}": 0.0})
       for term in ("adv", "mod", "aux", "perp")},
    "discomkd-invariant-only": _discomkd("DisCoM-KD, task classifiers reading the invariant part alone", False,
                                         build=_discomkd_invariant_build),
}
METHODS.update(ABLATIONS)


def method_spec(config) -> MethodSpec:
    """The spec a run of `config.method` trains with (`config` with the method's overrides applied): its
    METHODS entry, whose terms gain ALIGN_TERM when `config.align` asks a method with invariant parts to
    align them (the methods that align by their overrides, `discomkd-mmd`..., list it already). Methods
    without invariant parts ignore --align, as they ignore the reversal's options."""
    spec = METHODS[config.method]
    if config.align == NO_ALIGNMENT or not spec.invariant_parts or ALIGN_TERM in spec.terms:
        return spec
    return dataclasses.replace(spec, terms=spec.terms + (ALIGN_TERM,))


def build_model(method: str, shape: ModelShape, modality: int | None = None,
                teacher: MultiModalTeacher | None = None) -> nn.Module:
    """The untrained model of `method`; `modality`: the modality index of a method that trains one model per
    modality."""
    return METHODS[method].build(shape, modality, teacher)


# ----------------------------------------------------------------------------- classifiers alone
# Every classifier a method yields is one of these kinds; a checkpoint names its kind and carries
# what rebuilding it needs (`classifier_description`), so prediction rebuilds it without the method.
CLASSIFIER_KINDS = {
    # task_features absent: a checkpoint written before the option, whose classifier read both parts
    "discomkd-branch": (ModalityBranch, lambda d: ModalityBranch(tuple(d["input_shape"]), d["num_classes"],
                                                                 d["encoder"], d.get("task_features",
                                                                                     TASK_FEATURES[0]))),
    "single": (SingleModalityClassifier, lambda d: SingleModalityClassifier(tuple(d["input_shape"]),
                                                                            d["num_classes"], d["encoder"])),
    "fused": (MultiModalTeacher, lambda d: MultiModalTeacher([tuple(s) for s in d["input_shapes"]], d["num_classes"],
                                                             d["encoders"])),
}


def classifier_description(module: nn.Module, shape: ModelShape, modality: int | None) -> dict:
    """The kind of a classifier module and the JSON-able fields that rebuild it (see CLASSIFIER_KINDS)."""
    kind = next(name for name, (cls, _) in CLASSIFIER_KINDS.items() if isinstance(module, cls))
    if modality is None:
        return {"kind": kind, "input_shapes": [list(s) for s in shape.input_shapes],
                "encoders": list(shape.encoders), "num_classes": shape.num_classes}
    description = {"kind": kind, "input_shape": list(shape.input_shapes[modality]),
                   "encoder": shape.encoders[modality], "num_classes": shape.num_classes}
    if isinstance(module, ModalityBranch):
        description["task_features"] = module.task_features
    return description


def build_classifier(description: dict) -> nn.Module:
    """An untrained classifier as `classifier_description` described it (KeyError: unknown fields)."""
    return CLASSIFIER_KINDS[description["kind"]][1](description)


def foreign_settings(method: str, names) -> dict[str, list[str]]:
    """Of the setting `names`, those that only methods of another family read, by one such method ({"discomkd":
    ["weight_aux", ...]}): what `method` would ignore in a settings file meant for another method."""
    own = set(METHODS[method].own_settings)
    foreign = {}
    for other, spec in METHODS.items():
        names_of_other = [n for n in names if n in spec.own_settings and n not in own]
        if names_of_other and not any(set(names_of_other) <= set(v) for v in foreign.values()):
            foreign[other] = names_of_other
    return foreign
