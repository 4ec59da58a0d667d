"""discomkd-splits (make_splits.py): writes stratified train/valid/test split files for a data folder.

    discomkd-splits DIR [--seed S] [--fractions TRAIN VALID TEST] [--overwrite]

Reads DIR/labels.npy and writes DIR/train_idx.npy, DIR/valid_idx.npy and DIR/test_idx.npy, the
rows of each class drawn in the given proportions (the authors' 70/10/20 by default; every class
with at least 3 rows gets a row in each split). Existing split files are kept unless --overwrite.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from discomkd.commands.entry import CommandLine, run_command
from discomkd.data.folder import file_problem, read_labels, write_split_files
from discomkd.data.splits import DEFAULT_FRACTIONS, SPLITS, draw_split, split_file_name
from discomkd.utils.errors import DataError, OptionError
from discomkd.utils.files import folder_problem
from discomkd.utils.seeds import seed_problem


def make_splits(directory: str, seed: int = 0, fractions=DEFAULT_FRACTIONS, overwrite: bool = False
                ) -> dict[str, np.ndarray]:
    """Writes DIR/{train,valid,test}_idx.npy; raises `DataError` before writing anything on bad input."""
    if seed_problem(seed):
        raise OptionError(seed_problem(seed))
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: data folder not found")
    labels = read_labels(os.path.join(directory, "labels.npy"))
    paths = {name: os.path.join(directory, split_file_name(name)) for name in SPLITS}
    existing = [path for path in paths.values() if os.path.lexists(path)]
    if existing and not overwrite:
        raise DataError(f"{existing[0]}: split file already exists; pass --overwrite to replace the split files")
    for path in existing:  # every target checked before the first is replaced: never a mixed split
        if file_problem(path) is not None:
            raise DataError(f"{path}: {file_problem(path)}; a split file would be written there")
    if folder_problem(directory) is not None:
        raise DataError(f"{directory}: {folder_problem(directory)}")
    split = draw_split(labels, seed, fractions, os.path.join(directory, "labels.npy"))
    write_split_files(directory, split)
    classes = np.unique(labels)
    for name, rows in split.items():
        counts = np.bincount(np.searchsorted(classes, labels[rows]), minlength=len(classes))
        per_class = " ".join(f"{c}:{n}" for c, n in zip(classes, counts))
        print(f"wrote {paths[name]}: {len(rows)} rows, per class {per_class}")
    for name in sorted(os.listdir(directory)):
        if name.startswith("train_idx_") and name.endswith(".npy"):
            print(f"warning: {os.path.join(directory, name)} is kept and replaces train_idx.npy for its modality; "
                  "it must not share rows with the new valid/test split", file=sys.stderr)
    return split


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write stratified train/valid/test_idx.npy for a data folder.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("directory", metavar="DIR", help="data folder holding labels.npy")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the draw")
    parser.add_argument("--fractions", type=float, nargs=3, default=list(DEFAULT_FRACTIONS),
                        metavar=("TRAIN", "VALID", "TEST"), help="share of each class's rows in each split")
    parser.add_argument("--overwrite", action="store_true", help="replace existing split files")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, write_splits)


def write_splits(line: CommandLine) -> None:
    options = line.options
    make_splits(options["directory"], options["seed"], tuple(options["fractions"]), options["overwrite"])


if __name__ == "__main__":
    raise SystemExit(main())
