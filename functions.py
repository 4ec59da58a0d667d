"""Configuration, training, evaluation and the run of DisCoM-KD.

`run(config, directory, first_prefix, second_prefix)` is the whole job behind
`main_DisCoM-KD.py`; the data folder is read and checked by `data.py`, the files a run writes
(results, checkpoints, resumable state) by `outputs.py`, and the model and losses live in
`model_pytorch.py`. This module knows no command line. `load_modality_classifier`,
`atomic_write` and the other file helpers are re-exported here for callers of `functions`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from data import (AUGMENTATIONS, DataError, DataFolder, Prefetcher, RowSource, augment, default_augmentation,
                  epoch_positions, load_data_folder)
from model_pytorch import LOSS_TERMS, DisCoMKD, ModalityBranch, discomkd_losses
from outputs import (RESULTS_FILE, STATE_FILE, TEMPORARY_PREFIX, atomic_write, checkpoint_path,  # noqa: F401
                     clear_run_outputs, load_modality_classifier, load_state, prepare_output, restore_rng,
                     save_checkpoint, save_npy, save_state, write_json)



def _option(default, help_text: str, **metadata):
    """A config field whose help text the command line shows."""
    return field(default=default, metadata={"help": help_text, **metadata})


@dataclass
class Config:
    """Every setting of a run. The defaults are the paper's (Adam 1e-4, batch 128, 300 epochs,
    all loss weights and the reversal coefficient 1)."""

    epochs: int = _option(300, "training epochs")
    batch_size: int = _option(128, "training batch size per modality (at least 2)")
    learning_rate: float = _option(1e-4, "Adam learning rate")
    weight_decay: float = _option(0.0, "Adam weight decay")
    seed: int = _option(0, "random seed; a CPU run with the same seed repeats exactly")
    device: str = _option("auto", "auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    output: str | None = _option(None, "output folder (None: DIR/DisCoM-KD_<FIRST>_<SECOND>)")
    overwrite: bool = _option(False, "replace the files of an existing output folder")
    weight_cl: float = _option(1.0, "weight of L_cl, the task classifiers (0 drops the term)")
    weight_aux: float = _option(1.0, "weight of L_aux, the shared auxiliary classifier")
    weight_mod: float = _option(1.0, "weight of L_mod, the modality classifiers")
    weight_adv: float = _option(1.0, "weight of L_adv, the adversarial modality discriminator")
    weight_perp: float = _option(1.0, "weight of L_perp, the orthogonality term")
    grl_coefficient: float = _option(1.0, "gradient reversal coefficient (lambda)")
    encoder_first: str = _option("auto", "first modality's encoder: auto (by rank; MNIST prefix -> lenet), "
                                         "resnet18, resnet1d, lenet or mlp")
    encoder_second: str = _option("auto", "second modality's encoder, as --encoder-first")
    augment_first: str = _option("auto", "first modality's augmentation: auto (flip+rot90 for images, none "
                                         "for the SPECTRO prefix and otherwise), none, flip, flip+rot90; "
                                         "sequences: shift, scale, shift+scale")
    augment_second: str = _option("auto", "second modality's augmentation, as --augment-first")
    legacy_modality_targets: bool = _option(False, "build modality targets as the published code does "
                                                   "(soft [1,1]/[0,0]; see README)")
    eval_batch_size: int = _option(512, "evaluation batch size")
    data_on_device: str = _option("auto", "keep the data on the training device: auto (when it fits), yes, no")
    compile: str = _option("auto", "torch.compile the training step: auto (on CUDA), yes, no")
    precision: str = _option("auto", "auto (bf16 autocast on CUDA with bf16 support, else fp32), fp32, bf16")
    save_every: int = _option(1, "write the resumable state.pt every N epochs (and always on interruption)")
    verbose: int = _option(1, "0: final table only, 1: one line per epoch", flag=False)

    def loss_weights(self) -> dict[str, float]:
        return {term: getattr(self, f"weight_{term}") for term in LOSS_TERMS}


def add_config_arguments(parser, skip=()) -> None:
    """Adds one `--option` per `Config` field to an argparse parser, with the field's default and help.

    Fields named in `skip`, and those marked `flag=False`, get no option.
    """
    for option in dataclasses.fields(Config):
        if option.name in skip or not option.metadata.get("flag", True):
            continue
        flag = "--" + option.name.replace("_", "-")
        if option.type in ("bool", bool):
            parser.add_argument(flag, action="store_true", help=option.metadata["help"])
        else:
            kind = {"int": int, "float": float}.get(str(option.type), str)
            parser.add_argument(flag, type=kind, default=option.default,
                                help=f"{option.metadata['help']} (default: %(default)s)")


# The seeds numpy accepts (np.random.seed: 0..2**32-1); torch and Python accept these too.
MAX_SEED = 2**32 - 1


def seed_problem(seed: int, option: str = "--seed") -> str | None:
    """The one-line problem of a seed numpy cannot use, or None."""
    if not 0 <= seed <= MAX_SEED:
        return f"{option} {seed}: an integer from 0 to {MAX_SEED} (2**32-1) is expected"
    return None


def check_config(config: Config) -> None:
    """Raises `DataError` for settings no run can use."""
    problems = []
    if seed_problem(config.seed):
        problems.append(seed_problem(config.seed))
    if config.weight_decay < 0 or not math.isfinite(config.weight_decay):
        problems.append(f"--weight-decay {config.weight_decay}: a finite number >= 0 is expected")
    if not math.isfinite(config.grl_coefficient):
        problems.append(f"--grl-coefficient {config.grl_coefficient}: a finite number is expected")
    if all(weight == 0 for weight in config.loss_weights().values()):
        problems.append("--weight-cl, --weight-aux, --weight-mod, --weight-adv, --weight-perp: all 0, nothing "
                        "would be trained; at least one positive loss weight is expected")
    if config.epochs < 1:
        problems.append(f"--epochs {config.epochs}: at least 1 is expected")
    if config.batch_size < 2:
        problems.append(f"--batch-size {config.batch_size}: at least 2 is expected (batch normalisation)")
    if config.save_every < 1:
        problems.append(f"--save-every {config.save_every}: at least 1 is expected")
    if config.eval_batch_size < 1:
        problems.append(f"--eval-batch-size {config.eval_batch_size}: at least 1 is expected")
    if config.learning_rate <= 0 or not math.isfinite(config.learning_rate):
        problems.append(f"--learning-rate {config.learning_rate}: a positive number is expected")
    for term, weight in config.loss_weights().items():
        if weight < 0 or not math.isfinite(weight):
            problems.append(f"--weight-{term} {weight}: a finite number >= 0 is expected")
    for name, allowed in (("data_on_device", ("auto", "yes", "no")), ("compile", ("auto", "yes", "no")),
                          ("precision", ("auto", "fp32", "bf16"))):
        if getattr(config, name) not in allowed:
            problems.append(f"--{name.replace('_', '-')} {getattr(config, name)}: expected one of {', '.join(allowed)}")
    if problems:
        raise DataError(problems[0])
    resolve_device(config.device)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):  # torch's message lists every backend it knows
        device = None
    if device is None or device.type not in ("cpu", "cuda"):  # meta, mps, xla...: not what this code runs on
        raise DataError(f"--device {name}: not a device; expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DataError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                        f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
class Trainer:
    """The training state of a run: model, optimizer, data sources, and the per-run settings."""

    model: DisCoMKD
    optimizer: torch.optim.Optimizer
    sources: tuple[RowSource, RowSource]
    train_positions: tuple[torch.Tensor, torch.Tensor]  # training rows' positions in each source
    labels: tuple[torch.Tensor, torch.Tensor]  # per source, label of each stored row (index device)
    augmentations: tuple[str, str]
    config: Config
    device: torch.device
    precision: str
    generator: torch.Generator  # CPU generator for the epoch shuffles
    step: object = None  # the (possibly compiled) forward + loss function

    def losses(self, x_first, y_first, x_second, y_second) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward pass and loss of one step: (weighted total, the raw terms stacked in LOSS_TERMS order)."""
        with autocast_context(self.device, self.precision):
            first, second = self.model(x_first, x_second, self.config.grl_coefficient)
            terms = discomkd_losses(first, second, y_first, y_second, self.config.legacy_modality_targets)
        weights = self.config.loss_weights()
        total = sum(weights[k] * terms[k].float() for k in LOSS_TERMS)  # the one place weights apply
        return total, torch.stack([terms[k].float() for k in LOSS_TERMS])

    def batch(self, modality: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gathers a batch of training rows (no randomness, so it may run in the prefetch thread)."""
        source = self.sources[modality]
        stored = self.train_positions[modality][positions]
        return source.gather(stored), self.labels[modality][stored].to(self.device, non_blocking=True)


@dataclass
class EpochProgress:
    """Where an epoch stands: its shuffles, the next step to run, and the loss sums so far (on the
    device). Saved in the resumable state, so an interrupted epoch resumes at its next step."""

    bounds: list[tuple[int, int]]
    positions: list[torch.Tensor]  # per modality, (n,) positions into its training rows
    step: int
    sums: torch.Tensor  # (len(LOSS_TERMS) + 1,) raw terms then the weighted total

    @property
    def finished(self) -> bool:
        return self.step >= len(self.bounds)


def start_epoch(trainer: Trainer) -> EpochProgress:
    sizes = tuple(len(p) for p in trainer.train_positions)
    bounds, positions = epoch_positions(sizes, trainer.config.batch_size, trainer.generator)
    # one copy per epoch: a pageable host-to-device copy per step would synchronise every step
    positions = [p.to(s.index_device) for p, s in zip(positions, trainer.sources)]
    return EpochProgress(bounds, positions, 0, torch.zeros(len(LOSS_TERMS) + 1, device=trainer.device))


def train_one_epoch(trainer: Trainer, progress: EpochProgress | None = None, should_stop=None) -> dict[str, float] | None:
    """Trains over the larger training set once (the smaller one cycled), from `progress.step` on.

    Returns the epoch's mean raw loss terms and weighted total, read from the device once, at the
    end; or None when `should_stop()` turned true, after finishing the step in flight (`progress`
    then says where to resume).
    """
    model, optimizer = trainer.model, trainer.optimizer
    model.train()
    progress = progress or start_epoch(trainer)
    bounds, positions, first_step = progress.bounds, progress.positions, progress.step

    def fetch(i):
        start, end = bounds[first_step + i]
        return trainer.batch(0, positions[0][start:end]) + trainer.batch(1, positions[1][start:end])

    streamed = not all(source.resident for source in trainer.sources)
    step = trainer.step or trainer.losses
    for x_first, y_first, x_second, y_second in Prefetcher(fetch, len(bounds) - first_step, enabled=streamed):
        # augmentation draws random numbers, so it runs here, in order, never in the prefetch thread
        x_first = augment(x_first, trainer.augmentations[0])
        x_second = augment(x_second, trainer.augmentations[1])
        optimizer.zero_grad(set_to_none=True)
        total, terms = step(x_first, y_first, x_second, y_second)
        total.backward()
        optimizer.step()
        progress.sums += torch.cat([terms.detach(), total.detach().view(1)])
        progress.step += 1
        if should_stop is not None and should_stop() and not progress.finished:
            return None
    means = (progress.sums / len(bounds)).tolist()  # the epoch's one host-device synchronisation
    return dict(zip(LOSS_TERMS + ("total",), means))


@torch.inference_mode()
def predict(branch: ModalityBranch, source: RowSource, positions: torch.Tensor, batch_size: int,
            precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and predicted classes (0..K-1) for the stored rows at `positions`."""
    device = next(branch.parameters()).device
    probabilities = []
    for start in range(0, len(positions), batch_size):
        x = source.gather(positions[start:start + batch_size])
        with autocast_context(device, precision):
            logits = branch(x).logits
        probabilities.append(torch.softmax(logits.float(), dim=1))
    probabilities = torch.cat(probabilities).cpu().numpy()
    return probabilities, probabilities.argmax(axis=1)


def evaluate(trainer: Trainer, data: DataFolder, splits=("valid", "test")) -> dict[str, dict]:
    """Metrics of each modality's classifier on each split, over the whole split.

    Returns:
        {prefix: {split: {"weighted_f1", "macro_f1", "accuracy"}, "predictions": {split: (n,) classes}}}
    """
    model = trainer.model
    was_training = model.training
    model.eval()
    results = {}
    for m, modality in enumerate(data.modalities):
        source = trainer.sources[m]
        results[modality.prefix] = {"predictions": {}}
        for split in splits:
            rows = modality.splits[split]
            _, predicted = predict(model.branches[m], source, source.positions(rows),
                                   trainer.config.eval_batch_size, trainer.precision)
            results[modality.prefix][split] = classification_metrics(data.labels[rows], predicted)
            results[modality.prefix]["predictions"][split] = predicted
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


def resolve_precision(config: Config, device: torch.device) -> str:
    if config.precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return config.precision


def build_sources(config: Config, data: DataFolder, device: torch.device):
    """Each modality's rows (resident on the device when they fit) and its augmentation mode.

    Returns:
        (sources, train_positions, labels, augmentations), one entry per modality: the `RowSource`
        of all rows of its splits, its training rows' positions in that source, the label of each
        stored row (on the source's index device), and the resolved augmentation mode.
    """
    sources, train_positions, labels, augmentations = [], [], [], []
    budget = _resident_budget(device)
    for m, modality in enumerate(data.modalities):
        rows = np.unique(np.concatenate(list(modality.splits.values())))
        values = len(rows) * math.prod(modality.sample_shape)
        resident, storage = config.data_on_device == "yes", torch.float32
        if config.data_on_device == "auto":
            if values * 4 <= budget:
                resident = True
            elif device.type == "cuda" and values * 2 <= budget:
                resident, storage = True, torch.bfloat16  # half precision is what makes it fit
        budget -= values * (4 if storage == torch.float32 else 2) if resident else 0
        source = RowSource(modality.array, rows, device, resident, storage)
        sources.append(source)
        train_positions.append(source.positions(modality.splits["train"]))
        labels.append(torch.from_numpy(data.labels[source.rows]).to(source.index_device))
        rank = modality.rank + 1
        mode = getattr(config, ("augment_first", "augment_second")[m])
        mode = default_augmentation(modality.prefix, rank) if mode == "auto" else mode
        if mode not in AUGMENTATIONS[rank]:
            raise DataError(f"--augment-{('first', 'second')[m]} {mode}: not available for {modality.prefix}'s "
                            f"samples of shape {modality.sample_shape}; expected one of {', '.join(AUGMENTATIONS[rank])}")
        augmentations.append(mode)
    return sources, train_positions, labels, augmentations


def build_trainer(config: Config, data: DataFolder, device: torch.device) -> Trainer:
    precision = resolve_precision(config, device)
    sources, train_positions, labels, augmentations = build_sources(config, data, device)
    model = DisCoMKD([m.sample_shape for m in data.modalities], data.num_classes,
                     [m.encoder for m in data.modalities]).to(device)
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
                                 **fused)
    generator = torch.Generator().manual_seed(config.seed)
    trainer = Trainer(model, optimizer, tuple(sources), tuple(train_positions), tuple(labels), tuple(augmentations),
                      config, device, precision, generator)
    use_compile = config.compile == "yes" or (config.compile == "auto" and device.type == "cuda")
    if use_compile:
        # CUDA graphs remove the per-kernel launch cost that bounds this step's speed at batch 128
        mode = "reduce-overhead" if device.type == "cuda" else None
        trainer.step = torch.compile(trainer.losses, mode=mode)
    return trainer


