"""discomkd-tune (tune.py): a method's training settings tuned on validation with Ray Tune, then tested beside
the paper's.

    discomkd-tune DIR FIRST SECOND [--method discomkd] --trials N --runs K [--grace-epochs G] [options as compare.py]

Searches the settings every neural method has (learning rate, weight decay, epochs up to --epochs,
each modality's augmentation) and the method's own (DisCoM-KD: the loss weights of L_aux, L_mod,
L_adv and L_perp and the GRL coefficient; discomkd.tuning_space) by random search, the starting
settings first (never stopped early), ASHA stopping lagging trials, selecting on validation only: the mean
over both modalities of each classifier's best validation weighted F1 (one setting for both modalities of mono, kd
and dkd; `compare.py --tune` searches each modality's model on its own and compares every method in one table).
Trials read no test row. Then trains
the chosen settings and the starting ones (the paper's unless options change them) --runs times on
seeds SEED+1.. through compare.py's machinery (--runs 0: the search alone). kd and dkd distil from
a teacher trained with the starting settings or --teacher-settings FILE, in the search and after.
Outputs in OUTPUT (default DIR/tuning_<FIRST>_<SECOND>): settings.json (the chosen settings:
`main_DisCoM-KD.py DIR FIRST SECOND --settings settings.json` for DisCoM-KD,
`compare.py ... --settings-for METHOD=settings.json` for any method), tuning.json (every trial),
tuning.md (the table), starting/ and tuned/ (their comparisons), trials/.
Needs Ray: pip install "discomkd[ray]" (pip install -r requirements-ray.txt in a checkout).
"""
from __future__ import annotations

import argparse
import logging
import os

from discomkd.commands.entry import CommandLine, run_command
from discomkd.comparison.executors import make_executor
from discomkd.comparison.jobs import TEACHER
from discomkd.comparison.tuning_space import TUNABLE, check_tuning, foreign_settings_line
from discomkd.data.splits import DEFAULT_FRACTIONS_TEXT
from discomkd.models.methods import METHODS
from discomkd.training.config import Config, add_config_arguments
from discomkd.training.settings_file import command_line, parse_settings_file
from discomkd.utils.console import command_for
from discomkd.utils.errors import OptionError

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Tune DisCoM-KD's settings on validation with Ray Tune; test the chosen ones beside the paper's.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("directory", metavar="DIR", help="data folder; split files optional (without them the "
                                                         f"search draws its own {DEFAULT_FRACTIONS_TEXT} split)")
    parser.add_argument("first_prefix", metavar="FIRST_PREFIX", help="first modality")
    parser.add_argument("second_prefix", metavar="SECOND_PREFIX", help="second modality")
    parser.add_argument("--method", default="discomkd",
                        help=f"the neural method tuned, among {', '.join(TUNABLE)} (docs/comparison.md: what each "
                             "one's search covers)")
    parser.add_argument("--trials", type=int, default=20, help="settings tried (the first: the starting settings)")
    parser.add_argument("--runs", type=int, default=5, help="runs of the chosen and of the starting settings, on "
                        "seeds SEED+1..SEED+RUNS (0: the search alone, no final runs and no tuning.md)")
    parser.add_argument("--grace-epochs", type=int, default=None,
                        help="epochs every trial trains before ASHA may stop it (default: a quarter of --epochs)")
    parser.add_argument("--seed", type=int, default=0, help="the search's seed (trials and sampling)")
    parser.add_argument("--output", default=None, help="output folder (default DIR/tuning_<FIRST>_<SECOND>)")
    parser.add_argument("--teacher-settings", metavar="FILE", default=None,
                        help="kd and dkd: the teacher's settings (e.g. the settings.json of tune.py --method "
                             "teacher), for the teacher the trials distil from and that of the final runs; default: "
                             "the starting settings")
    add_config_arguments(parser, skip=("seed", "output", "legacy_modality_targets", "test_every_epoch"))
    ray = parser.add_argument_group("Ray")
    ray.add_argument("--executor", choices=("local", "ray"), default="ray",
                     help="how the final runs train (the search always runs on Ray)")
    ray.add_argument("--ray-address", default=None, help="the Ray cluster (e.g. auto); default: a local Ray")
    ray.add_argument("--gpus-per-task", type=float, default=None,
                     help="GPUs per trial and per final model; default 1 when CUDA is available, else 0")
    ray.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs per trial and per final model")
    return parser


def teacher_settings(parser: argparse.ArgumentParser, argv, path: str | None, method: str) -> dict | None:
    """--teacher-settings FILE parsed by tune.py's parser (its checks, the file winning); `OptionError`
    for a method that reads no teacher."""
    if path is None:
        return None
    if not METHODS[method].needs_teacher:
        raise OptionError(f"--teacher-settings {path}: {method} reads no teacher (kd and dkd do)")
    settings = parse_settings_file(parser, argv, path, "--teacher-settings", f"--teacher-settings {path}")
    borrowed = foreign_settings_line(TEACHER, settings, f"--teacher-settings {path}")
    if borrowed:
        logger.warning(borrowed)
    return settings


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, tune)


def tune(line: CommandLine) -> None:
    options = line.options
    directory, first, second = options.pop("directory"), options.pop("first_prefix"), options.pop("second_prefix")
    trials, runs, grace = options.pop("trials"), options.pop("runs"), options.pop("grace_epochs")
    executor, address, gpus, cpus = (options.pop(k) for k in ("executor", "ray_address", "gpus_per_task",
                                                              "cpus_per_task"))
    teacher_path = options.pop("teacher_settings")
    output = options.pop("output")  # '' is refused by check_config, not taken for the default
    output = os.path.join(directory, f"tuning_{first}_{second}") if output is None else output
    config = Config(**options, output=output, verbose=0)
    check_tuning(config, trials, runs, grace)
    teacher = teacher_settings(line.parser, line.argv, teacher_path, config.method)
    ray_executor = make_executor("ray", address, gpus, cpus)  # DataError when Ray is missing
    from discomkd.comparison import tuning  # imports Ray: only once it is known to be installed
    found = tuning.tune_and_compare(config, directory, first, second, trials, runs, grace, ray_executor,
                                    ray_executor if executor == "ray" else make_executor("local"), teacher)
    settings = os.path.join(output, "settings.json")
    compare_hint = f"{command_for('discomkd.commands.compare')} {directory} {first} {second} --settings-for " \
                   f"{config.method}={settings}"
    reuse = (f"{command_for('discomkd.commands.train')} {directory} {first} {second} --settings {settings}, or "
             f"{compare_hint}" if config.method == "discomkd" else compare_hint)
    print(f"(outputs in {output}; the chosen settings: {reuse}, or {' '.join(command_line(found['chosen']))})")


if __name__ == "__main__":
    raise SystemExit(main())
