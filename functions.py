"""The training engine, evaluation and the run.

`run(config, directory, first_prefix, second_prefix)` is the whole job behind `main_DisCoM-KD.py`;
`fit(config, data, output)` is the one training loop, for DisCoM-KD and every neural baseline
(each method is a spec in `methods.py`). The settings are `configuration.Config`; the data folder is read
and checked by `data.py`, the files a run writes (results, checkpoints, resumable state) by
`outputs.py`, and the models and losses live in `model_pytorch.py` and `baselines.py`. This module
knows no command line.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from configuration import (EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_TRAINING_FAILED, Config, check_config, resolve_device,
                      resolve_precision, restore_rng, rng_state, seed_everything)
from data import (AUGMENTATIONS, DataError, DataFolder, Modality, Prefetcher, RowSource, augment,
                  default_augmentation, epoch_positions, load_data_folder, read_split_files)
from methods import FUSED, METHODS, MethodSpec, ModelShape, build_model, classifier_description
from outputs import (RESULTS_FILE, STATE_FILE, atomic_write, checkpoint_path, clear_run_outputs, load_classifier, load_state,
                     prepare_output, remove_temporaries, save_checkpoint, save_npy, save_state, write_json)


# ----------------------------------------------------------------------------- training
def classification_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    return {
        "weighted_f1": float(f1_score(labels, predictions, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(labels, predictions)),
    }


def autocast_context(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class Classifier:
    """One classifier a method yields: selected on validation, checkpointed as best_<column>.pt."""

    column: str  # the modality's prefix, or FUSED for a classifier reading both
    modality: int | None  # the modality it classifies alone; None: it reads both
    module: torch.nn.Module  # forward(*inputs) -> .logits (B, K)

    @property
    def reads(self) -> tuple[int, ...]:
        return (0, 1) if self.modality is None else (self.modality,)


@dataclass
class Trainer:
    """The training state of a run: the method, its model and optimizer, the data sources, the settings."""

    spec: MethodSpec
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    reads: tuple[int, ...]  # the modalities a training step reads
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
    compiled_terms: object = None  # `loss_terms` through torch.compile, when compiling

    def loss_terms(self, inputs: dict, labels: dict) -> torch.Tensor:
        """Forward pass of one step: the method's raw loss terms, stacked in `spec.terms` order."""
        with autocast_context(self.device, self.precision):
            terms = self.spec.losses(self.model, inputs, labels, self.config)
        return torch.stack([terms[k].float() for k in self.spec.terms])

    def batch(self, modality: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gathers a batch of training rows (no randomness, so it may run in the prefetch thread)."""
        source = self.sources[modality]
        stored = self.train_positions[modality][positions]
        return source.gather(stored), self.labels[modality][stored].to(self.device, non_blocking=True)

    def finite_weights(self) -> torch.Tensor:
        """A 0-d bool tensor on the device: every floating weight and buffer is finite (no sync)."""
        checks = [torch.isfinite(t).all() for t in self.model.state_dict().values() if t.is_floating_point()]
        return torch.stack(checks).all()


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


def start_epoch(trainer: Trainer) -> EpochProgress:
    """The epoch's shuffles: one per modality read, or one shared when the method reads paired rows."""
    shared = trainer.spec.paired or len(trainer.reads) == 1
    sizes = (len(trainer.train_positions[trainer.reads[0]]),) if shared else \
        tuple(len(trainer.train_positions[m]) for m in trainer.reads)
    bounds, positions = epoch_positions(sizes, trainer.config.batch_size, trainer.generator)
    if shared:
        positions = positions * len(trainer.reads)
    # one copy per epoch: a pageable host-to-device copy per step would synchronise every step
    positions = [p.to(trainer.sources[m].index_device) for p, m in zip(positions, trainer.reads)]
    return EpochProgress(bounds, positions, 0, torch.zeros(len(trainer.spec.terms) + 1, device=trainer.device))


def train_one_epoch(trainer: Trainer, epoch: int, progress: EpochProgress | None = None,
                    should_stop=None, on_step=None) -> dict[str, float] | None:
    """Trains epoch `epoch` (1-based) over the training rows once, from `progress.step` on.

    Returns the epoch's mean raw loss terms, the weighted total and `finite_weights` (1.0 or 0.0),
    read from the device once, at the end; or None when `should_stop()` turned true, after finishing
    the step in flight (`progress` then says where to resume). `on_step(step, steps)`, if given, is
    called after each step (it must not read the device).
    """
    model, optimizer, reads = trainer.model, trainer.optimizer, trainer.reads
    model.train()
    progress = progress or start_epoch(trainer)
    bounds, positions, first_step = progress.bounds, progress.positions, progress.step
    weights = trainer.spec.weights(trainer.config, epoch)

    def fetch(i):
        start, end = bounds[first_step + i]
        return [trainer.batch(m, p[start:end]) for m, p in zip(reads, positions)]

    streamed = not all(trainer.sources[m].resident for m in reads)
    loss_terms = trainer.compiled_terms or trainer.loss_terms
    for batch in Prefetcher(fetch, len(bounds) - first_step, enabled=streamed):
        # augmentation draws random numbers, so it runs here, in order, never in the prefetch thread
        inputs = {m: augment(x, trainer.augmentations[m]) for m, (x, _) in zip(reads, batch)}
        labels = {m: y for m, (_, y) in zip(reads, batch)}
        optimizer.zero_grad(set_to_none=True)
        terms = loss_terms(inputs, labels)
        total = sum(weights[k] * terms[i] for i, k in enumerate(trainer.spec.terms))  # the one place weights apply
        total.backward()
        optimizer.step()
        progress.sums += torch.cat([terms.detach(), total.detach().view(1)])
        progress.step += 1
        if on_step is not None:
            on_step(progress.step, len(bounds))
        if should_stop is not None and should_stop() and not progress.finished:
            return None
    values = torch.cat([progress.sums / len(bounds), trainer.finite_weights().float().view(1)])
    values = values.tolist()  # the epoch's one host-device synchronisation
    return dict(zip(trainer.spec.terms + ("total", "finite_weights"), values))


@torch.inference_mode()
def predict(classifier: Classifier, sources: dict[int, RowSource], rows: np.ndarray, batch_size: int,
            precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (n, K) and predicted classes (0..K-1) of the user's rows `rows`.

    The probabilities may hold NaN when the model does; callers check (`evaluate` does).
    """
    device = next(classifier.module.parameters()).device
    positions = [sources[m].positions(rows) for m in classifier.reads]
    probabilities = []
    for start in range(0, len(rows), batch_size):
        inputs = [sources[m].gather(p[start:start + batch_size]) for m, p in zip(classifier.reads, positions)]
        with autocast_context(device, precision):
            logits = classifier.module(*inputs).logits
        probabilities.append(torch.softmax(logits.float(), dim=1))
    probabilities = torch.cat(probabilities).cpu().numpy()
    return probabilities, probabilities.argmax(axis=1)


def evaluation_rows(data: DataFolder, classifier: Classifier, split: str) -> np.ndarray:
    """Valid and test rows are shared by both modalities (data.py reads one file of each)."""
    return data.modalities[0 if classifier.modality is None else classifier.modality].splits[split]


def evaluate(trainer: Trainer, data: DataFolder, splits=("valid", "test"), classifiers=None) -> dict[str, dict]:
    """Metrics of each classifier (all, or those in `classifiers`) on each split, over the whole split.

    Returns:
        {column: {split: {"weighted_f1", "macro_f1", "accuracy"}, "predictions": {split: (n,) classes}}};
        a classifier whose outputs are not finite gets {"finite": False} instead.
    """
    model = trainer.model
    was_training = model.training
    model.eval()
    results = {}
    for classifier in classifiers or trainer.classifiers:
        result = {"predictions": {}}
        for split in splits:
            rows = evaluation_rows(data, classifier, split)
            probabilities, predicted = predict(classifier, trainer.sources, rows, trainer.config.eval_batch_size,
                                               trainer.precision)
            if not np.isfinite(probabilities).all():
                result = {"finite": False}
                break
            result[split] = classification_metrics(data.labels[rows], predicted)
            result["predictions"][split] = predicted
        results[classifier.column] = result
    model.train(was_training)
    return results


def _resident_budget(device: torch.device) -> int:
    """Bytes of data allowed to live on the device: half the free GPU memory (the rest is for the
    model and activations), or a quarter of the free host memory on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    return 1 << 30


def resolve_augmentation(config: Config, modality: Modality, position: int) -> str:
    """The augmentation mode of a modality: its option, or the default for its sample rank."""
    rank = modality.rank + 1
    mode = getattr(config, ("augment_first", "augment_second")[position])
    mode = default_augmentation(modality.prefix, rank) if mode == "auto" else mode
    if mode not in AUGMENTATIONS[rank]:
        raise DataError(f"--augment-{('first', 'second')[position]} {mode}: not available for {modality.prefix}'s "
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


def method_target(config: Config, data: DataFolder) -> int | None:
    """The modality a per-modality method trains (config.modality, a prefix), else None."""
    if not METHODS[config.method].per_modality:
        return None
    return [m.prefix for m in data.modalities].index(config.modality)


def training_rows(spec: MethodSpec, data: DataFolder, reads: tuple[int, ...]) -> dict[int, np.ndarray]:
    """Each read modality's training rows; for paired methods the rows in both training sets, alike."""
    if spec.paired:
        paired = np.intersect1d(data.modalities[0].splits["train"], data.modalities[1].splits["train"])
        return {m: paired for m in reads}
    return {m: data.modalities[m].splits["train"] for m in reads}


def build_trainer(config: Config, data: DataFolder, device: torch.device) -> Trainer:
    """Everything a run trains with, built right after seeding so the weights depend on the seed only."""
    spec = METHODS[config.method]
    target = method_target(config, data)
    reads = spec.reads(target)
    shape = ModelShape(tuple(m.sample_shape for m in data.modalities), tuple(m.encoder for m in data.modalities),
                       data.num_classes)
    teacher = load_classifier(config.teacher)[0] if spec.needs_teacher else None
    model = build_model(config.method, shape, target, teacher).to(device)
    classifiers = [Classifier(FUSED if m is None else data.modalities[m].prefix, m, module)
                   for m, module in spec.classifiers(model, target)]
    used = sorted(set(reads) | {m for c in classifiers for m in c.reads})
    precision = resolve_precision(config.precision, device)
    sources, labels, augmentations = build_sources(config, data, device, used)
    rows = training_rows(spec, data, reads)
    train_positions = {m: sources[m].positions(rows[m]) for m in reads}
    fused = {"fused": True} if device.type == "cuda" else {}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=config.learning_rate, weight_decay=config.weight_decay, **fused)
    generator = torch.Generator().manual_seed(config.seed)
    trainer = Trainer(spec, model, optimizer, reads, sources, train_positions, labels, augmentations, classifiers,
                      shape, config, device, precision, generator)
    if config.compile == "yes" or (config.compile == "auto" and device.type == "cuda"):
        # CUDA graphs remove the per-kernel launch cost that bounds this step's speed at batch 128
        mode = "reduce-overhead" if device.type == "cuda" else None
        trainer.compiled_terms = torch.compile(trainer.loss_terms, mode=mode)
    return trainer


# ----------------------------------------------------------------------------- the run
def format_duration(seconds: float) -> str:
    """12.3s, 4m05s or 1h02m."""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def summary_table(final: dict) -> str:
    header = f"{'modality':<12} {'encoder':<9} {'best epoch':>10} {'valid wF1':>9} {'test wF1':>9} " \
             f"{'test mF1':>9} {'test acc':>9}"
    lines = [header, "-" * len(header)]
    for column, result in final.items():
        test = result["test"]  # None when the run did not score the test split
        scores = " ".join(f"{'-' if test is None else format(test[k], '.4f'):>9}"
                          for k in ("weighted_f1", "macro_f1", "accuracy"))
        lines.append(f"{column:<12} {result['encoder']:<9} {result['best_epoch']:>10} "
                     f"{result['valid']['weighted_f1']:>9.4f} {scores}")
    return "\n".join(lines)


class StepProgress:
    """A progress line rewritten in place while an epoch trains (at most once a second), for slow
    epochs on a terminal; erased before the epoch's own line is printed."""

    INTERVAL_SECONDS = 1.0

    def __init__(self, epoch: int, epochs: int, stream=None):
        self.stream = stream or sys.stdout
        self.label, self.started, self.last, self.width = f"epoch {epoch}/{epochs}", time.monotonic(), 0.0, 0

    def __call__(self, step: int, steps: int) -> None:
        now = time.monotonic()
        if now - self.last < self.INTERVAL_SECONDS:
            return
        self.last = now
        text = f"{self.label}  step {step}/{steps} ({100 * step // steps}%)  {format_duration(now - self.started)}"
        self.width = max(self.width, len(text))
        self.stream.write("\r" + text.ljust(self.width))
        self.stream.flush()

    def erase(self) -> None:
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or model, GPU memory exhausted); explained in one line."""


class Interrupted(RuntimeError):
    """The run was stopped by a signal after saving a resumable state."""


def command_status(action, bad_input=(DataError,)) -> int:
    """Runs a command's `action()` and returns its exit status: 0, or for a `bad_input` error, a
    `TrainingError` or an `Interrupted` one line on stderr and EXIT_BAD_INPUT,
    EXIT_TRAINING_FAILED or EXIT_INTERRUPTED (the statuses every command shares)."""
    try:
        action()
    except bad_input as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_TRAINING_FAILED
    except Interrupted as error:
        print(str(error), file=sys.stderr)  # says "interrupted" and how to resume
        return EXIT_INTERRUPTED
    return 0


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag read between training steps, so the step in flight finishes
    and a consistent state can be saved. `extra()`, if given, also requests a stop (tests use it)."""

    def __init__(self, extra=None):
        self.extra, self.signal_name, self._previous = extra, None, {}

    def __call__(self) -> bool:
        if self.signal_name is None and self.extra is not None and self.extra():
            self.signal_name = "request"
        return self.signal_name is not None

    def _handle(self, number, frame):
        self.signal_name = signal.Signals(number).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc):
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def run(config: Config, directory: str, first_prefix: str, second_prefix: str, log=print,
        should_stop=None) -> dict:
    """Checks the data, trains `config.method` (DisCoM-KD by default), keeps each classifier's
    best-on-validation checkpoint and writes results.json, best_<COLUMN>.pt and
    test_predictions_<COLUMN>.npy to the output folder.

    Raises `DataError` (before anything is written) for bad input, `TrainingError` when training
    cannot go on, `Interrupted` after a signal (or `should_stop()`) once state.pt is saved.
    Returns the results dict.
    """
    check_config(config)
    data = load_data_folder(directory, first_prefix, second_prefix, (config.encoder_first, config.encoder_second))
    for m, modality in enumerate(data.modalities):  # before the output folder is touched
        resolve_augmentation(config, modality, m)
    output = prepare_output(config.output or default_output(directory, first_prefix, second_prefix),
                            config.overwrite)
    if config.overwrite:  # every check passed: an earlier run's files must not mix with this run's
        clear_run_outputs(output)
    return fit(config, data, output, log=log, should_stop=should_stop)


