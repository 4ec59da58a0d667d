"""Train DisCoM-KD on two modalities and print each modality's test F1 and accuracy.

    python main_DisCoM-KD.py DIR FIRST_PREFIX SECOND_PREFIX [options]

docs/data.md describes the data folder, docs/training.md every option; the run itself is functions.py.
"""
import argparse
import sys

from discomkd.config import BASELINE_SETTINGS, Config, add_config_arguments, plain_path
from discomkd.console import configure_output
from discomkd.errors import EXIT_BAD_INPUT, command_status
from discomkd.settings_file import add_settings_argument, parse_or_report
from functions import resume, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="DisCoM-KD: train both single-modality classifiers jointly (Ienco & Dantas, BMVC 2024).")
    parser.add_argument("directory", metavar="DIR", nargs="?", help="data folder (<PREFIX>_data_normalized.npy, labels.npy, "
                                                         "train/valid/test_idx.npy)")
    parser.add_argument("first_prefix", metavar="FIRST_PREFIX", nargs="?", help="first modality: reads DIR/FIRST_PREFIX_data_normalized.npy")
    parser.add_argument("second_prefix", metavar="SECOND_PREFIX", nargs="?", help="second modality")
    parser.add_argument("--resume", metavar="RUN_FOLDER", help="continue an interrupted run from RUN_FOLDER/state.pt "
                                                              "with its own data and settings (with --quiet or --verbose only)")
    add_config_arguments(parser, skip=BASELINE_SETTINGS)  # kd's and dkd's: compare.py's
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("--quiet", action="store_true", help="print only warnings and the final table")
    verbosity.add_argument("--verbose", action="store_true", help="one line per epoch (the default)")
    parser.add_argument("--no-fast", action="store_true",
                        help="plain path: no torch.compile, fp32, data streamed from the host")
    add_settings_argument(parser)
    return parser


def given_arguments(parser: argparse.ArgumentParser, argv) -> list[str]:
    """The arguments given explicitly in `argv` (an option given with its default value included),
    as the user spells them: found by parsing into a namespace that already holds a marker for
    every destination, since argparse only fills in defaults for destinations it does not find."""
    unset = object()
    destinations = vars(parser.parse_args(argv))
    given = vars(parser.parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(destinations, unset))))
    names = {"directory": "DIR", "first_prefix": "FIRST_PREFIX", "second_prefix": "SECOND_PREFIX"}
    # an absent optional positional is set to its default (None) rather than left alone
    return [names.get(k, "--" + k.replace("_", "-")) for k, v in given.items() if v is not unset and v is not None]


def main(argv=None) -> int:
    configure_output()
    parser = build_parser()
    args = parse_or_report(parser, argv)
    if args is None:
        return EXIT_BAD_INPUT
    directory, first, second = args.pop("directory"), args.pop("first_prefix"), args.pop("second_prefix")
    run_folder = args.pop("resume")
    if run_folder is None and second is None:
        parser.error("DIR, FIRST_PREFIX and SECOND_PREFIX are required (or --resume RUN_FOLDER)")
    others = [name for name in given_arguments(parser, argv) if name not in ("--resume", "--quiet", "--verbose")]
    if run_folder is not None and others:
        print(f"error: --resume {run_folder}: continues the run with its own data and settings; remove "
              f"{', '.join(others)} (no other argument than --quiet or --verbose may be given with --resume)", file=sys.stderr)
        return EXIT_BAD_INPUT
    quiet, no_fast = args.pop("quiet"), args.pop("no_fast")
    args_verbose = args.pop("verbose")
    config = Config(**args, verbose=0 if quiet else 1)
    if no_fast:
        config = plain_path(config)
    if run_folder is not None:
        verbose = 0 if quiet else 1 if args_verbose else None  # else the run's own setting
        return command_status(lambda: resume(run_folder, verbose=verbose))
    return command_status(lambda: run(config, directory, first, second))


if __name__ == "__main__":
    sys.exit(main())
