"""The training engine's parts: a method's model and data on the device (`build_setup`), one
epoch of training (`train_one_epoch`: batches, augmentation, the possibly compiled step, loss sums
read once per epoch), and evaluation (`evaluate`, `predict`, and the end-of-run invariance probe of
the best checkpoints). `functions.fit` runs them, epoch by epoch, for every method of
`methods.METHODS`. This module knows no command line.
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
from sklearn.metrics import accuracy_score, f1_score

from discomkd import compiling
from discomkd.augment import AUGMENTATIONS, augment, default_augmentation
from discomkd.batches import Prefetcher, RowSource, epoch_positions
from discomkd.config import Config, resolve_precision
from discomkd.data import DataFolder, Modality
from discomkd.errors import OptionError
from discomkd.inference import autocast_context, class_probabilities, run_in_batches, source_batches
from discomkd.methods import FUSED, METHODS, MethodSpec, ModelShape, build_model, method_spec
from discomkd.probes import cross_modal_transfer, modality_probe, probe_rows
from discomkd.run_files import checkpoint_path, load_classifier

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- training
def classification_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    return {
        "weighted_f1": float(f1_score(labels, predictions, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(labels, predictions)),
    }


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
    step_modalities: tuple[int, ...]  # the modalities a training step step_modalities
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


@dataclass
class EpochProgress:
    """Where an epoch stands: its shuffles, the next step to run, and the loss sums so far (on the
    device). Saved in the resumable state, so an interrupted epoch resumes at its next step."""

    bounds: list[tuple[int, int]]
    positions: list[torch.Tensor]  # per modality read, (n,) positions into its training rows
    step: int
    sums: torch.Tensor  # (len(terms) + 1,) raw terms then the weighted total

    @property
    def finished(self) -> bool:
        return self.step >= len(self.bounds)


def start_epoch(setup: TrainingSetup) -> EpochProgress:
    """The epoch's shuffles: one per modality read, or one shared when the method reads paired rows."""
    shared = setup.spec.paired or len(setup.step_modalities) == 1
    sizes = (len(setup.train_positions[setup.step_modalities[0]]),) if shared else \
        tuple(len(setup.train_positions[m]) for m in setup.step_modalities)
    bounds, positions = epoch_positions(sizes, setup.config.batch_size, setup.generator)
    if shared:
        positions = positions * len(setup.step_modalities)
    # one copy per epoch: a pageable host-to-device copy per step would synchronise every step
    positions = [p.to(setup.sources[m].index_device) for p, m in zip(positions, setup.step_modalities)]
    return EpochProgress(bounds, positions, 0, torch.zeros(len(setup.spec.terms) + 1, device=setup.device))


def train_one_epoch(setup: TrainingSetup, epoch: int, progress: EpochProgress | None = None,
                    should_stop=None, on_step=None) -> dict[str, float] | None:
    """Trains epoch `epoch` (1-based) over the training rows once, from `progress.step` on.

    Returns the epoch's mean raw loss terms, the weighted total and `finite_weights` (1.0 or 0.0),
    read from the device once, at the end; or None when `should_stop()` turned true, after finishing
    the step in flight (`progress` then says where to resume). `on_step(step, steps)`, if given, is
    called after each step (it must not read the device).
    """
    model, optimizer, step_modalities = setup.model, setup.optimizer, setup.step_modalities
    model.train()
    progress = progress or start_epoch(setup)
    bounds, first_step = progress.bounds, progress.step
    weights = setup.spec.weights(setup.config, epoch)
    weights = torch.tensor([weights[k] for k in setup.spec.terms], dtype=torch.float32)  # (T,)
    # non_blocking: the copy from host memory does not wait for the work already queued on the device
    weights = weights.to(setup.device, non_blocking=True)
    # each read modality's stored rows and their labels in this epoch's order, gathered once per epoch, so
    # that a step's batch is one index_select of the data (its labels are a slice)
    stored = [setup.train_positions[m][p] for m, p in zip(step_modalities, progress.positions)]
    epoch_labels = [setup.labels[m][rows] for m, rows in zip(step_modalities, stored)]

    def fetch(i):
        """The i-th batch of the steps left, [(x, y)] per read modality (no randomness, so it may run in
        the prefetch thread)."""
        start, end = bounds[first_step + i]
        return [(setup.sources[m].gather(rows[start:end]), y[start:end].to(setup.device, non_blocking=True))
                for m, rows, y in zip(step_modalities, stored, epoch_labels)]

    streamed = not all(setup.sources[m].resident for m in step_modalities)
    # a tensor updated in place, so that a compiled step reads each new value without a new trace
    training_progress = torch.zeros((), device=setup.device)
    for batch in Prefetcher(fetch, len(bounds) - first_step, enabled=streamed):
        # augmentation draws random numbers, so it runs here, in order, never in the prefetch thread
        inputs = {m: augment(x, setup.augmentations[m]) for m, (x, _) in zip(step_modalities, batch)}
        labels = {m: y for m, (_, y) in zip(step_modalities, batch)}
        training_progress.fill_((epoch - 1 + progress.step / len(bounds)) / setup.config.epochs)
        record = forward_backward(setup, inputs, labels, weights, training_progress)
        optimizer.step()
        progress.sums += record
        progress.step += 1
        if on_step is not None:
            on_step(progress.step, len(bounds))
        if should_stop is not None and should_stop() and not progress.finished:
            return None
    values = torch.cat([progress.sums / len(bounds), setup.finite_weights().float().view(1)])
    values = values.tolist()  # the epoch's one host-device synchronisation
    return dict(zip(setup.spec.terms + ("total", "finite_weights"), values))