def default_output(directory: str, first_prefix: str, second_prefix: str) -> str:
    return os.path.join(directory, f"DisCoM-KD_{first_prefix}_{second_prefix}")


def data_fingerprint(data: DataFolder) -> str:
    """SHA-256 of the labels and every split's row numbers: what `describe()` cannot see (labels moved
    between rows). The modality arrays, possibly larger than memory, are compared by shape and dtype only."""
    digest = hashlib.sha256(np.ascontiguousarray(data.labels, dtype=np.int64).tobytes())
    for modality in data.modalities:
        for split in sorted(modality.splits):
            digest.update(np.ascontiguousarray(modality.splits[split], dtype=np.int64).tobytes())
    return digest.hexdigest()


def resume(run_folder: str, log=print, should_stop=None, on_epoch=None) -> dict:
    """Continues the run saved in `run_folder`/state.pt with its own config and data folder."""
    state = load_state(run_folder)
    results = state["results"]
    config = Config(**results["config"])
    described = results["data"]
    # runs recorded before paths were stored absolute: relative to the working folder, as they were read
    described.update(directory=os.path.abspath(described["directory"]),
                     splits_from=os.path.abspath(described.get("splits_from", described["directory"])),
                     modalities=[dict(m, file=os.path.abspath(m["file"])) for m in described["modalities"]])
    prefixes = [m["prefix"] for m in described["modalities"]]
    encoders = (config.encoder_first, config.encoder_second)
    if described["splits_from"] == described["directory"]:
        data = load_data_folder(described["directory"], *prefixes, encoders)
    else:
        data = load_data_folder(described["directory"], *prefixes, encoders,
                                splits=read_split_files(described["splits_from"], prefixes),
                                splits_name=described["splits_from"])
    if data.describe() != described or results.get("data_fingerprint") != data_fingerprint(data):
        raise DataError(f"{described['directory']}: the data folder changed since the run started "
                        "(shapes, splits, classes or labels differ); cannot resume")
    remove_temporaries(run_folder)
    return fit(config, data, run_folder, state, log, should_stop, on_epoch)


