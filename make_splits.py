"""Writes stratified train/valid/test split files for a data folder.

    python make_splits.py DIR [--seed S] [--fractions 0.7 0.1 0.2] [--overwrite]

Reads DIR/labels.npy and writes DIR/train_idx.npy, DIR/valid_idx.npy and DIR/test_idx.npy, the
rows of each class drawn in the given proportions (the authors' 70/10/20 by default; every class
with at least 3 rows gets a row in each split). Existing split files are kept unless --overwrite.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

from data import SPLITS, DataError, as_int64, file_problem, is_integer_dtype, stratified_split
from functions import atomic_write, seed_problem
from outputs import folder_problem, line_buffered_stdout

DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)


def read_labels(directory: str) -> np.ndarray:
    """DIR/labels.npy as a (N,) integer array; raises `DataError` naming the problem."""
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: data folder not found")
    path = os.path.join(directory, "labels.npy")
    if file_problem(path) is not None:
        raise DataError(f"{path}: {file_problem(path)} (the (N,) integer labels expected here)")
    try:
        labels = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DataError(f"{path}: not a readable numeric .npy array ({error})") from None
    if labels.ndim != 1 or not is_integer_dtype(labels.dtype):
        raise DataError(f"{path}: labels must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}")
    if labels.size == 0:
        raise DataError(f"{path}: no labels")
    as_int64(labels, path, "label")  # as training reads them
    return labels


def draw_split(labels: np.ndarray, seed: int, fractions=DEFAULT_FRACTIONS, labels_path: str = "labels.npy"
               ) -> dict[str, np.ndarray]:
    """`data.stratified_split`, refusing a split with an empty part or fewer than 2 training rows."""
    if (len(fractions) != len(SPLITS) or not all(math.isfinite(f) for f in fractions) or min(fractions) <= 0
            or abs(sum(fractions) - 1) > 1e-6):
        raise DataError(f"--fractions {' '.join(map(str, fractions))}: three positive numbers summing to 1 "
                        "(train valid test) are expected")
    total = sum(fractions)
    split = stratified_split(labels, seed, tuple(f / total for f in fractions))
    for name, rows in split.items():
        if len(rows) < (2 if name == "train" else 1):
            raise DataError(f"{labels_path}: too few rows per class for a {'/'.join(f'{f:g}' for f in fractions)} "
                            f"split ({name} would get {len(rows)} rows with seed {seed})")
    return split


def save_index(path: str, rows: np.ndarray) -> None:
    def write(temporary):
        with open(temporary, "wb") as handle:  # a handle, so numpy does not append .npy to the temporary name
            np.save(handle, np.asarray(rows, dtype=np.int64))

    atomic_write(path, write)


def save_split_files(paths: dict[str, str], split: dict[str, np.ndarray]) -> None:
    """Writes every split file or none: each goes to its temporary file, and only when all are written
    are they renamed (nested `atomic_write`s: each one's write starts the next, the renames unwind)."""
    names = list(paths)

    def write_from(i):
        def write(temporary):
            with open(temporary, "wb") as handle:  # a handle, so numpy does not append .npy to the temporary name
                np.save(handle, np.asarray(split[names[i]], dtype=np.int64))
            if i + 1 < len(names):
                atomic_write(paths[names[i + 1]], write_from(i + 1))
        return write

    atomic_write(paths[names[0]], write_from(0))


def make_splits(directory: str, seed: int = 0, fractions=DEFAULT_FRACTIONS, overwrite: bool = False,
                log=print) -> dict[str, np.ndarray]:
    """Writes DIR/{train,valid,test}_idx.npy; raises `DataError` before writing anything on bad input."""
    if seed_problem(seed):
        raise DataError(seed_problem(seed))
    labels = read_labels(directory)
    paths = {name: os.path.join(directory, f"{name}_idx.npy") for name in SPLITS}
    existing = [path for path in paths.values() if os.path.lexists(path)]
    if existing and not overwrite:
        raise DataError(f"{existing[0]}: split file already exists; pass --overwrite to replace the split files")
    for path in existing:  # every target checked before the first is replaced: never a mixed split
        if file_problem(path) is not None:
            raise DataError(f"{path}: {file_problem(path)}; a split file would be written there")
    if folder_problem(directory) is not None:
        raise DataError(f"{directory}: {folder_problem(directory)}")
    split = draw_split(labels, seed, fractions, os.path.join(directory, "labels.npy"))
    save_split_files(paths, split)
    classes = np.unique(labels)
    for name, rows in split.items():
        counts = np.bincount(np.searchsorted(classes, labels[rows]), minlength=len(classes))
        per_class = " ".join(f"{c}:{n}" for c, n in zip(classes, counts))
        log(f"wrote {paths[name]}: {len(rows)} rows, per class {per_class}")
    for name in sorted(os.listdir(directory)):
        if name.startswith("train_idx_") and name.endswith(".npy"):
            print(f"warning: {os.path.join(directory, name)} is kept and replaces train_idx.npy for its modality; "
                  "it must not share rows with the new valid/test split", file=sys.stderr)
    return split


def main(argv=None) -> int:
    line_buffered_stdout()
    parser = argparse.ArgumentParser(description="Write stratified train/valid/test_idx.npy for a data folder.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("directory", metavar="DIR", help="data folder holding labels.npy")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the draw")
    parser.add_argument("--fractions", type=float, nargs=3, default=list(DEFAULT_FRACTIONS),
                        metavar=("TRAIN", "VALID", "TEST"), help="share of each class's rows in each split")
    parser.add_argument("--overwrite", action="store_true", help="replace existing split files")
    args = parser.parse_args(argv)
    try:
        make_splits(args.directory, args.seed, tuple(args.fractions), args.overwrite)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
