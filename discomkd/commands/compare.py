"""discomkd-compare (compare.py): the paper's comparison on one data folder, DisCoM-KD against its baselines,
over repeated runs.

    discomkd-compare DIR FIRST SECOND [--runs K] [--methods mono,teacher,...] [--resplit] [options]

The comparison itself is `discomkd.comparison.runner`, its executors `discomkd.comparison.executors`; this
module is its command line.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging

from discomkd.commands.entry import CommandLine, run_command
from discomkd.comparison.executors import make_executor
from discomkd.comparison.inputs import ALL_METHODS, DEFAULT_METHODS, parse_methods
from discomkd.comparison.runner import compare
from discomkd.comparison.tuning_space import foreign_settings_line, settings_source
from discomkd.data.splits import DEFAULT_FRACTIONS_TEXT
from discomkd.models.methods import ABLATIONS, METHODS
from discomkd.training.config import Config, add_config_arguments
from discomkd.training.settings_file import add_settings_argument, parse_settings_file
from discomkd.utils.errors import OptionError

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Compare DisCoM-KD with its baselines (mono, teacher, KD, DKD, deep mutual learning, SVM, logistic "
                    "regression) on one data folder over repeated runs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("directory", metavar="DIR", help="data folder, as for main_DisCoM-KD.py; split files "
                                                         "optional (without them each run draws its own)")
    parser.add_argument("first_prefix", metavar="FIRST_PREFIX", help="first modality")
    parser.add_argument("second_prefix", metavar="SECOND_PREFIX", help="second modality")
    parser.add_argument("--runs", type=int, default=1, help="repeated runs, seeds SEED..SEED+RUNS-1 (the paper: 5)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated methods to compare, among {', '.join(ALL_METHODS)}")
    parser.add_argument("--ablation", action="store_true",
                        help=f"add the loss ablation's rows: {', '.join(ABLATIONS)}")
    parser.add_argument("--resplit", action="store_true",
                        help=f"draw a stratified {DEFAULT_FRACTIONS_TEXT} split per run even when DIR has split files")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first run")
    parser.add_argument("--output", default=None, help="output folder (default DIR/comparison_<FIRST>_<SECOND>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the comparison in the output folder, given the command line it started with "
                             "(--runs and --methods may grow): its recorded runs kept, every model that finished "
                             "kept, every state.pt continued")
    add_config_arguments(parser, skip=("seed", "output", "legacy_modality_targets"))
    parser.add_argument("--verbose", action="store_true", help="one line per epoch of every neural model")
    add_settings_argument(parser)
    parser.add_argument("--settings-for", metavar="METHOD=FILE", action="append", default=[],
                        help="settings for one method alone (repeatable), e.g. kd=tuning_kd/settings.json from "
                             "tune.py --method kd; they replace those of the command line and --settings for that "
                             "method's models (a kd or dkd teacher takes the teacher's)")
    ray = parser.add_argument_group("Ray (--executor ray; pip install \"discomkd[ray]\")")
    ray.add_argument("--executor", choices=("local", "ray"), default="local",
                     help="local: one model after the other in this process; ray: every model a Ray task")
    ray.add_argument("--ray-address", default=None,
                     help="the Ray cluster to use (e.g. auto, or HOST:6379 after `ray start --head`); default: start "
                          "a local Ray on this machine")
    ray.add_argument("--gpus-per-task", type=float, default=None,
                     help="GPUs per model (fractions share a GPU); default 1 when CUDA is available, else 0")
    ray.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs per model")
    ray.add_argument("--max-retries", type=int, default=3,
                     help="retries of a task whose worker or node was lost; a retry resumes from its state.pt")
    return parser


def read_method_settings(parser: argparse.ArgumentParser, argv, entries: list[str], methods: tuple[str, ...]
                         ) -> tuple[dict[str, dict], dict[str, str]]:
    """--settings-for METHOD=FILE entries: ({method: settings}, {method: FILE}). A file's settings are
    parsed by this command's parser after the command line (so they win for that method), through the
    same checks as --settings; `OptionError` or `DataError` otherwise."""
    settings, paths = {}, {}
    for entry in entries:
        method, equals, path = entry.partition("=")
        label = f"--settings-for {entry}"
        if not equals or not method or not path:
            raise OptionError(f"{label}: METHOD=FILE is expected, e.g. kd=tuning_kd/settings.json")
        if method not in METHODS:
            raise OptionError(f"{label}: {method!r} is not a neural method; expected one of {', '.join(METHODS)}")
        if method not in methods:
            raise OptionError(f"{label}: {method} is not among the methods compared ({', '.join(methods)})")
        if method in settings:
            raise OptionError(f"--settings-for {method}: given twice")
        settings[method] = parse_settings_file(parser, argv, path, "--settings-for", label)
        paths[method] = path
        borrowed = foreign_settings_line(method, settings[method], label)
        if borrowed:
            logger.warning(borrowed)
    return settings, paths


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, compare_methods)


def compare_methods(line: CommandLine) -> None:
    options = line.options
    directory, first, second = options.pop("directory"), options.pop("first_prefix"), options.pop("second_prefix")
    runs, methods, resplit = options.pop("runs"), options.pop("methods"), options.pop("resplit")
    verbose, resume = options.pop("verbose"), options.pop("resume")
    if options.pop("ablation"):
        methods = ",".join([methods, *ABLATIONS])
    executor = [options.pop(k) for k in ("executor", "ray_address", "gpus_per_task", "cpus_per_task", "max_retries")]
    entries, settings_path = options.pop("settings_for"), line.parser.parse_known_args(line.argv)[0].settings
    config = Config(**options, verbose=int(verbose))
    compared = parse_methods(methods)
    settings, paths = read_method_settings(line.parser, line.argv, entries, compared)
    sources = {m: settings_source(m, paths.get(m, settings_path), dataclasses.replace(config, **settings.get(m, {})))
               for m in compared if m in METHODS}
    compare(config, directory, first, second, runs, methods, resplit, verbose, executor=make_executor(*executor),
            method_settings=settings, settings_from=sources, resume=resume)


if __name__ == "__main__":
    raise SystemExit(main())
