"""Train/valid/test splits: their names and file names, the default fractions, and drawing a
stratified split. Reading and writing a folder's split files is `data.read_split_files` and
`data.write_split_files`."""
from __future__ import annotations

import math

import numpy as np

from discomkd.utils.errors import DataError, OptionError

SPLITS = ("train", "valid", "test")
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)  # the authors' train/valid/test shares
DEFAULT_FRACTIONS_TEXT = "/".join(f"{100 * f:g}" for f in DEFAULT_FRACTIONS)  # "70/10/20", as messages say it
FRACTIONS_TOLERANCE = 1e-6  # how far from 1 the fractions may sum: three decimals typed by hand always pass


def split_file_name(split: str, prefix: str | None = None) -> str:
    """train_idx.npy, valid_idx.npy, test_idx.npy, or train_idx_<PREFIX>.npy (a modality's own)."""
    return f"{split}_idx.npy" if prefix is None else f"{split}_idx_{prefix}.npy"


def check_fractions(fractions) -> tuple[float, float, float]:
    """The train/valid/test fractions as floats; raises `OptionError` unless they are three finite
    positive numbers summing to 1 (a zero fraction would leave a split empty)."""
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != len(SPLITS) or not all(math.isfinite(f) and f > 0 for f in fractions) \
            or abs(sum(fractions) - 1) > FRACTIONS_TOLERANCE:
        raise OptionError(f"--fractions {' '.join(map(str, fractions))}: three positive numbers summing to 1 "
                        "(train valid test) are expected")
    return fractions


def stratified_split(labels: np.ndarray, seed: int, fractions=DEFAULT_FRACTIONS) -> dict[str, np.ndarray]:
    """Train/valid/test row numbers drawn per class in the given proportions (DEFAULT_FRACTIONS: the authors').

    Each class with at least 3 rows gets at least one row in every split. Returns sorted int64 arrays.
    """
    assert abs(sum(fractions) - 1) <= FRACTIONS_TOLERANCE, f"fractions {fractions} must sum to 1"
    rng = np.random.default_rng(seed)
    parts = {split: [] for split in SPLITS}
    for value in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == value))
        n_valid = int(round(fractions[1] * len(rows)))
        n_test = int(round(fractions[2] * len(rows)))
        if len(rows) >= 3:
            n_valid, n_test = max(1, n_valid), max(1, n_test)
        parts["test"].append(rows[:n_test])
        parts["valid"].append(rows[n_test:n_test + n_valid])
        parts["train"].append(rows[n_test + n_valid:])
    return {split: np.sort(np.concatenate(p)).astype(np.int64) for split, p in parts.items()}


def draw_split(labels: np.ndarray, seed: int, fractions=DEFAULT_FRACTIONS, labels_path: str = "labels.npy"
               ) -> dict[str, np.ndarray]:
    """`stratified_split`, refusing bad fractions (`check_fractions`) and a split with an empty part or
    fewer than 2 training rows; raises `DataError` naming `labels_path`."""
    fractions = check_fractions(fractions)
    total = sum(fractions)
    split = stratified_split(labels, seed, tuple(f / total for f in fractions))
    for name, rows in split.items():
        if len(rows) < (2 if name == "train" else 1):
            raise DataError(f"{labels_path}: too few rows per class for a {'/'.join(f'{f:g}' for f in fractions)} "
                            f"split ({name} would get {len(rows)} rows with seed {seed})")
    return split