def state_payload(trainer: Trainer, epoch: int, progress: EpochProgress | None, results: dict, best: dict,
                  test_predictions: dict) -> dict:
    """Everything needed to continue at `epoch` (mid-epoch when `progress` is given), for outputs.save_state."""
    return {
        "epoch": epoch, "results": results, "best": best,
        "test_predictions": {c: torch.from_numpy(np.asarray(v)) for c, v in test_predictions.items()},
        "model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
        "rng": rng_state(trainer.generator, trainer.device),
        "progress": None if progress is None else {
            "bounds": [list(b) for b in progress.bounds], "positions": [p.cpu() for p in progress.positions],
            "step": progress.step, "sums": progress.sums.cpu()},
    }


@dataclass
class RunRecord:
    """What a run accumulates and its state file keeps: the results dict, each classifier's best so far,
    and the best epochs' test predictions."""

    results: dict
    best: dict
    test_predictions: dict


def _start_record(config: Config, data: DataFolder, output: str, trainer: Trainer) -> RunRecord:
    results = {"config": dataclasses.asdict(config), "data": data.describe(), "data_fingerprint": data_fingerprint(data),
               "output": output, "environment": {}, "warnings": data.warnings, "status": "running",
               "train_rows": {data.modalities[m].prefix: len(p) for m, p in trainer.train_positions.items()},
               "history": [], "final": {}}
    best = {c.column: {"best_epoch": 0, "valid": {"weighted_f1": -1.0}} for c in trainer.classifiers}
    return RunRecord(results, best, {})