def forward_backward(setup: TrainingSetup, inputs: dict, labels: dict, weights: torch.Tensor,
                     training_progress: torch.Tensor) -> torch.Tensor:
    """One step up to the optimizer: zeroes the gradients, computes the loss terms and their weighted
    total (`TrainingSetup.step_losses`, compiled when compiling), and back-propagates. Returns the step's
    detached (len(terms) + 1,) record: the raw terms, then the total.

    The first `compiling.GUARDED_CALLS` calls of the compiled step for each batch shape (torch.compile
    traces at the first, CUDA graphs warm up and record at the next two) are guarded: on an error the
    step is undone (batch-norm statistics, random states) and run eager, and the run stays eager, with
    one warning and the reason recorded (`compile_error`); the results are those of --compile no. At any
    later call, dynamo's recompile limit (raised before the step runs anything) falls back the same way;
    any other error propagates.
    """
    if setup.compiled_step is None:
        return _forward_backward(setup, setup.step_losses, inputs, labels, weights, training_progress)
    shapes = tuple(tuple(x.shape) for x in inputs.values())
    calls = setup.compiled_calls.get(shapes, 0)
    setup.compiled_calls[shapes] = calls + 1
    saved = _step_state(setup) if calls < compiling.GUARDED_CALLS else None
    try:
        return _forward_backward(setup, setup.compiled_step, inputs, labels, weights, training_progress)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as error:  # noqa: BLE001 (dynamo, inductor, triton and CUDA graph errors share no base class)
        if saved is None and not compiling.is_recompile_limit(error):
            raise
        if saved is not None:
            _restore_step_state(setup, saved)
        reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:300]}".rstrip(": ")
        setup.compiled_step, setup.compile_error = None, reason
        logger.warning(f"torch.compile failed ({reason}); training goes on eager, as with --compile no")
        return _forward_backward(setup, setup.step_losses, inputs, labels, weights, training_progress)


def _forward_backward(setup: TrainingSetup, step_losses, inputs: dict, labels: dict, weights: torch.Tensor,
                      training_progress: torch.Tensor) -> torch.Tensor:
    setup.optimizer.zero_grad(set_to_none=True)
    total, record = step_losses(inputs, labels, training_progress, weights)
    total.backward()
    return record


def compile_report(setup: TrainingSetup) -> dict:
    """What a run's results say of its compiled step: {"compiled": whether the step is (still) compiled,
    "compile_error": why it fell back to eager (only when it did), "compile": what the compiler did for
    this setup (only when it compiled): graphs, graph breaks, recompiles (graphs beyond one per batch
    shape), graphs left out of CUDA graphs, and the batch shapes (rows per step) of the compiled calls}."""
    report = {"compiled": setup.compiled_step is not None}
    if setup.compile_error:
        report["compile_error"] = setup.compile_error
    if setup.compiler_counts:
        now = compiling.compiler_counts()
        counts = {k: now[k] - setup.compiler_counts[k] for k in now}
        report["compile"] = {"graphs": counts["graphs"], "graph_breaks": counts["graph_breaks"],
                             "recompiles": max(0, counts["graphs"] - len(setup.compiled_calls)),
                             "cudagraph_skips": counts["cudagraph_skips"],
                             "batch_rows": sorted({shapes[0][0] for shapes in setup.compiled_calls}, reverse=True)}
    return report


