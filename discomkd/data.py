"""Reading and checking a DisCoM-KD data folder, feeding batches, and batched augmentation.

Folder layout (N rows, one row per sample; the modalities need not be paired row by row for
training, see `train_idx_<PREFIX>.npy`):

    DIR/<PREFIX>_data_normalized.npy   (N, C, H, W) images, (N, C, L) sequences or (N, F) vectors
    DIR/labels.npy                     (N,) integer class of each row, any integer values
    DIR/train_idx.npy                  row numbers of the training split
    DIR/valid_idx.npy, DIR/test_idx.npy
    DIR/train_idx_<PREFIX>.npy         optional: this modality's own training rows
    DIR/classes.json, DIR/normalization.json   optional (prepare_data.py): class names and each
                                       modality's preprocessing, carried into its checkpoint

Everything is checked before training starts; a problem raises `DataError` with one line that
names the file, the problem and what was expected.
"""
from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass, field

import numpy as np

from discomkd.errors import DataError
from discomkd.splits import SPLITS, split_file_name
from model_pytorch import ENCODERS, default_encoder_for

# Bytes read from a memory map at once (finiteness checks, copies to the device), so an array
# larger than memory is handled in bounded pieces.
_CHUNK_BYTES = 64 << 20


def array_path(directory: str, prefix: str) -> str:
    return os.path.join(directory, f"{prefix}_data_normalized.npy")


# Accepted array dtypes: signed and unsigned integers (dtype kind 'i', 'u'; not bool, nor timedelta64,
# which numpy counts among the integers) and floats of at most 64 bits (float128 has no torch dtype).
INTEGER_KINDS = "iu"
MAX_FLOAT_BYTES = 8


def is_integer_dtype(dtype: np.dtype) -> bool:
    return dtype.kind in INTEGER_KINDS


def is_numeric_dtype(dtype: np.dtype) -> bool:
    return is_integer_dtype(dtype) or (dtype.kind == "f" and dtype.itemsize <= MAX_FLOAT_BYTES)


def as_int64(values: np.ndarray, path: str, what: str) -> np.ndarray:
    """An integer array as int64, refusing uint64 values that int64 cannot hold (they would wrap)."""
    if values.dtype.kind == "u" and values.size and values.max() > np.iinfo(np.int64).max:
        raise DataError(f"{path}: {what} value {values.max()} exceeds {np.iinfo(np.int64).max}; "
                        "values that fit a 64-bit signed integer are expected")
    return np.asarray(values, dtype=np.int64)


def file_problem(path: str) -> str | None:
    """None when `path` is a regular file (or a link to one), else what it is, for an error line."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop"
        if os.path.islink(path):
            return "broken symbolic link (its target does not exist)"
        return "file not found"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    return None if stat.S_ISREG(mode) else "not a regular file (a FIFO, socket or device?)"


def default_encoder(prefix: str, sample_shape: tuple[int, ...]) -> str:
    """Encoder chosen from the sample rank; the prefix MNIST selects LeNet for images, as the authors did."""
    if len(sample_shape) == 3 and prefix.upper() == "MNIST":
        return "lenet"
    return default_encoder_for(sample_shape)


@dataclass
class Modality:
    """One modality's array (memory-mapped) and its rows for each split."""

    prefix: str
    path: str
    array: np.ndarray  # (N, *sample_shape), memory-mapped
    encoder: str
    splits: dict[str, np.ndarray]  # split name -> int64 row numbers

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[1:])

    @property
    def rank(self) -> int:
        return len(self.sample_shape)


@dataclass
class DataFolder:
    """A checked data folder: both modalities, labels mapped to 0..K-1, and the user's classes."""

    directory: str
    modalities: tuple[Modality, Modality]
    labels: np.ndarray  # (N,) int64 in 0..K-1
    classes: np.ndarray  # (K,) the user's label values; classes[k] is class k
    warnings: list[str] = field(default_factory=list)
    splits_from: str | None = None  # the folder whose split files were read (None: the data folder)
    # per prefix: JSON-able fields that modality's checkpoint carries (read_descriptions)
    metadata: dict[str, dict] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> dict:
        return {
            "directory": os.path.abspath(self.directory),  # absolute: --resume may run from another folder
            "splits_from": os.path.abspath(self.splits_from or self.directory),
            "classes": self.classes.tolist(),
            "modalities": [{"prefix": m.prefix, "file": os.path.abspath(m.path), "sample_shape": list(m.sample_shape),
                            "dtype": str(m.array.dtype), "encoder": m.encoder,
                            "rows": {s: int(len(r)) for s, r in m.splits.items()}} for m in self.modalities],
        }


