"""Train DisCoM-KD on two modalities and print each modality's test F1 and accuracy.

    python main_DisCoM-KD.py DIR FIRST_PREFIX SECOND_PREFIX [options]

See README.md for the data layout and every option. All logic lives in functions.py.
"""
import argparse
import dataclasses
import sys

from data import DataError
from functions import Config, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="DisCoM-KD: train both single-modality classifiers jointly (Ienco & Dantas, BMVC 2024).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("directory", metavar="DIR", help="data folder (<PREFIX>_data_normalized.npy, labels.npy, "
                                                         "train/valid/test_idx.npy)")
    parser.add_argument("first_prefix", metavar="FIRST_PREFIX", help="first modality, reads DIR/FIRST_PREFIX_data_normalized.npy")
    parser.add_argument("second_prefix", metavar="SECOND_PREFIX", help="second modality")
    for option in dataclasses.fields(Config):
        if not option.metadata.get("flag", True):
            continue
        flag = "--" + option.name.replace("_", "-")
        if option.type in ("bool", bool):
            parser.add_argument(flag, action="store_true", help=option.metadata["help"])
        else:
            kind = {"int": int, "float": float}.get(str(option.type), str)
            parser.add_argument(flag, type=kind, default=option.default, help=option.metadata["help"])
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("--quiet", action="store_true", help="print only warnings and the final table")
    verbosity.add_argument("--verbose", action="store_true", help="one line per epoch (the default)")
    parser.add_argument("--no-fast", action="store_true",
                        help="plain path: no torch.compile, fp32, data streamed from the host")
    return parser


def main(argv=None) -> int:
    args = vars(build_parser().parse_args(argv))
    directory, first, second = args.pop("directory"), args.pop("first_prefix"), args.pop("second_prefix")
    quiet, no_fast = args.pop("quiet"), args.pop("no_fast")
    args.pop("verbose")
    config = Config(**args, verbose=0 if quiet else 1)
    if no_fast:
        config = dataclasses.replace(config, compile="no", precision="fp32", data_on_device="no")
    try:
        run(config, directory, first, second)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
