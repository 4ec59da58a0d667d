"""discomkd-train (main_DisCoM-KD.py): trains DisCoM-KD, or any method, on two modalities and prints each
classifier's test F1 and accuracy.

    discomkd-train DIR FIRST_PREFIX SECOND_PREFIX [options]        (python main_DisCoM-KD.py ... in a checkout)
    discomkd-train --resume RUN_FOLDER

docs/data.md describes the data folder, docs/training.md every option; the run itself is
`discomkd.training.run`.
"""
from __future__ import annotations

import argparse

from discomkd.commands.entry import CommandLine, run_command
from discomkd.training.config import BASELINE_SETTINGS, Config, add_config_arguments, plain_path
from discomkd.training.run import resume, run
from discomkd.training.settings_file import add_settings_argument
from discomkd.utils.errors import OptionError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="DisCoM-KD: train both single-modality classifiers jointly (Ienco & Dantas, BMVC 2024).")
    parser.add_argument("directory", metavar="DIR", nargs="?",
                        help="data folder (<PREFIX>_data_normalized.npy, labels.npy, train/valid/test_idx.npy)")
    parser.add_argument("first_prefix", metavar="FIRST_PREFIX", nargs="?",
                        help="first modality: reads DIR/FIRST_PREFIX_data_normalized.npy")
    parser.add_argument("second_prefix", metavar="SECOND_PREFIX", nargs="?", help="second modality")
    parser.add_argument("--resume", metavar="RUN_FOLDER",
                        help="continue an interrupted run from RUN_FOLDER/state.pt with its own data and settings "
                             "(with --quiet or --verbose only)")
    add_config_arguments(parser, skip=BASELINE_SETTINGS)  # kd's and dkd's: compare.py's
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("--quiet", action="store_true",
                           help="print only warnings and the final summary: the table, then, for a DisCoM-KD method, "
                                "the invariance probe and the cross-modal transfer")
    verbosity.add_argument("--verbose", action="store_true", help="one line per epoch (the default)")
    parser.add_argument("--no-fast", action="store_true",
                        help="plain path: no torch.compile, fp32, data streamed from the host")
    add_settings_argument(parser)
    return parser


def given_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """The arguments given explicitly in `argv` (an option given with its default value included),
    as the user spells them: found by parsing into a namespace that already holds a marker for
    every destination, since argparse only fills in defaults for destinations it does not find."""
    unset = object()
    destinations = vars(parser.parse_args(argv))
    given = vars(parser.parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(destinations, unset))))
    names = {"directory": "DIR", "first_prefix": "FIRST_PREFIX", "second_prefix": "SECOND_PREFIX"}
    # an absent optional positional is set to its default (None) rather than left alone
    return [names.get(k, "--" + k.replace("_", "-")) for k, v in given.items() if v is not unset and v is not None]


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, train)


def train(line: CommandLine) -> None:
    """A run of the options' method on DIR, or `--resume RUN_FOLDER` with nothing else but --quiet or --verbose."""
    options = line.options
    directory, first, second = options.pop("directory"), options.pop("first_prefix"), options.pop("second_prefix")
    run_folder = options.pop("resume")
    if run_folder is None and second is None:
        line.parser.error("DIR, FIRST_PREFIX and SECOND_PREFIX are required (or --resume RUN_FOLDER)")
    quiet, verbose, no_fast = options.pop("quiet"), options.pop("verbose"), options.pop("no_fast")
    if run_folder is not None:
        others = [name for name in given_arguments(line.parser, line.argv)
                  if name not in ("--resume", "--quiet", "--verbose")]
        if others:
            raise OptionError(f"--resume {run_folder}: continues the run with its own data and settings; remove "
                              f"{', '.join(others)} (no other argument than --quiet or --verbose may be given with "
                              "--resume)")
        resume(run_folder, verbose=0 if quiet else 1 if verbose else None)  # None: the run's own setting
        return
    config = Config(**options, verbose=0 if quiet else 1)
    run(plain_path(config) if no_fast else config, directory, first, second)


if __name__ == "__main__":
    raise SystemExit(main())
