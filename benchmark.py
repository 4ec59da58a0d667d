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

`--end-to-end` times what users run instead: the one training loop (`training.fit`), writing every
file (results.json at each epoch, the checkpoints at each improvement, a state.pt snapshot at every
epoch, the predictions at the end) into a temporary folder, for DisCoM-KD and the baselines' step (methods mono
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

from discomkd.benchmarking import (
    END_TO_END_METHODS,
    SHAPES,
    measure,
    measure_end_to_end,
    write_synthetic_folder,
)
from discomkd.config import Config, check_config, plain_path, resolve_device
from discomkd.console import configure_output
from discomkd.data import default_encoder
from discomkd.errors import BadInput, DataError, OptionError
from discomkd.run_files import folder_problem
from model_pytorch import ENCODERS


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
        raise OptionError(f"--epochs {epochs}: at least 1 is expected")
    if preset["classes"] < 2:
        raise OptionError(f"--classes {preset['classes']}: at least 2 are expected")
    # 3 rows per class give every class a row in each split, and at least 2 training rows in all
    if preset["samples"] < 3 * preset["classes"]:
        raise OptionError(f"--samples {preset['samples']}: at least 3 per class ({3 * preset['classes']}) are expected")
    for option, prefix, shape in (("--first-shape", "FIRST", preset["first"]),
                                  ("--second-shape", "SECOND", preset["second"])):
        if not 1 <= len(shape) <= 3 or min(shape) < 1:
            raise OptionError(f"{option} {' '.join(map(str, shape))}: 1 to 3 positive sizes are expected "
                            "(C H W images, C L sequences or F vectors)")
        encoder = default_encoder(prefix, tuple(shape))
        spatial = tuple(shape)[1:] if ENCODERS[encoder].rank is not None else ()
        if spatial and min(spatial) < ENCODERS[encoder].min_size:
            raise OptionError(f"{option} {' '.join(map(str, shape))}: too small for encoder {encoder}, which needs at "
                            f"least {ENCODERS[encoder].min_size} in each spatial dimension")
    needed = preset["samples"] * (int(np.prod(preset["first"])) + int(np.prod(preset["second"]))) * 4  # float32
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if needed > free:
        raise OptionError(f"--samples {preset['samples']}: the synthetic data needs {needed / 2**30:.1f} GiB, "
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
    parser.add_argument("--methods", default=None,
                        help=f"with --end-to-end only: the methods timed, comma-separated, among "
                             f"{','.join(END_TO_END_METHODS)} (default: all)")
    parser.add_argument("--output", default="benchmark_results", help="folder for the JSON result")
    return parser


def main(argv=None) -> int:
    configure_output()
    parser = build_parser()
    args = parser.parse_args(argv)

    preset = dict(SHAPES[args.shape])
    for key, value in (("samples", args.samples), ("first", args.first_shape), ("second", args.second_shape),
                       ("classes", args.classes)):
        if value is not None:
            preset[key] = tuple(value) if isinstance(value, list) else value
    config = Config(batch_size=args.batch_size, device=args.device, precision=args.precision,
                    compile=args.compile, data_on_device=args.data_on_device, verbose=0)
    methods = list(END_TO_END_METHODS) if args.methods is None else list(dict.fromkeys(
        m.strip() for m in args.methods.split(",") if m.strip()))
    try:
        check_options(preset, args.epochs, config, args.output)
        # refused whether or not --end-to-end is given: a method that would never be timed is no less a mistake
        if not methods or any(m not in END_TO_END_METHODS for m in methods):
            raise OptionError(f"--methods {args.methods}: expected some of {', '.join(END_TO_END_METHODS)}, comma-separated")
        if args.methods is not None and not args.end_to_end:
            raise OptionError(f"--methods {args.methods}: applies with --end-to-end only (without it the benchmark "
                              "times DisCoM-KD's training step)")
    except BadInput as error:
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
