"""Training speed of DisCoM-KD on synthetic data, with the real training code.

    python benchmark.py                      # EuroSAT MS+SAR shapes (27,000 x 13x64x64 + 2x64x64), GPU
    python benchmark.py --shape cpu-small    # 1,714 x 3x32x32 + 1x32x32 (1,200 training pairs), for CPUs
    python benchmark.py --shape cpu-small --compare-plain   # fast path and plain path in one run
    python benchmark.py --end-to-end --compare-plain        # the real run: every file written, and the baselines

Generates the data itself (in a temporary folder, deleted afterwards), trains a few epochs at the
paper's hyperparameters and prints and saves (JSON): training and evaluation time per epoch,
pairs per second, peak GPU memory (model side and resident data apart), device, PyTorch version
and the options. The first epoch (torch.compile, cuDNN autotuning, CUDA graph capture) is
reported apart and left out of the averages.

`--end-to-end` times what users run instead: `functions.run` itself, writing every file (results.json
at each epoch, the checkpoints at each improvement, a state.pt snapshot at every epoch, the
predictions at the end) into a temporary folder, for DisCoM-KD and the baselines' step (methods mono
and teacher, through the same engine), with per epoch the training, the evaluation, the file writing
on the training thread and the background writing apart.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

from discomkd.config import Config, check_config, plain_path, resolve_device, seed_everything
from discomkd.data import array_path, default_encoder, load_data_folder
from discomkd.engine import build_trainer, evaluate, start_epoch, train_one_epoch
from discomkd.errors import DataError
from discomkd.run_files import folder_problem, line_buffered_stdout
from discomkd.splits import stratified_split
from functions import run
from model_pytorch import ENCODERS

# EuroSAT as the authors prepare it: 13-band multispectral and 2-band SAR 64x64 patches, 10 classes.
SHAPES = {
    "eurosat": {"samples": 27000, "first": (13, 64, 64), "second": (2, 64, 64), "classes": 10},
    # the shape of the published code's 2-core CPU figure: 1,200 training pairs (70% of 1,714)
    "cpu-small": {"samples": 1714, "first": (3, 32, 32), "second": (1, 32, 32), "classes": 10},
    "tiny": {"samples": 64, "first": (1, 12, 12), "second": (6,), "classes": 3},
}
_CHUNK_ROWS = 1024  # rows generated per write, so a 6 GB synthetic array never sits in memory at once


def write_synthetic_folder(folder: str, samples: int, first: tuple, second: tuple, classes: int,
                           seed: int = 0) -> None:
    """A data folder of random float32 arrays with a class-dependent offset (so training has signal)."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(samples) % classes).astype(np.int64)
    rng.shuffle(labels)
    for prefix, shape in (("FIRST", first), ("SECOND", second)):
        array = np.lib.format.open_memmap(array_path(folder, prefix), mode="w+", dtype=np.float32,
                                          shape=(samples,) + tuple(shape))
        offsets = rng.standard_normal((classes,) + tuple(shape), dtype=np.float32)
        for start in range(0, samples, _CHUNK_ROWS):
            rows = slice(start, min(samples, start + _CHUNK_ROWS))
            noise = rng.standard_normal((rows.stop - start,) + tuple(shape), dtype=np.float32)
            array[rows] = offsets[labels[rows]] + noise
        array.flush()
        del array
    np.save(os.path.join(folder, "labels.npy"), labels)
    for split, rows in stratified_split(labels, seed).items():
        np.save(os.path.join(folder, f"{split}_idx.npy"), rows)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(config: Config, folder: str, epochs: int) -> dict:
    """Trains `epochs` epochs (plus evaluation after each) and returns the timings and memory."""
    data = load_data_folder(folder, "FIRST", "SECOND", (config.encoder_first, config.encoder_second))
    device = resolve_device(config.device)
    seed_everything(config.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)
    trainer = build_trainer(config, data, device)
    data_bytes = sum(s.data.numel() * s.data.element_size() for s in trainer.sources.values() if s.resident)
    train_seconds, eval_seconds = [], []
    for epoch in range(1, epochs + 1):
        _synchronize(device)
        start = time.perf_counter()
        train_one_epoch(trainer, epoch, start_epoch(trainer))  # returns after reading the losses: synchronised
        middle = time.perf_counter()
        evaluate(trainer, data)
        _synchronize(device)
        train_seconds.append(middle - start)
        eval_seconds.append(time.perf_counter() - middle)
    steady = slice(1, None) if epochs > 1 else slice(None)
    train_mean = float(np.mean(train_seconds[steady]))
    eval_mean = float(np.mean(eval_seconds[steady]))
    pairs = max(len(p) for p in trainer.train_positions.values())
    result = {
        "first_epoch_train_seconds": train_seconds[0], "first_epoch_eval_seconds": eval_seconds[0],
        "train_seconds_per_epoch": train_mean, "eval_seconds_per_epoch": eval_mean,
        "epoch_seconds": train_mean + eval_mean, "pairs_per_second": pairs / train_mean,
        "training_pairs": pairs, "steps_per_epoch": -(-pairs // config.batch_size),
        "all_train_seconds": train_seconds, "all_eval_seconds": eval_seconds,
        "precision": trainer.precision, "compiled": trainer.compiled_terms is not None,
        "data_on_device": [s.resident for s in trainer.sources.values()], "resident_data_gib": data_bytes / 2**30,
    }
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        result["peak_gpu_gib"] = peak / 2**30
        result["peak_model_side_gib"] = (peak - data_bytes) / 2**30
    return result


END_TO_END_METHODS = ("discomkd", "mono", "teacher")  # DisCoM-KD and the baselines' steps (kd/dkd need a teacher)


def measure_end_to_end(config: Config, folder: str, epochs: int, method: str) -> dict:
    """Runs `functions.run` for `epochs` epochs of `method` into a temporary folder (a state.pt snapshot
    at every epoch, the worst case of the cadence) and returns per-epoch and mean timings, and memory."""
    device = resolve_device(config.device)
    output = tempfile.mkdtemp(prefix="discomkd-benchmark-run-")
    config = dataclasses.replace(config, epochs=epochs, output=output, overwrite=True, method=method,
                                 modality="FIRST" if method == "mono" else None, save_every_seconds=0.0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        started = time.perf_counter()
        results = run(config, folder, "FIRST", "SECOND", log=lambda *args: None)
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


def memory_text(result: dict) -> str:
    """The peak GPU memory part of a printed result line ("" on a CPU)."""
    if "peak_gpu_gib" not in result:
        return ""
    return (f"  peak GPU {result['peak_gpu_gib']:.2f} GiB (model side {result['peak_model_side_gib']:.2f}, "
            f"resident data {result['resident_data_gib']:.2f})")


def print_end_to_end(name: str, result: dict) -> None:
    mean = result["mean"]
    memory = memory_text(result)
    print(f"{name:>5} {result['method']:>8}: whole {mean['whole']:.2f} s/epoch = train {mean['train']:.2f} + eval "
          f"{mean['eval']:.2f} + writes {mean['write']:.3f} on the training thread ({100 * mean['write'] / mean['whole']:.1f}%, "
          f"{mean['write_wait']:.3f} of it waiting for the previous write,"
          f" state.pt {result['state_bytes'] / 1e6:.0f} MB every epoch); background writing {mean['background_write']:.2f}"
          f" s/epoch; run {result['run_seconds']:.1f} s" + memory, flush=True)


def check_options(preset: dict, epochs: int, config: Config, output: str) -> None:
    """Raises `DataError` for options the benchmark cannot run with, before anything is generated."""
    check_config(config)
    if epochs < 1:
        raise DataError(f"--epochs {epochs}: at least 1 is expected")
    if preset["classes"] < 2:
        raise DataError(f"--classes {preset['classes']}: at least 2 are expected")
    # 3 rows per class give every class a row in each split, and at least 2 training rows in all
    if preset["samples"] < 3 * preset["classes"]:
        raise DataError(f"--samples {preset['samples']}: at least 3 per class ({3 * preset['classes']}) are expected")
    for option, prefix, shape in (("--first-shape", "FIRST", preset["first"]),
                                  ("--second-shape", "SECOND", preset["second"])):
        if not 1 <= len(shape) <= 3 or min(shape) < 1:
            raise DataError(f"{option} {' '.join(map(str, shape))}: 1 to 3 positive sizes are expected "
                            "(C H W images, C L sequences or F vectors)")
        encoder = default_encoder(prefix, tuple(shape))
        spatial = tuple(shape)[1:] if ENCODERS[encoder].rank is not None else ()
        if spatial and min(spatial) < ENCODERS[encoder].min_size:
            raise DataError(f"{option} {' '.join(map(str, shape))}: too small for encoder {encoder}, which needs at "
                            f"least {ENCODERS[encoder].min_size} in each spatial dimension")
    needed = preset["samples"] * (int(np.prod(preset["first"])) + int(np.prod(preset["second"]))) * 4  # float32
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if needed > free:
        raise DataError(f"--samples {preset['samples']}: the synthetic data needs {needed / 2**30:.1f} GiB, "
                        f"{tempfile.gettempdir()} has {free / 2**30:.1f} GiB free")
    if folder_problem(output) is not None:
        raise DataError(f"{output}: {folder_problem(output)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="eurosat", help="preset data shape")
    parser.add_argument("--samples", type=int, help="number of rows (overrides the preset)")
    parser.add_argument("--first-shape", type=int, nargs="+", help="first modality sample shape, e.g. 13 64 64")
    parser.add_argument("--second-shape", type=int, nargs="+", help="second modality sample shape")
    parser.add_argument("--classes", type=int, help="number of classes")
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed (the first is reported apart)")
    parser.add_argument("--batch-size", type=int, default=Config.batch_size, help="training batch per modality")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--precision", default="auto", help="auto, fp32, bf16")
    parser.add_argument("--compile", default="auto", help="auto, yes, no")
    parser.add_argument("--data-on-device", default="auto", help="auto, yes, no")
    parser.add_argument("--compare-plain", action="store_true",
                        help="also time the plain path (no compile, fp32, streamed data) in the same run")
    parser.add_argument("--end-to-end", action="store_true",
                        help="time functions.run itself (every file written, a state.pt every epoch) for DisCoM-KD "
                             "and the baselines' step (mono, teacher)")
    parser.add_argument("--methods", default=",".join(END_TO_END_METHODS),
                        help="with --end-to-end: the methods timed, comma-separated")
    parser.add_argument("--output", default="benchmark_results", help="folder for the JSON result")
    return parser


def main(argv=None) -> int:
    line_buffered_stdout()
    parser = build_parser()
    args = parser.parse_args(argv)

    preset = dict(SHAPES[args.shape])
    for key, value in (("samples", args.samples), ("first", args.first_shape), ("second", args.second_shape),
                       ("classes", args.classes)):
        if value is not None:
            preset[key] = tuple(value) if isinstance(value, list) else value
    config = Config(batch_size=args.batch_size, device=args.device, precision=args.precision,
                    compile=args.compile, data_on_device=args.data_on_device, verbose=0)
    methods = [m for m in args.methods.split(",") if m]
    try:
        check_options(preset, args.epochs, config, args.output)
        unknown = [m for m in methods if m not in END_TO_END_METHODS]
        if args.end_to_end and (unknown or not methods):
            raise DataError(f"--methods {args.methods}: expected some of {', '.join(END_TO_END_METHODS)}, comma-separated")
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    device = resolve_device(config.device)
    report = {
        "shape": {k: list(v) if isinstance(v, tuple) else v for k, v in preset.items()},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "torch": str(torch.__version__), "epochs": args.epochs, "config": dataclasses.asdict(config), "runs": {},
    }
    folder = tempfile.mkdtemp(prefix="discomkd-benchmark-")
    try:
        started = time.perf_counter()
        write_synthetic_folder(folder, preset["samples"], preset["first"], preset["second"], preset["classes"])
        report["data_generation_seconds"] = time.perf_counter() - started
        variants = {"fast": config}
        if args.compare_plain:
            variants["plain"] = plain_path(config)
        if args.end_to_end:
            report["end_to_end"] = {}
            for name, variant in variants.items():
                for method in methods:
                    result = measure_end_to_end(variant, folder, args.epochs, method)
                    report["end_to_end"].setdefault(name, {})[method] = result
                    print_end_to_end(name, result)
            if args.compare_plain:
                ratios = {m: report["end_to_end"]["plain"][m]["mean"]["whole"] / report["end_to_end"]["fast"][m]["mean"]["whole"]
                          for m in methods}
                report["plain_over_fast_end_to_end_ratio"] = ratios
                print("whole epoch, end to end: plain / fast = " + ", ".join(f"{m} {r:.2f}x" for m, r in ratios.items()))
            variants = {}
        for name, variant in variants.items():
            report["runs"][name] = result = measure(variant, folder, args.epochs)
            memory = memory_text(result)
            print(f"{name:>5}: train {result['train_seconds_per_epoch']:.2f} s/epoch  eval "
                  f"{result['eval_seconds_per_epoch']:.2f} s/epoch  {result['pairs_per_second']:.0f} pairs/s  "
                  f"(first epoch {result['first_epoch_train_seconds']:.1f} + {result['first_epoch_eval_seconds']:.1f} s; "
                  f"{result['precision']}, compiled {result['compiled']}, data on device {result['data_on_device']})"
                  + memory, flush=True)
        if args.compare_plain and not args.end_to_end:
            ratio = report["runs"]["plain"]["epoch_seconds"] / report["runs"]["fast"]["epoch_seconds"]
            report["plain_over_fast_epoch_ratio"] = ratio
            print(f"whole epoch (train + eval): plain / fast = {ratio:.2f}x")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"device: {report['device']}, torch {report['torch']}, shape {report['shape']}")
    os.makedirs(args.output, exist_ok=True)
    path = os.path.join(args.output, f"benchmark_{args.shape}_{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as handle:
        json.dump(report, handle, indent=1)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
