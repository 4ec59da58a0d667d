"""Writes the embedded example: two modalities of scikit-learn's handwritten digits (discomkd/example.py
says what they are).

    python make_example.py [FOLDER] [--overwrite]     (default: example_digits)
"""
import argparse
import sys

from discomkd.console import configure_output
from discomkd.errors import command_status
from discomkd.example import make_digits_example


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write the embedded example data folder: two modalities of "
                                                 "scikit-learn's handwritten digits (no download).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("folder", metavar="FOLDER", nargs="?", default="example_digits", help="folder to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the example's files in a folder that already holds files")
    return parser


def main(argv=None) -> int:
    configure_output()
    parser = build_parser()
    args = parser.parse_args(argv)
    return command_status(lambda: print(make_digits_example(args.folder, overwrite=args.overwrite)))


if __name__ == "__main__":
    sys.exit(main())