def _restore(trainer: Trainer, state: dict) -> tuple[RunRecord, int, EpochProgress | None]:
    """The record, first epoch and epoch progress of a saved state, with the trainer brought back to it."""
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    restore_rng(state["rng"], trainer.generator)
    saved, progress = state["progress"], None
    if saved is not None:
        progress = EpochProgress([tuple(b) for b in saved["bounds"]],
                                 [p.to(trainer.sources[m].index_device) for p, m in zip(saved["positions"], trainer.reads)],
                                 saved["step"], saved["sums"].to(trainer.device))
    record = RunRecord(state["results"], state["best"],
                       {c: v.numpy() for c, v in state["test_predictions"].items()})
    record.results["status"] = "running"
    record.results.setdefault("resumed_at_epoch", []).append(state["epoch"])
    return record, state["epoch"], progress


def _describe_environment(trainer: Trainer, data: DataFolder) -> dict:
    prefixes = {m: data.modalities[m].prefix for m in trainer.sources}
    return {"torch": str(torch.__version__), "device": str(trainer.device),
            "device_name": torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else "cpu",
            "precision": trainer.precision, "compiled": trainer.compiled_terms is not None,
            "data_on_device": {prefixes[m]: s.resident for m, s in trainer.sources.items()},
            "augmentation": {prefixes[m]: a for m, a in trainer.augmentations.items()}}