def load_npy(path: str, what: str) -> np.ndarray:
    problem = file_problem(path)
    if problem is not None:
        raise DataError(f"{path}: {problem} ({what} expected here)")
    try:
        with open(path, "rb") as handle:
            header = handle.read(6)
    except OSError as error:
        raise DataError(f"{path}: not readable ({error.strerror})") from None
    if header != b"\x93NUMPY":  # the .npy magic string; np.load would take any other file for a pickle
        raise DataError(f"{path}: not a .npy file (no NumPy header); {what} is expected")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as error:
        # an object array reads as "pickled data" without a memory map, "Python objects in dtype" with one
        if "pickle" in str(error).lower() or "python objects" in str(error).lower():
            raise DataError(f"{path}: holds Python objects; a numeric .npy array is expected") from None
        raise DataError(f"{path}: not a readable .npy array ({error})") from None
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: not a readable .npy array ({error})") from None


def _check_index(index: np.ndarray, name: str, num_rows: int) -> np.ndarray:
    """Checks an array of row numbers (from a file or given in memory); `name` names it in errors."""
    index = np.asarray(index)
    if index.ndim != 1 or not is_integer_dtype(index.dtype):
        raise DataError(f"{name}: row numbers must be a 1-D integer array, got shape {index.shape} dtype {index.dtype}")
    index = as_int64(index, name, "row number")
    if index.size == 0:
        raise DataError(f"{name}: empty split; at least one row number is expected")
    if index.min() < 0:
        raise DataError(f"{name}: negative row number {index.min()}; rows are 0..{num_rows - 1}")
    if index.max() >= num_rows:
        raise DataError(f"{name}: row number {index.max()} out of range; rows are 0..{num_rows - 1}")
    unique, counts = np.unique(index, return_counts=True)
    if len(unique) != len(index):
        raise DataError(f"{name}: row {unique[counts > 1][0]} listed {counts.max()} times; each row at most once")
    return index


def read_split_files(directory: str, prefixes) -> dict[str, np.ndarray]:
    """The split files of a folder, as the `splits` argument of `load_data_folder` takes them:
    {"train", "valid", "test", and "train_<PREFIX>" for each modality's own file}. Missing files are
    left out (the loader names what it needed); unreadable ones raise `DataError`."""
    names = {split: split_file_name(split) for split in SPLITS}
    names.update({f"train_{prefix}": split_file_name("train", prefix) for prefix in prefixes})
    return {key: load_npy(os.path.join(directory, name), "an array of row numbers")
            for key, name in names.items() if os.path.lexists(os.path.join(directory, name))}


def read_labels(path: str) -> np.ndarray:
    """A (N,) integer label array from `path`; raises `DataError` naming the problem."""
    labels = load_npy(path, "the (N,) integer labels")
    if labels.ndim != 1 or not is_integer_dtype(labels.dtype):
        raise DataError(f"{path}: labels must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}")
    if labels.size == 0:
        raise DataError(f"{path}: no labels")
    as_int64(labels, path, "label")
    return labels