def _step_state(setup: TrainingSetup) -> dict:
    """What a forward pass changes besides the gradients: the model's buffers and the random states."""
    return {"buffers": [b.clone() for b in setup.model.buffers()], "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(setup.device) if setup.device.type == "cuda" else None}


def _restore_step_state(setup: TrainingSetup, saved: dict) -> None:
    with torch.no_grad():
        for buffer, value in zip(setup.model.buffers(), saved["buffers"]):
            buffer.copy_(value)
    torch.set_rng_state(saved["rng"])
    if saved["cuda_rng"] is not None:
        torch.cuda.set_rng_state(saved["cuda_rng"], setup.device)


def predict(classifier: Classifier, sources: dict[int, RowSource], rows: np.ndarray, batch_size: int,
            precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (n, K) and predicted classes (0..K-1) of the user's rows `rows`.

    The probabilities may hold NaN when the model does; callers check (`evaluate` does).
    """
    probabilities = run_in_batches(classifier.module, source_batches(sources, classifier.input_modalities, rows, batch_size),
                                   class_probabilities, precision)["probabilities"]
    return probabilities, probabilities.argmax(axis=1)


def evaluation_rows(data: DataFolder, classifier: Classifier, split: str) -> np.ndarray:
    """Valid and test rows are shared by both modalities (data.py reads one file of each)."""
    return data.modalities[0 if classifier.modality is None else classifier.modality].splits[split]


def evaluate(setup: TrainingSetup, data: DataFolder, splits=("valid", "test"), classifiers=None) -> dict[str, dict]:
    """Metrics of each classifier (all, or those in `classifiers`) on each split, over the whole split.

    Returns:
        {column: {split: {"weighted_f1", "macro_f1", "accuracy"}, "predictions": {split: (n,) classes}}};
        a classifier whose outputs are not finite gets {"finite": False} instead.
    """
    results = {}  # each classifier is evaluated in eval mode, its training mode restored (run_in_batches)
    for classifier in classifiers or setup.classifiers:
        result = {"predictions": {}}
        for split in splits:
            rows = evaluation_rows(data, classifier, split)
            probabilities, predicted = predict(classifier, setup.sources, rows, setup.config.eval_batch_size,
                                               setup.precision)
            if not np.isfinite(probabilities).all():
                result = {"finite": False}
                break
            result[split] = classification_metrics(data.labels[rows], predicted)
            result["predictions"][split] = predicted
        results[classifier.column] = result
    return results


@torch.inference_mode()
def invariance_measures(setup: TrainingSetup, data: DataFolder, output: str) -> dict:
    """The end-of-run measures of the invariant parts that each modality's best checkpoint gives:
    {"invariance_probe": how well a logistic regression tells the modality from them on the validation
    rows (both modalities pooled; probes.modality_probe), "cross_modal_transfer": how well a logistic
    regression fitted on one modality's training rows classifies the other's validation rows, both ways
    (probes.cross_modal_transfer)}; both None when a checkpoint is missing. At most
    probes.PROBE_ROWS_PER_MODALITY rows of each split and modality, drawn with the run's seed; each
    checkpoint is read once."""
    paths = [checkpoint_path(output, c.column) for c in setup.classifiers]
    if not all(os.path.isfile(path) for path in paths):
        return {"invariance_probe": None, "cross_modal_transfer": None}
    seed = setup.config.seed
    valid_rows = probe_rows(evaluation_rows(data, setup.classifiers[0], "valid"), seed)
    valid, train = [], []  # per modality, (invariant part (n, 256), classes (n,)) of its rows
    for classifier, path in zip(setup.classifiers, paths):
        branch, _ = load_classifier(path, setup.device)
        train_rows = probe_rows(data.modalities[classifier.modality].splits["train"], seed)
        for parts, rows in ((valid, valid_rows), (train, train_rows)):
            parts.append((_invariant_part(setup, classifier, branch, rows), data.labels[rows]))
    prefixes = [data.modalities[c.modality].prefix for c in setup.classifiers]
    where = {"part": "invariant", "checkpoints": "each modality's best epoch"}
    return {"invariance_probe": {"split": "valid", **where, **modality_probe([p for p, _ in valid], seed)},
            "cross_modal_transfer": {"split": {"fitted": "train", "scored": "valid"}, **where,
                                     **cross_modal_transfer(train, valid, prefixes, seed)}}


def _invariant_part(setup: TrainingSetup, classifier: Classifier, branch: torch.nn.Module,
                    rows: np.ndarray) -> np.ndarray:
    """The invariant part (n, 256) that `branch`, a checkpoint of `classifier`, gives of the user's rows `rows`."""
    batches = source_batches(setup.sources, classifier.input_modalities, rows, setup.config.eval_batch_size)
    return run_in_batches(branch, batches, lambda output: {"invariant": output.invariant.float()},
                          setup.precision)["invariant"]


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
        paired = np.intersect1d(data.modalities[0].splits["train"], data.modalities[1].splits["train"])
        return {m: paired for m in step_modalities}
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
