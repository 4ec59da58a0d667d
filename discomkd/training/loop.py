"""Training of any method from start (or a saved state) to its results.

`fit(config, data, output)` is the one training loop, for DisCoM-KD and every neural baseline
(each method is a spec in `models/methods.py`), built from its parts: the setup (`setup.py`),
an epoch, evaluation). The settings are `config.Config`; the data folder is read and checked
by `data/folder.py`, the files a run writes (results, checkpoints, resumable state) by `runs/outputs.py` and
`writer.py`. This module knows no command line.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from discomkd.data.folder import DataFolder, reload_data_folder
from discomkd.evaluation.probes import INVARIANCE_MEANING, TRANSFER_MEANING, transfer_lines
from discomkd.models.methods import classifier_description
from discomkd.runs.outputs import (
    PREVIOUS_RUN_FOLDER,
    RESULTS_FILE,
    STATE_FILE,
    checkpoint_path,
    checkpoint_payload,
    load_state,
)
from discomkd.runs.ownership import owning
from discomkd.runs.writer import RunWriter
from discomkd.training.config import Config, resolve_device, with_method_overrides
from discomkd.training.epoch import EpochProgress, compile_report, start_epoch, train_one_epoch
from discomkd.training.identity import ContentHashing, identity, resume_problem
from discomkd.training.scores import evaluate, invariance_measures
from discomkd.training.setup import TrainingSetup, build_setup
from discomkd.utils import console
from discomkd.utils.console import command_for, format_duration
from discomkd.utils.errors import DataError, Interrupted, TrainingError
from discomkd.utils.files import atomic_write, remove_temporaries, save_npy, write_json
from discomkd.utils.seeds import restore_rng, rng_state, seed_everything

logger = logging.getLogger(__name__)
TRAIN_COMMAND = "discomkd.commands.train"  # the command that resumes a run (named in messages, not imported)


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


def resume(run_folder: str, should_stop=None, on_epoch=None, verbose: int | None = None) -> dict:
    """Continues the run saved in `run_folder`/state.pt with its own config and data folder (read again
    with the run's split; refused with `DataError` if it changed since the run started:
    `identity.resume_problem`). `verbose` replaces the run's own setting when given."""
    if not os.path.isfile(os.path.join(run_folder, STATE_FILE)):
        load_state(run_folder)  # says what the folder is instead: missing, finished, never interrupted
    with owning(run_folder):
        state = load_state(run_folder)
        results = state["results"]
        data = reload_data_folder(results["data"], results["data_fingerprint"])
        problem = resume_problem(results, data)
        if problem is not None:
            raise DataError(f"{run_folder}: cannot be resumed: {problem}; start it again with --overwrite")
        remove_temporaries(run_folder)
        config = Config(**results["config"])
        if verbose is not None:
            config = dataclasses.replace(config, verbose=verbose)
        return fit(config, data, run_folder, state, should_stop, on_epoch)


def state_payload(setup: TrainingSetup, epoch: int, progress: EpochProgress | None, results: dict, best: dict,
                  test_predictions: dict) -> dict:
    """Everything needed to continue at `epoch` (mid-epoch when `progress` is given), for outputs.save_state."""
    return {
        "epoch": epoch, "results": results, "best": best,
        "test_predictions": {c: torch.from_numpy(np.asarray(v)) for c, v in test_predictions.items()},
        "model": setup.model.state_dict(), "optimizer": setup.optimizer.state_dict(),
        "rng": rng_state(setup.generator, setup.device),
        "progress": None if progress is None else {
            "bounds": [list(b) for b in progress.bounds], "positions": [p.cpu() for p in progress.positions],
            "step": progress.step, "sums": progress.sums.cpu()},
    }


@dataclass
class RunRecord:
    """What a run accumulates and its state file keeps: the results dict, each classifier's best so far,
    and the best epochs' test predictions; while a new run's data files are still being hashed, the hashing."""

    results: dict
    best: dict
    test_predictions: dict
    hashing: ContentHashing | None = None

    def with_digests(self) -> dict:
        """The results with the data files' digests, waiting for them if need be: what a state must hold for
        `--resume` to see any change of the data."""
        if self.hashing is not None:
            self.results["data_content"] = self.hashing.result()
            self.hashing = None
        return self.results