def _check_finite(array: np.ndarray, rows: np.ndarray, path: str) -> None:
    """Raises on the first NaN/Inf among `rows`, as float32 (what training reads: 1e300 in float64 is
    Inf there), reading the memory map in bounded chunks."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    row_bytes = max(1, array.itemsize * int(np.prod(array.shape[1:])))
    chunk = max(1, _CHUNK_BYTES // row_bytes)
    rows = np.sort(rows)
    for start in range(0, len(rows), chunk):
        with np.errstate(over="ignore"):  # an overflow to Inf is what this check reports
            block = array[rows[start:start + chunk]].astype(np.float32)
        finite = np.isfinite(block.reshape(len(block), -1)).all(axis=1)
        if not finite.all():
            bad = rows[start + int(np.argmin(finite))]
            raise DataError(f"{path}: row {bad} holds NaN or Inf, or a value beyond float32's range "
                            f"(|x| > {np.finfo(np.float32).max:.4g}); finite float32 numbers are expected")


def _load_modality(directory: str, prefix: str, encoder: str, num_rows: int) -> Modality:
    path = array_path(directory, prefix)
    array = load_npy(path, f"the {prefix} modality array (N, C, H, W), (N, C, L) or (N, F)")
    if not is_numeric_dtype(array.dtype):
        kind = "not supported" if array.dtype.kind in "iuf" else "not numeric"
        raise DataError(f"{path}: dtype {array.dtype} is {kind}; integers or floats of at most 64 bits are expected")
    if array.ndim not in (2, 3, 4):
        raise DataError(f"{path}: unsupported rank {array.ndim} (shape {array.shape}); expected "
                        "(N, C, H, W) images, (N, C, L) sequences or (N, F) vectors")
    if array.shape[0] != num_rows:
        raise DataError(f"{path}: {array.shape[0]} rows but labels.npy has {num_rows}; one row per label is expected")
    sample_shape = tuple(array.shape[1:])
    if min(sample_shape) < 1:
        raise DataError(f"{path}: empty sample shape {sample_shape}")
    encoder = default_encoder(prefix, sample_shape) if encoder == "auto" else encoder
    if encoder not in ENCODERS:
        raise DataError(f"{path}: unknown encoder {encoder!r}; expected auto or one of {', '.join(ENCODERS)}")
    rank, min_size = ENCODERS[encoder].rank, ENCODERS[encoder].min_size
    if rank is not None and rank != len(sample_shape):
        raise DataError(f"{path}: encoder {encoder} reads samples of rank {rank}, this array's samples "
                        f"have shape {sample_shape}")
    spatial = sample_shape[1:] if rank is not None else ()
    if spatial and min(spatial) < min_size:
        raise DataError(f"{path}: samples of shape {sample_shape} too small for encoder {encoder}, which needs "
                        f"at least {min_size} in each spatial dimension")
    return Modality(prefix, path, array, encoder, {})


def load_data_folder(directory: str, first_prefix: str, second_prefix: str,
                     encoders: tuple[str, str] = ("auto", "auto"), splits: dict[str, np.ndarray] | None = None,
                     splits_name: str | None = None) -> DataFolder:
    """Loads and checks a data folder (see the module docstring); raises `DataError` on any problem.

    `splits`, if given, replaces the folder's split files: {"train", "valid", "test", and optionally
    "train_<PREFIX>"} -> row numbers, checked as the files would be (`read_split_files` reads them
    from another folder); `splits_name` names them in errors and is recorded as where they came
    from (a folder holding them as files, for a later resume). The data folder is only read.
    """
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: data folder not found")
    for prefix in (first_prefix, second_prefix):
        if not prefix or os.sep in prefix or prefix != prefix.strip():
            raise DataError(f"{array_path(directory, prefix)}: invalid modality prefix {prefix!r}")
    if first_prefix == second_prefix:
        raise DataError(f"{array_path(directory, first_prefix)}: prefix {first_prefix!r} given twice; "
                        "two different modalities are expected")
    labels_path = os.path.join(directory, "labels.npy")
    raw_labels = read_labels(labels_path)
    num_rows = len(raw_labels)
    modalities = tuple(_load_modality(directory, p, e, num_rows)
                       for p, e in zip((first_prefix, second_prefix), encoders))

    def index(key: str, prefix: str | None = None) -> tuple[np.ndarray, str]:
        """The row numbers of split `key` and the name that errors give them."""
        split = key.split("_")[0]
        if splits is None:
            path = os.path.join(directory, split_file_name(split, prefix))
            return _check_index(load_npy(path, "an array of row numbers"), path, num_rows), path
        name = f"{splits_name or 'the given split'} ({split_file_name(split, prefix)})"
        if key not in splits:
            raise DataError(f"{name}: missing")
        return _check_index(splits[key], name, num_rows), name

    def has_own_train(prefix: str) -> bool:
        if splits is None:
            return os.path.lexists(os.path.join(directory, split_file_name("train", prefix)))
        return f"train_{prefix}" in splits

    shared, names = {}, {}
    for split in ("valid", "test"):
        shared[split], names[split] = index(split)
    for modality in modalities:
        own = has_own_train(modality.prefix)
        train, train_name = index(f"train_{modality.prefix}" if own else "train", modality.prefix if own else None)
        if len(train) < 2:
            raise DataError(f"{train_name}: {len(train)} training row; at least 2 are needed (batch normalisation)")
        for split in ("valid", "test"):
            overlap = np.intersect1d(train, shared[split])
            if overlap.size:
                raise DataError(f"{train_name}: row {overlap[0]} is also in {split_file_name(split)} "
                                f"({overlap.size} shared rows); training rows must not be evaluated on")
        modality.splits = {"train": train, **shared}
    overlap = np.intersect1d(shared["valid"], shared["test"])
    if overlap.size:
        raise DataError(f"{names['valid']}: row {overlap[0]} is also in {split_file_name('test')} "
                        f"({overlap.size} shared rows); validation and test must be disjoint")

    for modality in modalities:
        used = np.unique(np.concatenate(list(modality.splits.values())))
        _check_finite(modality.array, used, modality.path)

    used = np.unique(np.concatenate([r for m in modalities for r in m.splits.values()]))
    classes = np.unique(np.asarray(raw_labels[used]))
    labels = np.searchsorted(classes, np.asarray(raw_labels)).clip(0, len(classes) - 1).astype(np.int64)
    if len(classes) < 2:
        raise DataError(f"{labels_path}: a single class ({classes[0]}) in the rows used; at least 2 are expected")
    warnings = []
    for modality in modalities:
        trained = set(np.unique(labels[modality.splits["train"]]).tolist())
        for split in ("valid", "test"):
            missing = sorted(set(np.unique(labels[modality.splits[split]]).tolist()) - trained)
            if missing:
                warnings.append(f"{split}_idx.npy: class(es) {classes[missing].tolist()} never seen in "
                                f"{modality.prefix}'s training rows; they cannot be predicted")
    return DataFolder(directory, modalities, labels, classes.astype(np.int64), warnings,
                      splits_name if splits is not None else None,
                      read_descriptions(directory, modalities, classes))


CLASSES_FILE = "classes.json"  # a list of class names: names[v] names label value v
NORMALIZATION_FILE = "normalization.json"  # {"modalities": {prefix: {"mean": [...], "std": [...], ...}}}


def read_descriptions(directory: str, modalities, classes: np.ndarray) -> dict[str, dict]:
    """What a folder written by prepare_data.py records beside its arrays, per modality prefix:
    "class_names" (aligned with `classes`) and "preprocessing" (the prefix's normalization.json
    entry: per-channel mean and std, sample shape, resize), for that modality's checkpoint.
    Both files are optional; a malformed one raises `DataError`."""
    found = {}
    for name in (CLASSES_FILE, NORMALIZATION_FILE):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            try:
                with open(path) as handle:
                    found[name] = json.load(handle)
            except (OSError, ValueError) as error:
                raise DataError(f"{path}: not readable JSON ({error})") from None
    metadata = {m.prefix: {} for m in modalities}
    names = found.get(CLASSES_FILE)
    if names is not None:
        path = os.path.join(directory, CLASSES_FILE)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(f"{path}: a JSON list of class names is expected")
        if classes.min() < 0 or classes.max() >= len(names):
            raise DataError(f"{path}: {len(names)} class names, but labels.npy holds the value {classes.max()}; "
                            "names[v] must name label value v")
        for entry in metadata.values():
            entry["class_names"] = [names[int(v)] for v in classes]
    described = found.get(NORMALIZATION_FILE)
    if described is not None:
        path = os.path.join(directory, NORMALIZATION_FILE)
        entries = described.get("modalities") if isinstance(described, dict) else None
        if not isinstance(entries, dict):
            raise DataError(f'{path}: a JSON object with "modalities": {{prefix: {{"mean": ..., "std": ...}}}} is expected')
        for modality in modalities:
            entry = entries.get(modality.prefix)
            if entry is None:
                continue
            channels = modality.sample_shape[0]
            if not (isinstance(entry, dict) and all(isinstance(entry.get(k), list) and len(entry[k]) == channels
                                                    for k in ("mean", "std"))):
                raise DataError(f"{path}: {modality.prefix} needs a mean and a std per channel ({channels})")
            metadata[modality.prefix]["preprocessing"] = entry
    return metadata