def _log_start(trainer: Trainer, data: DataFolder, output: str, log, first_epoch: int, progress, resumed: bool):
    config = trainer.config
    environment = _describe_environment(trainer, data)
    log("Config: " + ", ".join(f"{k}={v}" for k, v in sorted(dataclasses.asdict(config).items())))
    log(f"Method: {config.method}  device: {trainer.device}  precision {trainer.precision}  compiled "
        f"{environment['compiled']}  data on device "
        + " ".join(f"{p}={r}" for p, r in environment["data_on_device"].items()))
    for m in trainer.sources:
        modality = data.modalities[m]
        log(f"{modality.prefix}: samples {modality.sample_shape}, encoder {modality.encoder}, augmentation "
            f"{trainer.augmentations[m]}, rows " + " ".join(f"{s} {len(r)}" for s, r in modality.splits.items())
            + (f" (training on {len(trainer.train_positions[m])} paired rows)" if trainer.spec.paired
               and m in trainer.train_positions else ""))
    if resumed:
        log(f"Resuming {output} at epoch {first_epoch}" + (f", step {progress.step}" if progress else ""))


def _record_best(trainer: Trainer, data: DataFolder, output: str, epoch: int, metrics: dict,
                 record: RunRecord) -> list[str]:
    """Scores the test split of each classifier whose validation improved, keeps it as the best and
    writes its checkpoint. Returns the improved columns."""
    improved = [c for c in trainer.classifiers
                if metrics[c.column]["valid"]["weighted_f1"] > record.best[c.column]["valid"]["weighted_f1"]]
    if not trainer.config.test_every_epoch and trainer.config.score_test and improved:
        # the test split is only read at the epochs that model selection can pick
        tested = evaluate(trainer, data, ("test",), improved)
        for c in improved:
            if tested[c.column].get("finite", True):
                metrics[c.column]["test"] = tested[c.column]["test"]
                metrics[c.column]["predictions"]["test"] = tested[c.column]["predictions"]["test"]
            else:
                metrics[c.column] = tested[c.column]
        improved = [c for c in improved if metrics[c.column].get("finite", True)]
    for classifier in improved:
        column, result = classifier.column, metrics[classifier.column]
        encoder = "fused" if classifier.modality is None else data.modalities[classifier.modality].encoder
        record.best[column] = {"encoder": encoder, "best_epoch": epoch, "valid": result["valid"],
                               "test": result.get("test")}  # None: config.score_test off
        if "test" in result:
            record.test_predictions[column] = result["predictions"]["test"]
        save_checkpoint(checkpoint_path(output, column), classifier.module,
                        classifier_description(classifier.module, trainer.shape, classifier.modality),
                        {**data.metadata.get(column, {}),  # class names and preprocessing of prepared folders
                         "prefix": column, "position": classifier.modality, "classes": [int(c) for c in data.classes],
                         "config": dataclasses.asdict(trainer.config), "epoch": epoch,
                         "metrics": {"valid": result["valid"], "test": result.get("test")}})
    return [c.column for c in improved]