def _start_record(config: Config, data: DataFolder, output: str, setup: TrainingSetup) -> RunRecord:
    results = {**identity(config, data), "output": output, "environment": {}, "warnings": data.warnings,
               "status": "running", "train_rows": {data.modalities[m].prefix: len(p)
                                                   for m, p in setup.train_positions.items()},
               "history": [], "final": {}}
    best = {c.column: {"best_epoch": 0, "valid": {"weighted_f1": -1.0}} for c in setup.classifiers}
    return RunRecord(results, best, {}, ContentHashing(data))


def _restore(setup: TrainingSetup, state: dict) -> tuple[RunRecord, int, EpochProgress | None]:
    """The record, first epoch and epoch progress of a saved state, with the setup brought back to it."""
    setup.model.load_state_dict(state["model"])
    setup.optimizer.load_state_dict(state["optimizer"])
    restore_rng(state["rng"], setup.generator)
    saved, progress = state["progress"], None
    if saved is not None:
        progress = EpochProgress([tuple(b) for b in saved["bounds"]],
                                 [p.to(setup.sources[m].index_device) for p, m in zip(saved["positions"], setup.step_modalities)],
                                 saved["step"], saved["sums"].to(setup.device))
    record = RunRecord(state["results"], state["best"],
                       {c: v.numpy() for c, v in state["test_predictions"].items()})
    record.results["status"] = "running"
    record.results.setdefault("resumed_at_epoch", []).append(state["epoch"])
    return record, state["epoch"], progress


def _describe_environment(setup: TrainingSetup, data: DataFolder) -> dict:
    prefixes = {m: data.modalities[m].prefix for m in setup.sources}
    return {"torch": str(torch.__version__), "device": str(setup.device),
            "device_name": torch.cuda.get_device_name(setup.device) if setup.device.type == "cuda" else "cpu",
            "precision": setup.precision, **compile_report(setup),
            "data_on_device": {prefixes[m]: s.resident for m, s in setup.sources.items()},
            "resident_data_bytes": sum(s.data.numel() * s.data.element_size() for s in setup.sources.values()
                                       if s.resident),
            "augmentation": {prefixes[m]: a for m, a in setup.augmentations.items()}}


def _log_start(setup: TrainingSetup, data: DataFolder, output: str, first_epoch: int, progress, resumed: bool):
    config = setup.config
    environment = _describe_environment(setup, data)
    logger.info("Config: " + ", ".join(f"{k}={v}" for k, v in sorted(dataclasses.asdict(config).items())))
    logger.info(f"Method: {config.method}  device: {setup.device}  precision {setup.precision}  compiled "
        f"{environment['compiled']}  data on device "
        + " ".join(f"{p}={r}" for p, r in environment["data_on_device"].items()))
    for m in setup.sources:
        modality = data.modalities[m]
        logger.info(f"{modality.prefix}: samples {modality.sample_shape}, encoder {modality.encoder}, augmentation "
            f"{setup.augmentations[m]}, rows " + " ".join(f"{s} {len(r)}" for s, r in modality.splits.items())
            + (f" (training on {len(setup.train_positions[m])} paired rows)" if setup.spec.paired
               and m in setup.train_positions else ""))
    if resumed:
        logger.info(f"Resuming {output} at epoch {first_epoch}" + (f", step {progress.step}" if progress else ""))


def _record_best(setup: TrainingSetup, data: DataFolder, output: str, epoch: int, metrics: dict,
                 record: RunRecord) -> tuple[list[str], dict]:
    """Scores the test split of each classifier whose validation improved and keeps it as the best.
    Returns the improved columns and their checkpoints to write, {path: payload}."""
    improved = [c for c in setup.classifiers
                if metrics[c.column]["valid"]["weighted_f1"] > record.best[c.column]["valid"]["weighted_f1"]]
    if not setup.config.test_every_epoch and setup.config.score_test and improved:
        # the test split is only read at the epochs that model selection can pick
        tested = evaluate(setup, data, ("test",), improved)
        for c in improved:
            if tested[c.column].get("finite", True):
                metrics[c.column]["test"] = tested[c.column]["test"]
                metrics[c.column]["predictions"]["test"] = tested[c.column]["predictions"]["test"]
            else:
                metrics[c.column] = tested[c.column]
        improved = [c for c in improved if metrics[c.column].get("finite", True)]
    checkpoints = {}
    for classifier in improved:
        column, result = classifier.column, metrics[classifier.column]
        encoder = "fused" if classifier.modality is None else data.modalities[classifier.modality].encoder
        record.best[column] = {"encoder": encoder, "best_epoch": epoch, "valid": result["valid"],
                               "test": result.get("test")}  # None: config.score_test off
        if "test" in result:
            record.test_predictions[column] = result["predictions"]["test"]
        checkpoints[checkpoint_path(output, column)] = checkpoint_payload(
            classifier.module, classifier_description(classifier.module, setup.shape, classifier.modality),
            {**data.metadata.get(column, {}),  # class names and preprocessing of prepared folders
             "prefix": column, "position": classifier.modality, "classes": [int(c) for c in data.classes],
             "config": dataclasses.asdict(setup.config), "epoch": epoch,
             "metrics": {"valid": result["valid"], "test": result.get("test")}})
    return [c.column for c in improved], checkpoints


