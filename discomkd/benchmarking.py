"""Training speed on synthetic data, with the real training code: the synthetic data folders, the timed
epochs of the engine (`measure`) and the timed runs with every file written (`measure_end_to_end`).
`benchmark.py` and the GPU check (`tools/gpu_check.py`) run them. This module knows no command line.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time

import numpy as np
import torch

from discomkd.config import Config, resolve_device, seed_everything
from discomkd.data import array_path, load_data_folder, write_split_files
from discomkd.engine import build_setup, compile_report, evaluate, start_epoch, train_one_epoch
from discomkd.splits import stratified_split
from discomkd.training import cudnn_autotuning, fit

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
    """Trains `epochs` epochs of `method` with the one training loop (`training.fit`, as `functions.run`
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