# ----------------------------------------------------------------------------- the run
def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def summary_table(final: dict) -> str:
    header = f"{'modality':<12} {'encoder':<9} {'best epoch':>10} {'valid wF1':>9} {'test wF1':>9} " \
             f"{'test mF1':>9} {'test acc':>9}"
    lines = [header, "-" * len(header)]
    for prefix, result in final.items():
        test = result["test"]
        lines.append(f"{prefix:<12} {result['encoder']:<9} {result['best_epoch']:>10} "
                     f"{result['valid']['weighted_f1']:>9.4f} {test['weighted_f1']:>9.4f} "
                     f"{test['macro_f1']:>9.4f} {test['accuracy']:>9.4f}")
    return "\n".join(lines)


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, GPU memory exhausted); explained in one line."""


class Interrupted(RuntimeError):
    """The run was stopped by a signal after saving a resumable state."""


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
    """Checks the data, trains DisCoM-KD, keeps each modality's best-on-validation checkpoint and
    writes results.json, best_<PREFIX>.pt and test_predictions_<PREFIX>.npy to the output folder.

    Raises `DataError` (before anything is written) for bad input, `TrainingError` when training
    cannot go on, `Interrupted` after a signal (or `should_stop()`) once state.pt is saved.
    Returns the results dict.
    """
    check_config(config)
    data = load_data_folder(directory, first_prefix, second_prefix, (config.encoder_first, config.encoder_second))
    # the augmentation settings are checked without copying anything to the device
    build_sources(dataclasses.replace(config, data_on_device="no"), data, torch.device("cpu"))
    output = prepare_output(config, directory, first_prefix, second_prefix)
    if config.overwrite:  # every check passed: an earlier run's files must not mix with this run's
        clear_run_outputs(output)
    return _train(config, data, output, None, log, should_stop)


def data_fingerprint(data: DataFolder) -> str:
    """SHA-256 of the labels and every split's row numbers: what `describe()` cannot see (labels moved
    between rows). The modality arrays, possibly larger than memory, are compared by shape and dtype only."""
    digest = hashlib.sha256(np.ascontiguousarray(data.labels, dtype=np.int64).tobytes())
    for modality in data.modalities:
        for split in sorted(modality.splits):
            digest.update(np.ascontiguousarray(modality.splits[split], dtype=np.int64).tobytes())
    return digest.hexdigest()


def resume(run_folder: str, log=print, should_stop=None) -> dict:
    """Continues the run saved in `run_folder`/state.pt with its own config and data folder."""
    state = load_state(run_folder)
    results = state["results"]
    config = Config(**results["config"])
    described = results["data"]
    # runs recorded before paths were stored absolute: relative to the working folder, as they were read
    described.update(directory=os.path.abspath(described["directory"]),
                     modalities=[dict(m, file=os.path.abspath(m["file"])) for m in described["modalities"]])
    first, second = (m["prefix"] for m in described["modalities"])
    data = load_data_folder(described["directory"], first, second, (config.encoder_first, config.encoder_second))
    if data.describe() != described or results.get("data_fingerprint") != data_fingerprint(data):
        raise DataError(f"{described['directory']}: the data folder changed since the run started "
                        "(shapes, splits, classes or labels differ); cannot resume")
    for name in os.listdir(run_folder):
        if name.startswith(TEMPORARY_PREFIX):  # left by a write that a kill cut short: never a final name
            os.remove(os.path.join(run_folder, name))
    return _train(config, data, run_folder, state, log, should_stop)


def _train(config: Config, data: DataFolder, output: str, state: dict | None, log, should_stop) -> dict:
    device = resolve_device(config.device)
    seed_everything(config.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
    try:
        trainer = build_trainer(config, data, device)
    except torch.cuda.OutOfMemoryError:
        raise TrainingError(f"GPU out of memory while placing the data and model on {device}: try "
                            "--data-on-device no (data streamed from host memory)") from None
    prefixes = [m.prefix for m in data.modalities]
    if state is None:
        results = {"config": dataclasses.asdict(config), "data": data.describe(),
                   "data_fingerprint": data_fingerprint(data), "output": output,
                   "environment": {}, "warnings": data.warnings, "status": "running", "history": [], "final": {}}
        best = {p: {"best_epoch": 0, "valid": {"weighted_f1": -1.0}} for p in prefixes}
        test_predictions, first_epoch, progress = {}, 1, None
    else:
        results, best, first_epoch = state["results"], state["best"], state["epoch"]
        test_predictions = {p: v.numpy() for p, v in state["test_predictions"].items()}
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"], trainer)
        saved = state["progress"]
        progress = None if saved is None else EpochProgress(
            [tuple(b) for b in saved["bounds"]], [p.to(s.index_device) for p, s in zip(saved["positions"], trainer.sources)], saved["step"], saved["sums"].to(device))
        results["status"] = "running"
        results.setdefault("resumed_at_epoch", []).append(first_epoch)
    results["environment"] = {
        "torch": str(torch.__version__), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": trainer.precision, "compiled": trainer.step is not None,
        "data_on_device": {p: s.resident for p, s in zip(prefixes, trainer.sources)},
        "augmentation": dict(zip(prefixes, trainer.augmentations))}
    for warning in data.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if config.verbose:
        log("Config: " + ", ".join(f"{k}={v}" for k, v in sorted(dataclasses.asdict(config).items())))
        log(f"Device: {device}  precision {trainer.precision}  compiled {trainer.step is not None}  data on device "
            + " ".join(f"{p}={s.resident}" for p, s in zip(prefixes, trainer.sources)))
        for m, modality in enumerate(data.modalities):
            log(f"{modality.prefix}: samples {modality.sample_shape}, encoder {modality.encoder}, augmentation "
                f"{trainer.augmentations[m]}, rows " + " ".join(f"{s} {len(r)}" for s, r in modality.splits.items()))
        if state is not None:
            log(f"Resuming {output} at epoch {first_epoch}" + (f", step {progress.step}" if progress else ""))

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

    started = time.time()
    with StopRequest(should_stop) as stop:
        for epoch in range(first_epoch, config.epochs + 1):
            epoch_start = time.time()
            progress = progress or start_epoch(trainer)
            try:
                losses = train_one_epoch(trainer, progress, stop)
            except torch.cuda.OutOfMemoryError:
                raise TrainingError(stop_here("failed", (
                    f"GPU out of memory at epoch {epoch} with batch size {config.batch_size}: try a smaller "
                    "--batch-size, --data-on-device no, or --precision bf16; last good checkpoints are kept"))) from None
            if losses is None:
                save_state(output, trainer, epoch, progress, results, best, test_predictions)
                raise Interrupted(stop_here("interrupted", (
                    f"interrupted ({stop.signal_name}) at epoch {epoch}, step {progress.step}/{len(progress.bounds)}; "
                    f"state saved: resume with --resume {output}")))
            progress = None
            bad = [k for k, v in losses.items() if not math.isfinite(v)]
            if bad:
                raise TrainingError(stop_here("failed", (
                    f"loss term {bad[0]} is {losses[bad[0]]} at epoch {epoch}: training stopped; the last good "
                    f"checkpoints and state are kept in {output} (try a lower --learning-rate)")))
            train_seconds = time.time() - epoch_start
            metrics = evaluate(trainer, data)
            eval_seconds = time.time() - epoch_start - train_seconds
            improved = []
            for m, prefix in enumerate(prefixes):
                if metrics[prefix]["valid"]["weighted_f1"] > best[prefix]["valid"]["weighted_f1"]:
                    improved.append(prefix)
                    best[prefix] = {"encoder": data.modalities[m].encoder, "best_epoch": epoch,
                                    "valid": metrics[prefix]["valid"], "test": metrics[prefix]["test"]}
                    test_predictions[prefix] = metrics[prefix]["predictions"]["test"]
                    save_checkpoint(checkpoint_path(output, prefix), trainer.model.branches[m], prefix, m,
                                    data.classes, config, epoch,
                                    {"valid": metrics[prefix]["valid"], "test": metrics[prefix]["test"]})
            results["history"].append({
                "epoch": epoch, "train_seconds": train_seconds, "eval_seconds": eval_seconds, "loss": losses,
                **{p: {s: metrics[p][s] for s in ("valid", "test")} for p in prefixes}, "improved": improved})
            results["final"] = {p: best[p] for p in prefixes if best[p]["best_epoch"]}
            write_json(results_path, results)
            if epoch < config.epochs and (epoch % config.save_every == 0 or stop()):
                save_state(output, trainer, epoch + 1, None, results, best, test_predictions)
            if config.verbose:
                elapsed = time.time() - started
                eta = elapsed / (epoch - first_epoch + 1) * (config.epochs - epoch)
                terms = " ".join(f"{k} {losses[k]:.3f}" for k in LOSS_TERMS)
                valid = "  ".join(f"{p} {metrics[p]['valid']['weighted_f1']:.4f}{'*' if p in improved else ' '}"
                                  for p in prefixes)
                log(f"epoch {epoch:>{len(str(config.epochs))}}/{config.epochs}  train {train_seconds:5.1f}s  "
                    f"eval {eval_seconds:4.1f}s  eta {_format_seconds(eta)}  loss {losses['total']:.3f} "
                    f"[{terms}]  valid wF1 {valid}")
            if stop() and epoch < config.epochs:
                raise Interrupted(stop_here("interrupted", (
                    f"interrupted ({stop.signal_name}) after epoch {epoch}; state saved: resume with --resume {output}")))

    for m, prefix in enumerate(prefixes):
        user_labels = data.classes[test_predictions[prefix]]
        atomic_write(os.path.join(output, f"test_predictions_{prefix}.npy"),
                     lambda temporary, values=user_labels: save_npy(temporary, values))
        results["final"][prefix]["test_rows"] = int(len(data.modalities[m].splits["test"]))
    results["status"] = "finished"
    results["training_seconds"] = sum(h["train_seconds"] + h["eval_seconds"] for h in results["history"])
    write_json(results_path, results)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(output, STATE_FILE))  # a finished run needs no state; its checkpoints stay
    log("")
    log(summary_table(results["final"]))
    log(f"(test metrics at each modality's best validation epoch; outputs in {output})")
    return results
