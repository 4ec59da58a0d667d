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
from discomkd.comparison.tuning_space import (
    check_tuning,
    foreign_settings_line,
    model_key,
    model_settings,
    settings_source,
    split_model_key,
)
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
    parser.add_argument("--tune", type=int, default=None, metavar="TRIALS",
                        help="the fair table: first search every compared neural method's settings on validation, "
                             "TRIALS trials each (Ray Tune; per-modality models each on their own modality; the "
                             "teacher first, kd and dkd distilling from the tuned teacher), then compare the chosen "
                             "settings over --runs runs on seeds SEED+1.. (default output "
                             "DIR/tuned_comparison_<FIRST>_<SECOND>; docs/comparison.md)")
    parser.add_argument("--grace-epochs", type=int, default=None,
                        help="with --tune: epochs every trial trains before ASHA may stop it (default: a quarter of "
                             "--epochs; the first trial, the paper's settings, is never stopped)")
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
    ray.add_argument("--cpus-per-task", type=float, default=1.0,
                     help="CPUs per model: a Ray task's size; with --executor local, torch threads per model (1 trains "
                          "this project's models fastest on 2 cores: docs/performance.md)")
    ray.add_argument("--max-retries", type=int, default=3,
                     help="retries of a task whose worker or node was lost; a retry resumes from its state.pt")
    return parser


def read_method_settings(parser: argparse.ArgumentParser, argv, entries: list[str], methods: tuple[str, ...],
                         prefixes: tuple[str, str]) -> tuple[dict[str, dict], dict[str, str]]:
    """--settings-for METHOD=FILE entries (METHOD: a method, or `<method>_<PREFIX>` for one modality's model of
    mono, kd or dkd): ({key: settings}, {key: FILE}). A file's settings are parsed by this command's parser after
    the command line (so they win for that method or model), through the same checks as --settings; `OptionError`
    or `DataError` otherwise."""
    settings, paths = {}, {}
    for entry in entries:
        key, equals, path = entry.partition("=")
        label = f"--settings-for {entry}"
        if not equals or not key or not path:
            raise OptionError(f"{label}: METHOD=FILE is expected, e.g. kd=tuning_kd/settings.json")
        split = split_model_key(key, prefixes)
        if split is None:
            raise OptionError(f"{label}: {key!r} is not a neural method; expected one of {', '.join(METHODS)}, or "
                              f"<method>_<PREFIX> for one modality's model of a per-modality method (e.g. "
                              f"mono_{prefixes[0]})")
        if split[0] not in methods:
            raise OptionError(f"{label}: {split[0]} is not among the methods compared ({', '.join(methods)})")
        if key in settings:
            raise OptionError(f"--settings-for {key}: given twice")
        settings[key] = parse_settings_file(parser, argv, path, "--settings-for", label)
        paths[key] = path
        borrowed = foreign_settings_line(split[0], settings[key], label)
        if borrowed:
            logger.warning(borrowed)
    return settings, paths


def sources_of(methods: tuple[str, ...], prefixes: tuple[str, str], config: Config, settings: dict[str, dict],
               paths: dict[str, str], settings_path: str | None) -> dict[str, str]:
    """Where each neural method's settings came from (`tuning_space.settings_source`); a method given settings per
    modality says so for each of its models ("IMAGE: tuned (8 trials); PROJ: paper")."""
    sources = {}
    for method in (m for m in methods if m in METHODS):
        models = [p for p in prefixes if model_key(method, p) in settings] if METHODS[method].per_modality else []
        if not models:
            sources[method] = settings_source(method, paths.get(method, settings_path),
                                              dataclasses.replace(config, **settings.get(method, {})))
            continue
        sources[method] = "; ".join(
            f"{p}: " + settings_source(method, paths.get(model_key(method, p), paths.get(method, settings_path)),
                                       dataclasses.replace(config, **model_settings(settings, method, p)))
            for p in prefixes)
    return sources


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, compare_methods)


def compare_methods(line: CommandLine) -> None:
    options = line.options
    directory, first, second = options.pop("directory"), options.pop("first_prefix"), options.pop("second_prefix")
    runs, methods, resplit = options.pop("runs"), options.pop("methods"), options.pop("resplit")
    verbose, resume = options.pop("verbose"), options.pop("resume")
    trials, grace = options.pop("tune"), options.pop("grace_epochs")
    if options.pop("ablation"):
        methods = ",".join([methods, *ABLATIONS])
    executor = [options.pop(k) for k in ("executor", "ray_address", "gpus_per_task", "cpus_per_task", "max_retries")]
    entries, settings_path = options.pop("settings_for"), line.parser.parse_known_args(line.argv)[0].settings
    config = Config(**options, verbose=int(verbose))
    compared = parse_methods(methods)
    if trials is not None:
        tune_everything(config, directory, (first, second), compared, trials, runs, grace, resume, resplit, verbose,
                        entries, executor)
        return
    if grace is not None:
        raise OptionError(f"--grace-epochs {grace}: only with --tune")
    settings, paths = read_method_settings(line.parser, line.argv, entries, compared, (first, second))
    sources = sources_of(compared, (first, second), config, settings, paths, settings_path)
    compare(config, directory, first, second, runs, methods, resplit, verbose, executor=make_executor(*executor),
            method_settings=settings, settings_from=sources, resume=resume)


def tune_everything(config: Config, directory: str, prefixes: tuple[str, str], methods: tuple[str, ...], trials: int,
                    runs: int, grace: int | None, resume: bool, resplit: bool, verbose: bool, entries: list[str],
                    executor: list) -> None:
    """--tune TRIALS: the fair table (`comparison.fair`): each method searched, then compared."""
    if entries:
        raise OptionError(f"--settings-for {entries[0]}: --tune chooses every method's settings; leave it out (or "
                          "compare without --tune)")
    if resplit:
        raise OptionError("--resplit: --tune compares on the split its searches used; leave it out")
    check_tuning(config, trials, runs, grace)  # before Ray is imported: a mistake is named even without Ray
    search_executor = make_executor("ray", *executor[1:])  # DataError when Ray is missing
    from discomkd.comparison import fair  # imports Ray: only once it is known to be installed
    fair.tune_all(config, directory, prefixes, methods, trials, runs, grace, search_executor,
                  search_executor if executor[0] == "ray" else make_executor(*executor), resume, verbose)


if __name__ == "__main__":
    raise SystemExit(main())
