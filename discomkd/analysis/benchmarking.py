"""Training speed on synthetic data, with the real training code: the synthetic data folders, the timed
epochs of the training step (`measure`), the timed runs with every file written (`measure_end_to_end`), and
the benchmark as discomkd-benchmark runs it (`check_benchmark`, `run_benchmark`: lines logged, a JSON report
saved). The GPU check (`gpu_check.py`) runs the measurements too. This module knows no command line.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shutil
import tempfile
import time

import numpy as np
import torch

from discomkd.data.folder import array_path, default_encoder, load_data_folder, write_split_files
from discomkd.data.splits import stratified_split
from discomkd.models.discomkd import ENCODERS
from discomkd.training.config import Config, check_config, plain_path, resolve_device
from discomkd.training.epoch import compile_report, start_epoch, train_one_epoch
from discomkd.training.loop import cudnn_autotuning, fit
from discomkd.training.scores import evaluate
from discomkd.training.setup import build_setup
from discomkd.utils.errors import DataError, OptionError
from discomkd.utils.files import folder_problem
from discomkd.utils.seeds import seed_everything

logger = logging.getLogger(__name__)

# EuroSAT as the authors prepare it: 13-band multispectral and 2-band SAR 64x64 patches, 10 classes.
SHAPES = {
    "eurosat": {"samples": 27000, "first": (13, 64, 64), "second": (2, 64, 64), "classes": 10},
    # the shape of the published code's 2-core CPU figure: 1,200 training pairs (70% of 1,714)
    "cpu-small": {"samples": 1714, "first": (3, 32, 32), "second": (1, 32, 32), "classes": 10},
    "tiny": {"samples": 64, "first": (1, 12, 12), "second": (6,), "classes": 3},
}
PREFIXES = ("FIRST", "SECOND")  # the synthetic folders' modalities
# Rows per write, and the rows of noise drawn per modality: a 6.6 GB EuroSAT-shape array is written in
# seconds, without ever sitting in memory at once.
_CHUNK_ROWS = 1024
END_TO_END_METHODS = ("discomkd", "mono", "teacher")  # DisCoM-KD and the baselines' steps (kd/dkd need a teacher)


def write_synthetic_folder(folder: str, samples: int, first: tuple, second: tuple, classes: int,
                           seed: int = 0) -> None:
    """A data folder of float32 arrays: a class-dependent offset (so training has signal) plus noise.

    The noise of row r is row r % 1024 of one block of standard normal rows drawn per modality: drawing
    fresh noise for all rows would take about a minute at the EuroSAT shape (1.7e9 values), against a
    few seconds of adding. Rows 1024 apart therefore share their noise: data to time training on, not
    to judge accuracy by.
    """
    rng = np.random.default_rng(seed)
    labels = (np.arange(samples) % classes).astype(np.int64)
    rng.shuffle(labels)
    for prefix, shape in zip(PREFIXES, (first, second)):
        path = array_path(folder, prefix)
        header = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(samples,) + tuple(shape))
        data_offset = header.offset  # the .npy header is written; the rows follow it
        del header
        offsets = rng.standard_normal((classes,) + tuple(shape), dtype=np.float32)
        noise = rng.standard_normal((min(samples, _CHUNK_ROWS),) + tuple(shape), dtype=np.float32)
        chunk = np.empty_like(noise)
        # sequential writes: twice as fast as filling the memory map page by page
        with open(path, "r+b") as handle:
            handle.seek(data_offset)
            for start in range(0, samples, _CHUNK_ROWS):
                rows = chunk[:min(samples, start + _CHUNK_ROWS) - start]
                np.take(offsets, labels[start:start + len(rows)], axis=0, out=rows)
                rows += noise[:len(rows)]
                handle.write(rows)
    np.save(os.path.join(folder, "labels.npy"), labels)
    write_split_files(folder, stratified_split(labels, seed))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(config: Config, folder: str, epochs: int) -> dict:
    """Trains `epochs` epochs (plus evaluation after each) and returns the timings and memory."""
    data = load_data_folder(folder, *PREFIXES, (config.encoder_first, config.encoder_second))
    device = resolve_device(config.device)
    seed_everything(config.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    setup = build_setup(config, data, device)
    data_bytes = sum(s.data.numel() * s.data.element_size() for s in setup.sources.values() if s.resident)
    train_seconds, eval_seconds = [], []
    with cudnn_autotuning(device):
        for epoch in range(1, epochs + 1):
            _synchronize(device)
            start = time.perf_counter()
            train_one_epoch(setup, epoch, start_epoch(setup))  # returns after reading the losses: synchronised
            middle = time.perf_counter()
            evaluate(setup, data)
            _synchronize(device)
            train_seconds.append(middle - start)
            eval_seconds.append(time.perf_counter() - middle)
    steady = slice(1, None) if epochs > 1 else slice(None)
    train_mean = float(np.mean(train_seconds[steady]))
    eval_mean = float(np.mean(eval_seconds[steady]))
    pairs = max(len(p) for p in setup.train_positions.values())
    result = {
        "first_epoch_train_seconds": train_seconds[0], "first_epoch_eval_seconds": eval_seconds[0],
        "train_seconds_per_epoch": train_mean, "eval_seconds_per_epoch": eval_mean,
        "epoch_seconds": train_mean + eval_mean, "pairs_per_second": pairs / train_mean,
        "training_pairs": pairs, "steps_per_epoch": -(-pairs // config.batch_size),
        "all_train_seconds": train_seconds, "all_eval_seconds": eval_seconds,
        "precision": setup.precision, **compile_report(setup),
        "data_on_device": [s.resident for s in setup.sources.values()], "resident_data_gib": data_bytes / 2**30,
    }
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        result["peak_gpu_gib"] = peak / 2**30
        result["peak_model_side_gib"] = (peak - data_bytes) / 2**30
    return result


def measure_end_to_end(config: Config, folder: str, epochs: int, method: str) -> dict:
    """Trains `epochs` epochs of `method` with the one training loop (`loop.fit`, as `training.run.run`
    does) into a temporary folder, a state.pt snapshot at every epoch (the worst case of the cadence), and
    returns per-epoch and mean timings, and memory."""
    device = resolve_device(config.device)
    output = tempfile.mkdtemp(prefix="discomkd-benchmark-run-")
    config = dataclasses.replace(config, epochs=epochs, output=output, overwrite=True, method=method,
                                 modality=PREFIXES[0] if method == "mono" else None, save_every_seconds=0.0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        started = time.perf_counter()
        data = load_data_folder(folder, *PREFIXES, (config.encoder_first, config.encoder_second))
        results = fit(config, data, output)
        wall = time.perf_counter() - started
    finally:
        shutil.rmtree(output, ignore_errors=True)
    background = {t["epoch"]: t for t in results["background_writes"]}
    epochs_timed = [{
        "train": h["train_seconds"], "eval": h["eval_seconds"], "write": h["write_seconds"],
        "write_wait": h["write_wait_seconds"],
        "whole": h["train_seconds"] + h["eval_seconds"] + h["write_seconds"],
        "background_write": background[h["epoch"]]["seconds"], "state": h["state_written"],
        "state_bytes": background[h["epoch"]]["state_bytes"], "improved": h["improved"]} for h in results["history"]]
    steady = epochs_timed[1:] if epochs > 1 else epochs_timed
    mean = {k: float(np.mean([e[k] for e in steady])) for k in ("train", "eval", "write", "write_wait", "whole",
                                                                  "background_write")}
    snapshots = [e for e in steady if e["state"]] or [e for e in epochs_timed if e["state"]]
    result = {"method": method, "epochs": epochs_timed, "mean": mean, "run_seconds": wall,
              "state_bytes": max((e["state_bytes"] for e in epochs_timed), default=0),
              "state_write_share_of_epoch": (float(np.mean([e["write"] for e in snapshots])) / mean["whole"]
                                             if snapshots else 0.0),
              "environment": results["environment"]}
    if device.type == "cuda":
        peak, data_bytes = torch.cuda.max_memory_allocated(device), results["environment"]["resident_data_bytes"]
        result.update(peak_gpu_gib=peak / 2**30, peak_model_side_gib=(peak - data_bytes) / 2**30,
                      resident_data_gib=data_bytes / 2**30)
    return result


# ----------------------------------------------------------------------------- the benchmark command's run
@dataclasses.dataclass(frozen=True)
class Benchmark:
    """What discomkd-benchmark times: the synthetic data's shape (a SHAPES preset, maybe changed), the settings,
    the epochs, and either the training step (`measure`) or, `end_to_end`, whole runs of `methods`; `compare_plain`
    adds the plain path. The JSON report goes to the folder `output`."""

    shape_name: str
    preset: dict
    config: Config
    epochs: int
    end_to_end: bool
    methods: tuple[str, ...]
    compare_plain: bool
    output: str


def check_benchmark(plan: Benchmark) -> None:
    """Raises `OptionError` or `DataError` for settings the benchmark cannot run with, before anything is generated."""
    preset = plan.preset
    check_config(plan.config)
    if plan.epochs < 1:
        raise OptionError(f"--epochs {plan.epochs}: at least 1 is expected")
    if preset["classes"] < 2:
        raise OptionError(f"--classes {preset['classes']}: at least 2 are expected")
    # 3 rows per class give every class a row in each split, and at least 2 training rows in all
    if preset["samples"] < 3 * preset["classes"]:
        raise OptionError(f"--samples {preset['samples']}: at least 3 per class ({3 * preset['classes']}) are expected")
    for option, prefix, shape in (("--first-shape", "FIRST", preset["first"]),
                                  ("--second-shape", "SECOND", preset["second"])):
        _check_shape(option, prefix, tuple(shape))
    needed = preset["samples"] * (int(np.prod(preset["first"])) + int(np.prod(preset["second"]))) * 4  # float32
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if needed > free:
        raise OptionError(f"--samples {preset['samples']}: the synthetic data needs {needed / 2**30:.1f} GiB, "
                          f"{tempfile.gettempdir()} has {free / 2**30:.1f} GiB free")
    if folder_problem(plan.output) is not None:
        raise DataError(f"{plan.output}: {folder_problem(plan.output)}")


def _check_shape(option: str, prefix: str, shape: tuple[int, ...]) -> None:
    if not 1 <= len(shape) <= 3 or min(shape) < 1:
        raise OptionError(f"{option} {' '.join(map(str, shape))}: 1 to 3 positive sizes are expected "
                          "(C H W images, C L sequences or F vectors)")
    encoder = default_encoder(prefix, shape)
    spatial = shape[1:] if ENCODERS[encoder].rank is not None else ()
    if spatial and min(spatial) < ENCODERS[encoder].min_size:
        raise OptionError(f"{option} {' '.join(map(str, shape))}: too small for encoder {encoder}, which needs at "
                          f"least {ENCODERS[encoder].min_size} in each spatial dimension")


def run_benchmark(plan: Benchmark) -> dict:
    """Generates the data in a temporary folder (removed afterwards), times what `plan` asks, logs a line per
    measurement and saves the report as OUTPUT/benchmark_<shape>_<time>.json; returns the report."""
    device = resolve_device(plan.config.device)
    report = {
        "shape": {k: list(v) if isinstance(v, tuple) else v for k, v in plan.preset.items()},
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"),
        "torch": str(torch.__version__), "epochs": plan.epochs, "config": dataclasses.asdict(plan.config), "runs": {},
    }
    variants = {"fast": plan.config, **({"plain": plain_path(plan.config)} if plan.compare_plain else {})}
    folder = tempfile.mkdtemp(prefix="discomkd-benchmark-")
    try:
        started = time.perf_counter()
        preset = plan.preset
        write_synthetic_folder(folder, preset["samples"], preset["first"], preset["second"], preset["classes"])
        report["data_generation_seconds"] = time.perf_counter() - started
        if plan.end_to_end:
            _time_end_to_end(report, variants, folder, plan.epochs, plan.methods)
        else:
            _time_steps(report, variants, folder, plan.epochs)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    logger.info(f"device: {report['device']}, torch {report['torch']}, shape {report['shape']}")
    os.makedirs(plan.output, exist_ok=True)
    path = os.path.join(plan.output, f"benchmark_{plan.shape_name}_{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as handle:
        json.dump(report, handle, indent=1)
    logger.info(f"saved {path}")
    return report


def _time_steps(report: dict, variants: dict[str, Config], folder: str, epochs: int) -> None:
    for name, variant in variants.items():
        report["runs"][name] = result = measure(variant, folder, epochs)
        logger.info(f"{name:>5}: train {result['train_seconds_per_epoch']:.2f} s/epoch  eval "
                    f"{result['eval_seconds_per_epoch']:.2f} s/epoch  {result['pairs_per_second']:.0f} pairs/s  "
                    f"(first epoch {result['first_epoch_train_seconds']:.1f} + {result['first_epoch_eval_seconds']:.1f}"
                    f" s; {result['precision']}, compiled {result['compiled']}, data on device "
                    f"{result['data_on_device']})" + memory_text(result))
    if "plain" in variants:
        ratio = report["runs"]["plain"]["epoch_seconds"] / report["runs"]["fast"]["epoch_seconds"]
        report["plain_over_fast_epoch_ratio"] = ratio
        logger.info(f"whole epoch (train + eval): plain / fast = {ratio:.2f}x")


def _time_end_to_end(report: dict, variants: dict[str, Config], folder: str, epochs: int,
                     methods: tuple[str, ...]) -> None:
    report["end_to_end"] = {}
    for name, variant in variants.items():
        for method in methods:
            result = measure_end_to_end(variant, folder, epochs, method)
            report["end_to_end"].setdefault(name, {})[method] = result
            logger.info(end_to_end_line(name, result))
    if "plain" in variants:
        ratios = {m: report["end_to_end"]["plain"][m]["mean"]["whole"] / report["end_to_end"]["fast"][m]["mean"]["whole"]
                  for m in methods}
        report["plain_over_fast_end_to_end_ratio"] = ratios
        logger.info("whole epoch, end to end: plain / fast = " + ", ".join(f"{m} {r:.2f}x" for m, r in ratios.items()))


def memory_text(result: dict) -> str:
    """The peak GPU memory part of a result line ("" on a CPU)."""
    if "peak_gpu_gib" not in result:
        return ""
    return (f"  peak GPU {result['peak_gpu_gib']:.2f} GiB (model side {result['peak_model_side_gib']:.2f}, "
            f"resident data {result['resident_data_gib']:.2f})")


def end_to_end_line(name: str, result: dict) -> str:
    mean = result["mean"]
    return (f"{name:>5} {result['method']:>8}: whole {mean['whole']:.2f} s/epoch = train {mean['train']:.2f} + eval "
            f"{mean['eval']:.2f} + writes {mean['write']:.3f} on the training thread "
            f"({100 * mean['write'] / mean['whole']:.1f}%, {mean['write_wait']:.3f} of it waiting for the previous "
            f"write, state.pt {result['state_bytes'] / 1e6:.0f} MB every epoch); background writing "
            f"{mean['background_write']:.2f} s/epoch; run {result['run_seconds']:.1f} s" + memory_text(result))
