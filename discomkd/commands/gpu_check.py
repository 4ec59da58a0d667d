"""discomkd-gpu-check (tools/gpu_check.sh in a checkout): the GPU check in one call, planned for under 8 minutes
on one H100/H200, nothing from the network.

    discomkd-gpu-check OUTDIR                  # -> OUTDIR/gpu_check.json and OUTDIR/verdict.txt
    discomkd-gpu-check OUTDIR --cpu-small      # the same steps at toy size on a CPU (tested)

docs/gpu-check.md gives the plan per step; the work is the library's: `discomkd.analysis.gpu_check`.
"""
from __future__ import annotations

import argparse

import torch

from discomkd.analysis.gpu_check import PRESETS, STEPS, run_check, run_step
from discomkd.commands.entry import CommandLine, run_command
from discomkd.utils.errors import OptionError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="The GPU check: the end-to-end epoch, compiled and bf16 against "
                                                 "eager fp32, SIGKILL and resume, each step in its own process.")
    parser.add_argument("output", help="folder for gpu_check.json, verdict.txt, the steps' results and logs")
    parser.add_argument("--cpu-small", action="store_true", help="toy sizes on the CPU: the tested variant")
    parser.add_argument("--tests", action="store_true", help="also run (d), the test suite, on the CPU (in a checkout)")
    parser.add_argument("--steps", default=",".join(STEPS[:-1]),
                        help="the steps to run, comma-separated (to rerun some; (d) also needs --tests)")
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)  # a child process: one step
    parser.add_argument("--work", help=argparse.SUPPRESS)  # the child's scratch folder
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)  # the child's budget
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, gpu_check)


def gpu_check(line: CommandLine) -> int:
    """The parent's status: 0 when every step that ran passed, else 1; a child's (--step): its step's."""
    options = line.options
    chosen = set(options["steps"].split(",")) - {""}
    if chosen - set(STEPS):
        raise OptionError(f"--steps {options['steps']}: expected some of {', '.join(STEPS)}, comma-separated")
    preset_name = "cpu-small" if options["cpu_small"] else "gpu"
    if options["step"] is not None:
        return run_step(options["step"], PRESETS[preset_name], options["output"], options["work"], options["seconds"])
    if PRESETS[preset_name]["device"] == "cuda" and not torch.cuda.is_available():
        raise OptionError("CUDA is not available here; --cpu-small runs the check's steps on the CPU")
    return 0 if run_check(options["output"], preset_name, chosen | ({"d_tests"} if options["tests"] else set()),
                          options["tests"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
