"""What a run trains with, built once: the method's model and optimizer, its data on the device
(resident when it fits, else streamed), each modality's augmentation, the classifiers it yields, and the
step's forward pass with the loss weights applied in one place (`TrainingSetup`, `build_setup`).
`epoch.train_one_epoch` trains it, `scores.evaluate` scores it, and `loop.fit` runs both epoch by
epoch for every method of `models.methods.METHODS`. This module knows no command line.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from discomkd.data.augment import AUGMENTATIONS, default_augmentation
from discomkd.data.batches import RowSource
from discomkd.data.folder import DataFolder, Modality
from discomkd.models.methods import FUSED, METHODS, MethodSpec, ModelShape, build_model, method_spec
from discomkd.runs.outputs import load_classifier
from discomkd.training import compiling
from discomkd.training.config import Config, resolve_precision
from discomkd.training.inference import autocast_context
from discomkd.utils.errors import OptionError

logger = logging.getLogger(__name__)


@dataclass
class Classifier:
    """One classifier a method yields: selected on validation, checkpointed as best_<column>.pt."""

    column: str  # the modality's prefix, or FUSED for a classifier reading both
    modality: int | None  # the modality it classifies alone; None: it reads both
    module: torch.nn.Module  # forward(*inputs) -> .logits (B, K)

    @property
    def input_modalities(self) -> tuple[int, ...]:
        """The modalities the classifier takes as input."""
        return (0, 1) if self.modality is None else (self.modality,)


@dataclass
class TrainingSetup:
    """The training state of a run: the method, its model and optimizer, the data sources, the settings."""

    spec: MethodSpec
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step_modalities: tuple[int, ...]  # the modalities a training step reads
    sources: dict[int, RowSource]  # every modality the run reads or evaluates
    train_positions: dict[int, torch.Tensor]  # per modality read, its training rows' positions in its source
    labels: dict[int, torch.Tensor]  # per source, the label of each stored row (index device)
    augmentations: dict[int, str]
    classifiers: list[Classifier]
    shape: ModelShape
    config: Config
    device: torch.device
    precision: str
    generator: torch.Generator  # CPU generator for the epoch shuffles
    compiled_step: object = None  # `step_losses` through torch.compile (compiling.compile_step), when compiling
    compile_error: str | None = None  # why the compiled step failed, when it did (the run went on eager)
    compiled_calls: dict = dataclasses.field(default_factory=dict)  # batch shapes -> calls of the compiled step
    compiler_counts: dict = dataclasses.field(default_factory=dict)  # compiling.compiler_counts() when compiled
    warnings: list = dataclasses.field(default_factory=list)  # settings resolved otherwise than asked

    def step_losses(self, inputs: dict, labels: dict, progress: torch.Tensor,
                    weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward pass of one step, the part that is compiled when compiling.

        Args:
            progress: the training progress in [0, 1), a 0-d tensor (see MethodSpec.losses).
            weights: (len(spec.terms),) float32, the terms' weights at this epoch (a tensor, so that a
                compiled step reads new values without being traced again).
        Returns:
            (total, record): the weighted total (0-d, to back-propagate) and, detached, the raw terms in
            `spec.terms` order followed by the total, (len(spec.terms) + 1,), what the epoch sums.
        """
        with autocast_context(self.device, self.precision):
            terms = self.spec.losses(self.model, inputs, labels, self.config, progress)
        raw = torch.stack([terms[k].float() for k in self.spec.terms])  # (T,)
        total = sum(weights[i] * raw[i] for i in range(len(self.spec.terms)))  # the one place weights apply
        return total, torch.cat([raw, total.view(1)]).detach()

    def finite_weights(self) -> torch.Tensor:
        """A 0-d bool tensor on the device: every floating weight and buffer is finite (no sync).

        In a fixed handful of multi-tensor operations whatever the number of tensors: x * 0 is 0 for a
        finite x and NaN for NaN and +-Inf, so the norms of the products are all 0 exactly when every
        value is finite (the values themselves are never summed, so no finite weight can overflow)."""
        tensors = [t for t in (*self.model.parameters(), *self.model.buffers()) if t.is_floating_point()]
        with torch.no_grad():
            return torch.stack(torch._foreach_norm(torch._foreach_mul(tensors, 0.0))).sum() == 0