def _epoch_line(config: Config, epoch: int, losses: dict, metrics: dict, improved, train_seconds: float,
                eval_seconds: float, eta: float, terms) -> str:
    loss_text = " ".join(f"{k} {losses[k]:.3f}" for k in terms)
    valid = "  ".join(f"{c} {m['valid']['weighted_f1']:.4f}{'*' if c in improved else ' '}" if "valid" in m
                      else f"{c} non-finite" for c, m in metrics.items())
    return (f"epoch {epoch:>{len(str(config.epochs))}}/{config.epochs}  train {train_seconds:5.1f}s  "
            f"eval {eval_seconds:4.1f}s  eta {format_duration(eta)}  loss {losses['total']:.3f} "
            f"[{loss_text}]  valid wF1 {valid}")


def _finish(setup: TrainingSetup, data: DataFolder, output: str, record: RunRecord, writer: RunWriter) -> dict:
    """Writes the best epochs' test predictions and the final results (with the invariance probe and the
    cross-modal transfer of methods that have invariant parts); removes the resumable state once the
    write in flight (the last epoch's) is done."""
    writer.close()
    results = record.with_digests()
    if setup.spec.invariant_parts:  # read from the best checkpoints: written now
        results.update(invariance_measures(setup, data, output))  # invariance_probe, cross_modal_transfer
    results["background_writes"] = writer.timings
    for column, predictions in record.test_predictions.items():
        user_labels = data.classes[predictions]
        atomic_write(os.path.join(output, f"test_predictions_{column}.npy"),
                     lambda temporary, values=user_labels: save_npy(temporary, values))
        results["final"][column]["test_rows"] = int(len(predictions))
    results["status"] = "finished"
    results["training_seconds"] = sum(h["train_seconds"] + h["eval_seconds"] for h in results["history"])
    results["write_seconds"] = sum(h.get("write_seconds", 0.0) for h in results["history"])
    write_json(os.path.join(output, RESULTS_FILE), results)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(output, STATE_FILE))  # a finished run needs no state; its checkpoints stay
    shutil.rmtree(os.path.join(output, PREVIOUS_RUN_FOLDER), ignore_errors=True)  # replaced: --overwrite's set-aside
    logger.info("")
    logger.info(summary_table(results["final"]))
    logger.info(f"(test metrics at each classifier's best validation epoch; outputs in {output})")
    probe = results.get("invariance_probe")
    if probe is not None and probe["modality_accuracy"] is not None:
        logger.info(f"invariant modality probe on the validation rows: {probe['modality_accuracy']:.3f} ± {probe['std']:.3f} "
            f"(chance {probe['chance']:.1f}; {probe['rows_per_modality']} rows per modality)")
        logger.info(f"({INVARIANCE_MEANING})")
    if results.get("cross_modal_transfer") is not None:
        for line in transfer_lines(results["cross_modal_transfer"]):
            logger.info(line)
        logger.info(f"({TRANSFER_MEANING})")
    return results