def _epoch_line(config: Config, epoch: int, losses: dict, metrics: dict, improved, train_seconds: float,
                eval_seconds: float, eta: float, terms) -> str:
    loss_text = " ".join(f"{k} {losses[k]:.3f}" for k in terms)
    valid = "  ".join(f"{c} {m['valid']['weighted_f1']:.4f}{'*' if c in improved else ' '}" if "valid" in m
                      else f"{c} non-finite" for c, m in metrics.items())
    return (f"epoch {epoch:>{len(str(config.epochs))}}/{config.epochs}  train {train_seconds:5.1f}s  "
            f"eval {eval_seconds:4.1f}s  eta {format_duration(eta)}  loss {losses['total']:.3f} "
            f"[{loss_text}]  valid wF1 {valid}")


def _finish(data: DataFolder, output: str, record: RunRecord, log) -> dict:
    """Writes the best epochs' test predictions and the final results; removes the resumable state."""
    results = record.results
    for column, predictions in record.test_predictions.items():
        user_labels = data.classes[predictions]
        atomic_write(os.path.join(output, f"test_predictions_{column}.npy"),
                     lambda temporary, values=user_labels: save_npy(temporary, values))
        results["final"][column]["test_rows"] = int(len(predictions))
    results["status"] = "finished"
    results["training_seconds"] = sum(h["train_seconds"] + h["eval_seconds"] for h in results["history"])
    write_json(os.path.join(output, RESULTS_FILE), results)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(output, STATE_FILE))  # a finished run needs no state; its checkpoints stay
    log("")
    log(summary_table(results["final"]))
    log(f"(test metrics at each classifier's best validation epoch; outputs in {output})")
    return results