def _resident_budget(device: torch.device) -> int:
    """Bytes of data allowed to live on the device: half the free GPU memory (the rest is for the
    model and activations), or a quarter of the free host memory on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    return 1 << 30


def resolve_augmentation(config: Config, modality: Modality, index: int) -> str:
    """The augmentation mode of a modality: its option, or the default for its sample rank."""
    rank = modality.rank + 1
    mode = getattr(config, ("augment_first", "augment_second")[index])
    mode = default_augmentation(modality.prefix, rank) if mode == "auto" else mode
    if mode not in AUGMENTATIONS[rank]:
        raise OptionError(f"--augment-{('first', 'second')[index]} {mode}: not available for {modality.prefix}'s "
                        f"samples of shape {modality.sample_shape}; expected one of {', '.join(AUGMENTATIONS[rank])}")
    return mode


def check_augmentations(config: Config, data: DataFolder) -> tuple[str, str]:
    """Both modalities' augmentation modes, each checked against its samples (`OptionError` otherwise): what
    every command asks before it writes anything."""
    first, second = (resolve_augmentation(config, modality, index) for index, modality in enumerate(data.modalities))
    return first, second


def build_sources(config: Config, data: DataFolder, device: torch.device, modalities=(0, 1)):
    """The rows of `modalities` (resident on the device when they fit) and their augmentation modes.

    Returns:
        (sources, labels, augmentations), dicts by modality: the `RowSource` of all rows of its
        splits, the label of each stored row (on the source's index device), the augmentation mode.
    """
    sources, labels, augmentations = {}, {}, {}
    budget = _resident_budget(device)
    for m in modalities:
        modality = data.modalities[m]
        augmentations[m] = resolve_augmentation(config, modality, m)
        rows = np.unique(np.concatenate(list(modality.splits.values())))
        values = len(rows) * math.prod(modality.sample_shape)
        resident, storage = config.data_on_device == "yes", torch.float32
        if config.data_on_device == "auto":
            if values * 4 <= budget:
                resident = True
            elif device.type == "cuda" and values * 2 <= budget:
                resident, storage = True, torch.bfloat16  # half precision is what makes it fit
        budget -= values * (4 if storage == torch.float32 else 2) if resident else 0
        sources[m] = RowSource(modality.array, rows, device, resident, storage)
        labels[m] = torch.from_numpy(data.labels[sources[m].rows]).to(sources[m].index_device)
    return sources, labels, augmentations


def method_modality(config: Config, data: DataFolder) -> int | None:
    """The modality a per-modality method trains (config.modality, a prefix), else None."""
    if not METHODS[config.method].per_modality:
        return None
    return [m.prefix for m in data.modalities].index(config.modality)


def training_rows(spec: MethodSpec, data: DataFolder, step_modalities: tuple[int, ...]) -> dict[int, np.ndarray]:
    """Each read modality's training rows; for paired methods the rows in both training sets, alike."""
    if spec.paired:
        return dict.fromkeys(step_modalities, data.paired_train_rows())
    return {m: data.modalities[m].splits["train"] for m in step_modalities}


def build_setup(config: Config, data: DataFolder, device: torch.device) -> TrainingSetup:
    """Everything a run trains with, built right after seeding so the weights depend on the seed only."""
    spec = method_spec(config)  # the method's terms, "align" among them with --align
    modality_index = method_modality(config, data)
    step_modalities = spec.step_modalities(modality_index)
    shape = ModelShape(tuple(m.sample_shape for m in data.modalities), tuple(m.encoder for m in data.modalities),
                       data.num_classes, config.discriminator)
    teacher = load_classifier(config.teacher)[0] if spec.needs_teacher else None
    model = build_model(config.method, shape, modality_index, teacher).to(device)
    classifiers = [Classifier(FUSED if m is None else data.modalities[m].prefix, m, module)
                   for m, module in spec.classifiers(model, modality_index)]
    used = sorted(set(step_modalities) | {m for c in classifiers for m in c.input_modalities})
    precision = resolve_precision(config.precision, device)
    warnings = [] if precision == config.precision or config.precision == "auto" else [
        f"--precision {config.precision}: {torch.cuda.get_device_name(device)} does not support it; training in "
        f"{precision}"]
    sources, labels, augmentations = build_sources(config, data, device, used)
    rows = training_rows(spec, data, step_modalities)
    train_positions = {m: sources[m].positions(rows[m]) for m in step_modalities}
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.Adam(spec.parameter_groups(model, config), lr=config.learning_rate,
                                 weight_decay=config.weight_decay, **fused)
    generator = torch.Generator().manual_seed(config.seed)
    setup = TrainingSetup(spec, model, optimizer, step_modalities, sources, train_positions, labels, augmentations, classifiers,
                      shape, config, device, precision, generator, warnings=warnings)
    if config.compile == "yes" or (config.compile == "auto" and device.type == "cuda"):
        setup.compiled_step = compiling.compile_step(setup.step_losses, device)
        setup.compiler_counts = compiling.compiler_counts()  # after the reset: counted from here
    return setup
