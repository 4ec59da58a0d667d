"""discomkd-example (make_example.py): writes the embedded example, two modalities of scikit-learn's handwritten
digits (discomkd/data/example.py says what they are).

    discomkd-example [FOLDER] [--overwrite]     (default: example_digits)
"""
from __future__ import annotations

import argparse

from discomkd.commands.entry import run_command
from discomkd.data.example import make_digits_example


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write the embedded example data folder: two modalities of "
                                                 "scikit-learn's handwritten digits (no download).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("folder", metavar="FOLDER", nargs="?", default="example_digits", help="folder to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the example's files in a folder that already holds files")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, lambda line: print(make_digits_example(line.options["folder"],
                                                                                    overwrite=line.options["overwrite"])))



if __name__ == "__main__":
    raise SystemExit(main())
