"""discomkd-benchmark (benchmark.py): training speed of DisCoM-KD on synthetic data, with the real training code.

    discomkd-benchmark                      # EuroSAT MS+SAR shapes (27,000 x 13x64x64 + 2x64x64), GPU
    discomkd-benchmark --shape cpu-small    # 1,714 x 3x32x32 + 1x32x32 (1,200 training pairs), for CPUs
    discomkd-benchmark --shape cpu-small --compare-plain   # fast path and plain path in one run
    discomkd-benchmark --end-to-end --compare-plain        # the real run: every file written, and the baselines

Generates the data itself (in a temporary folder, deleted afterwards), trains a few epochs at the
paper's hyperparameters and prints and saves (JSON): training and evaluation time per epoch,
pairs per second, peak GPU memory (model side and resident data apart), device, PyTorch version
and the options. The first epoch (torch.compile, cuDNN autotuning, CUDA graph capture) is
reported apart and left out of the averages.

`--end-to-end` times what users run instead: the one training loop (`loop.fit`), writing every
file (results.json at each epoch, the checkpoints at each improvement, a state.pt snapshot at every
epoch, the predictions at the end) into a temporary folder, for DisCoM-KD and the baselines' step (methods mono
and teacher, through the same training loop), with per epoch the training, the evaluation, the file writing
on the training thread and the background writing apart.

The work is the library's: `discomkd.analysis.benchmarking`.
"""
from __future__ import annotations

import argparse

from discomkd.analysis.benchmarking import END_TO_END_METHODS, SHAPES, Benchmark, check_benchmark, run_benchmark
from discomkd.commands.entry import CommandLine, run_command
from discomkd.training.config import Config
from discomkd.utils.errors import OptionError


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
                        help="time the one training loop as a run uses it (every file written, a state.pt every "
                             "epoch) for DisCoM-KD and the baselines' step (mono, teacher)")
    parser.add_argument("--methods", default=None,
                        help=f"with --end-to-end only: the methods timed, comma-separated, among "
                             f"{','.join(END_TO_END_METHODS)} (default: all)")
    parser.add_argument("--output", default="benchmark_results", help="folder for the JSON result")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, benchmark)


def benchmark(line: CommandLine) -> None:
    options = line.options
    preset = dict(SHAPES[options["shape"]])
    for key, option in (("samples", "samples"), ("first", "first_shape"), ("second", "second_shape"),
                        ("classes", "classes")):
        if options[option] is not None:
            preset[key] = tuple(options[option]) if isinstance(options[option], list) else options[option]
    config = Config(batch_size=options["batch_size"], device=options["device"], precision=options["precision"],
                    compile=options["compile"], data_on_device=options["data_on_device"], verbose=0)
    methods = chosen_methods(options["methods"], options["end_to_end"])
    plan = Benchmark(options["shape"], preset, config, options["epochs"], options["end_to_end"], methods,
                     options["compare_plain"], options["output"])
    check_benchmark(plan)
    run_benchmark(plan)


def chosen_methods(text: str | None, end_to_end: bool) -> tuple[str, ...]:
    """--methods as a tuple (default: every end-to-end method); refused whether or not --end-to-end is given: a
    method that would never be timed is no less a mistake."""
    if text is None:
        return END_TO_END_METHODS
    methods = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not methods or any(m not in END_TO_END_METHODS for m in methods):
        raise OptionError(f"--methods {text}: expected some of {', '.join(END_TO_END_METHODS)}, comma-separated")
    if not end_to_end:
        raise OptionError(f"--methods {text}: applies with --end-to-end only (without it the benchmark times "
                          "DisCoM-KD's training step)")
    return methods


if __name__ == "__main__":
    raise SystemExit(main())