def fit(config: Config, data: DataFolder, output: str, state: dict | None = None, log=print,
        should_stop=None, on_epoch=None) -> dict:
    """Trains `config.method` on `data` into `output` (from `state` when resuming); the one training
    loop of every method. `on_epoch(entry)`, if given, is called with each epoch's history entry once
    that epoch's results and state are written (tuning reports validation through it). Returns the
    results dict; raises `TrainingError` or `Interrupted`."""
    config = dataclasses.replace(config, **METHODS[config.method].overrides)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
    try:
        trainer = build_trainer(config, data, device)
    except torch.cuda.OutOfMemoryError:
        raise TrainingError(f"GPU out of memory while placing the data and model on {device}: try "
                            "--data-on-device no (data streamed from host memory)") from None
    if state is None:
        record, first_epoch, progress = _start_record(config, data, output, trainer), 1, None
    else:
        record, first_epoch, progress = _restore(trainer, state)
    results = record.results
    results["environment"] = _describe_environment(trainer, data)
    for warning in data.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if config.verbose:
        _log_start(trainer, data, output, log, first_epoch, progress, state is not None)
    os.makedirs(output, exist_ok=True)
    results_path = os.path.join(output, RESULTS_FILE)

    def stop_here(status: str, message: str) -> str:
        """Records why the run stopped, shows the summary so far, returns the one-line message."""
        results["status"] = status
        write_json(results_path, results)
        if results["final"]:
            log("")
            log(summary_table(results["final"]))
        return message

    def kept() -> str:
        epochs = ", ".join(f"{c} epoch {b['best_epoch']}" for c, b in record.best.items() if b["best_epoch"])
        return (f"the checkpoints kept in {output} are the last finite ones ({epochs})" if epochs
                else f"no checkpoint was written to {output}")

    started = time.time()
    with StopRequest(should_stop) as stop:
        for epoch in range(first_epoch, config.epochs + 1):
            epoch_start = time.time()
            progress = progress or start_epoch(trainer)
            # on a terminal only: a log file gets the epoch lines alone
            steps_line = StepProgress(epoch, config.epochs) if config.verbose and log is print and \
                sys.stdout.isatty() else None
            try:
                losses = train_one_epoch(trainer, epoch, progress, stop, steps_line)
            except torch.cuda.OutOfMemoryError:
                raise TrainingError(stop_here("failed", (
                    f"GPU out of memory at epoch {epoch} with batch size {config.batch_size}: try a smaller "
                    f"--batch-size, --data-on-device no, or --precision bf16; {kept()}"))) from None
            if steps_line is not None:
                steps_line.erase()
            if losses is None:
                if not bool(trainer.finite_weights()):
                    raise TrainingError(stop_here("failed", (
                        f"the model holds NaN or Inf at epoch {epoch}, step {progress.step}: training stopped; "
                        f"{kept()} (try a lower --learning-rate)")))
                save_state(output, state_payload(trainer, epoch, progress, record.results, record.best, record.test_predictions))
                raise Interrupted(stop_here("interrupted", (
                    f"interrupted ({stop.signal_name}) at epoch {epoch}, step {progress.step}/{len(progress.bounds)}; "
                    f"state saved: resume with --resume {output}")))
            progress = None
            bad = [k for k, v in losses.items() if not math.isfinite(v)]
            if bad or not losses.pop("finite_weights"):
                what = f"loss term {bad[0]} is {losses[bad[0]]}" if bad else "the model holds NaN or Inf"
                raise TrainingError(stop_here("failed", (
                    f"{what} at epoch {epoch}: training stopped; {kept()} (try a lower --learning-rate)")))
            train_seconds = time.time() - epoch_start
            splits = ("valid", "test") if config.test_every_epoch else ("valid",)
            metrics = evaluate(trainer, data, splits)
            broken = [c for c, m in metrics.items() if not m.get("finite", True)]
            if broken:
                raise TrainingError(stop_here("failed", (
                    f"classifier {broken[0]} outputs NaN or Inf at epoch {epoch}: training stopped; {kept()}")))
            improved = _record_best(trainer, data, output, epoch, metrics, record)
            eval_seconds = time.time() - epoch_start - train_seconds
            results["history"].append({
                "epoch": epoch, "train_seconds": train_seconds, "eval_seconds": eval_seconds, "loss": losses,
                **{c: {s: m[s] for s in ("valid", "test") if s in m} for c, m in metrics.items()},
                "improved": improved})
            results["final"] = {c: b for c, b in record.best.items() if b["best_epoch"]}
            write_json(results_path, results)
            if epoch < config.epochs and (epoch % config.save_every == 0 or stop()):
                save_state(output, state_payload(trainer, epoch + 1, None, record.results, record.best, record.test_predictions))
            if config.verbose:
                elapsed = time.time() - started
                eta = elapsed / (epoch - first_epoch + 1) * (config.epochs - epoch)
                log(_epoch_line(config, epoch, losses, metrics, improved, train_seconds, eval_seconds, eta,
                                trainer.spec.terms))
            if on_epoch is not None:
                on_epoch(results["history"][-1])
            if stop() and epoch < config.epochs:
                raise Interrupted(stop_here("interrupted", (
                    f"interrupted ({stop.signal_name}) after epoch {epoch}; state saved: resume with --resume {output}")))
    return _finish(data, output, record, log)