def fit(config: Config, data: DataFolder, output: str, state: dict | None = None, should_stop=None,
        on_epoch=None) -> dict:
    """Trains `config.method` on `data` into `output` (from `state` when resuming); the one training
    loop of every method. `on_epoch(entry)`, if given, is called with each epoch's history entry once
    that epoch's results and state are written (tuning reports validation through it). Returns the
    results dict; raises `TrainingError` or `Interrupted`."""
    config = with_method_overrides(config)
    setup = _build_trainer(config, data)
    if state is None:
        record, first_epoch, progress = _start_record(config, data, output, setup), 1, None
    else:
        record, first_epoch, progress = _restore(setup, state)
    _record_environment(setup, data, record.results)
    if config.verbose:
        _log_start(setup, data, output, first_epoch, progress, state is not None)
    os.makedirs(output, exist_ok=True)
    # the epoch's files are written by the writer while the next epoch trains
    with owning(output), cudnn_autotuning(setup.device), StopRequest(should_stop) as stop, \
            RunWriter(output, setup.device) as writer:
        epochs = _Epochs(setup, data, output, record, writer, stop, first_epoch)
        for epoch in range(first_epoch, config.epochs + 1):
            losses = epochs.train(epoch, progress)
            progress = None
            metrics, improved, checkpoints = epochs.evaluate(epoch)
            epochs.write(epoch, losses, metrics, improved, checkpoints)
            if on_epoch is not None:
                writer.wait()  # the hook may stop the process: this epoch's files are on disk first
                on_epoch(record.results["history"][-1])
            if stop() and epoch < config.epochs:
                raise epochs.stopped(Interrupted, f"interrupted ({stop.signal_name}) after epoch {epoch}; state "
                                                  f"saved: resume with {command_for(TRAIN_COMMAND)} --resume {output}")
    return _finish(setup, data, output, record, writer)


def _build_trainer(config: Config, data: DataFolder) -> TrainingSetup:
    device = resolve_device(config.device)
    seed_everything(config.seed)
    try:
        return build_setup(config, data, device)
    except torch.cuda.OutOfMemoryError:
        raise TrainingError(f"GPU out of memory while placing the data and model on {device}: try "
                            "--data-on-device no (data streamed from host memory)") from None


@contextlib.contextmanager
def cudnn_autotuning(device: torch.device):
    """Within the block, on a GPU, cuDNN picks the fastest kernels for the run's fixed input shapes, unless
    deterministic algorithms are asked for (the GPU check's resume step): its timing-based choice may differ
    from one process to the next. The setting is the process's: restored after the run."""
    before = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not torch.are_deterministic_algorithms_enabled()
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _record_environment(setup: TrainingSetup, data: DataFolder, results: dict) -> None:
    """The device, precision, compile and data placement in the results; the data's and setup's warnings
    in the results and on the console."""
    results["environment"] = _describe_environment(setup, data)
    results["warnings"] = [*results["warnings"], *(w for w in setup.warnings if w not in results["warnings"])]
    for warning in data.warnings + setup.warnings:
        logger.warning(warning)


class _Epochs:
    """The steps of one epoch of `fit`, over what they share: training, the non-finite checks, evaluation
    with model selection, the epoch's record and files, its line; and `stopped`, which ends the run."""

    def __init__(self, setup: TrainingSetup, data: DataFolder, output: str, record: RunRecord, writer: RunWriter,
                 stop: StopRequest, first_epoch: int):
        self.setup, self.data, self.output, self.record, self.writer, self.stop = (
            setup, data, output, record, writer, stop)
        self.config, self.first_epoch = setup.config, first_epoch
        self.started = self.last_state = self.epoch_start = time.time()

    def stopped(self, error: type[Exception], message: str) -> Exception:
        """`error(message)` to raise, once the run's stop is recorded: the write in flight finished (it
        holds an older results.json), the status in results.json, and the summary so far shown."""
        status = "failed" if error is TrainingError else "interrupted"
        self.writer.close(failing=status == "failed")
        results = self.record.results
        results["status"] = status
        write_json(os.path.join(self.output, RESULTS_FILE), results)
        if results["final"]:
            logger.info("")
            logger.info(summary_table(results["final"]))
        return error(message)

    def kept(self) -> str:
        epochs = ", ".join(f"{c} epoch {b['best_epoch']}" for c, b in self.record.best.items() if b["best_epoch"])
        return (f"the checkpoints kept in {self.output} are the last finite ones ({epochs})" if epochs
                else f"no checkpoint was written to {self.output}")

    def train(self, epoch: int, progress: EpochProgress | None) -> dict:
        """The epoch's mean losses; a stop request mid-epoch saves the state and ends the run."""
        setup, config = self.setup, self.config
        self.epoch_start = time.time()
        progress = progress or start_epoch(setup)
        bar = console.progress(len(progress.bounds), f"epoch {epoch}/{config.epochs}", progress.step) \
            if config.verbose else None
        try:
            losses = train_one_epoch(setup, epoch, progress, self.stop,
                                     None if bar is None else lambda step, steps: bar.update())
        except torch.cuda.OutOfMemoryError:
            raise self.stopped(TrainingError, (
                f"GPU out of memory at epoch {epoch} with batch size {config.batch_size}: try a smaller "
                f"--batch-size, --data-on-device no, or --precision bf16; {self.kept()}")) from None
        finally:
            if bar is not None:
                bar.close()
        if losses is None:
            self._interrupted_mid_epoch(epoch, progress)
        self._check_finite(epoch, losses)
        self.train_seconds = time.time() - self.epoch_start
        return losses

    def _interrupted_mid_epoch(self, epoch: int, progress: EpochProgress) -> None:
        if not bool(self.setup.finite_weights()):
            raise self.stopped(TrainingError, (
                f"the model holds NaN or Inf at epoch {epoch}, step {progress.step}: training stopped; "
                f"{self.kept()} (try a lower --learning-rate)"))
        record = self.record
        self.writer.write(epoch, record.results, {}, state_payload(self.setup, epoch, progress, record.with_digests(),
                                                                   record.best, record.test_predictions))
        raise self.stopped(Interrupted, (
            f"interrupted ({self.stop.signal_name}) at epoch {epoch}, step {progress.step}/{len(progress.bounds)}; "
            f"state saved: resume with {command_for(TRAIN_COMMAND)} --resume {self.output}"))

    def _check_finite(self, epoch: int, losses: dict) -> None:
        setup, results = self.setup, self.record.results
        if setup.compile_error and "compile_error" not in results["environment"]:
            results["warnings"] = [*results["warnings"], f"torch.compile failed ({setup.compile_error}); "
                                                         "trained eager"]
        results["environment"].update(compile_report(setup))  # graphs compiled so far, or the fallback
        bad = [k for k, v in losses.items() if not math.isfinite(v)]
        if bad or not losses.pop("finite_weights"):
            what = f"loss term {bad[0]} is {losses[bad[0]]}" if bad else "the model holds NaN or Inf"
            raise self.stopped(TrainingError, (
                f"{what} at epoch {epoch}: training stopped; {self.kept()} (try a lower --learning-rate)"))

    def evaluate(self, epoch: int) -> tuple[dict, list[str], dict]:
        """Validation (and test, with --test-every-epoch) metrics, the classifiers that improved and the
        checkpoints to write."""
        splits = ("valid", "test") if self.config.test_every_epoch else ("valid",)
        metrics = evaluate(self.setup, self.data, splits)
        broken = [c for c, m in metrics.items() if not m.get("finite", True)]
        if broken:
            raise self.stopped(TrainingError, (
                f"classifier {broken[0]} outputs NaN or Inf at epoch {epoch}: training stopped; {self.kept()}"))
        improved, checkpoints = _record_best(self.setup, self.data, self.output, epoch, metrics, self.record)
        return metrics, improved, checkpoints

    def write(self, epoch: int, losses: dict, metrics: dict, improved: list[str], checkpoints: dict) -> None:
        """The epoch's history entry, its files (with the state when one is due) and its line."""
        config, record = self.config, self.record
        results = record.results
        eval_seconds = time.time() - self.epoch_start - self.train_seconds
        entry = {"epoch": epoch, "train_seconds": self.train_seconds, "eval_seconds": eval_seconds, "loss": losses,
                 **{c: {s: m[s] for s in ("valid", "test") if s in m} for c, m in metrics.items()},
                 "improved": improved}
        results["history"].append(entry)
        results["final"] = {c: b for c, b in record.best.items() if b["best_epoch"]}
        snapshot = epoch < config.epochs and (self.stop() or time.time() - self.last_state >= config.save_every_seconds
                                              or (config.save_every > 0 and epoch % config.save_every == 0))
        entry["state_written"] = snapshot
        state_now = state_payload(self.setup, epoch + 1, None, record.with_digests(), record.best,
                                  record.test_predictions) if snapshot else None
        # the files this epoch wrote hold the history up to here; the write time joins the next ones
        entry["write_seconds"] = self.writer.write(epoch, results, checkpoints, state_now)
        entry["write_wait_seconds"] = self.writer.waited  # part of it: the previous write
        self.last_state = time.time() if snapshot else self.last_state
        if config.verbose:
            elapsed = time.time() - self.started
            eta = elapsed / (epoch - self.first_epoch + 1) * (config.epochs - epoch)
            logger.info(_epoch_line(config, epoch, losses, metrics, improved, self.train_seconds, eval_seconds, eta,
                                    self.setup.spec.terms))
