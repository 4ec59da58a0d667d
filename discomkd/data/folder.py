"""Reading and checking a DisCoM-KD data folder and its split files, and reading again the folder a run
recorded (`reload_data_folder`, with `data_fingerprint`: has the data changed since?).

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
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field

import numpy as np

from discomkd.data.splits import split_file_name
from discomkd.models.discomkd import ENCODERS, default_encoder_for
from discomkd.utils.errors import DataError
from discomkd.utils.files import atomic_write, save_npy

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

    def paired_train_rows(self) -> np.ndarray:
        """The training rows of both modalities (sorted): what a method that reads the same rows of both trains on."""
        return np.intersect1d(self.modalities[0].splits["train"], self.modalities[1].splits["train"])

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
    return {key: load_npy(os.path.join(directory, name), "an array of row numbers")
            for key, name in _split_file_names(prefixes).items() if os.path.lexists(os.path.join(directory, name))}


def write_split_files(folder: str, splits: dict[str, np.ndarray]) -> None:
    """Writes `splits` ({"train", "valid", "test", "train_<PREFIX>"} -> row numbers, as `read_split_files`
    returns them) as int64 split files in `folder`, created if needed: every file or none. Each goes to
    its temporary file, and only when all are written are they renamed (nested `atomic_write`s: each
    one's write starts the next, the renames unwind)."""
    os.makedirs(folder, exist_ok=True)
    keys = list(splits)

    def write_from(i):
        def write(temporary):
            save_npy(temporary, np.asarray(splits[keys[i]], dtype=np.int64))
            if i + 1 < len(keys):
                atomic_write(os.path.join(folder, _file_of(keys[i + 1])), write_from(i + 1))
        return write

    atomic_write(os.path.join(folder, _file_of(keys[0])), write_from(0))


def _split_file_names(prefixes) -> dict[str, str]:
    """Split key -> file name for a folder of these modalities, in the order the loader checks them:
    valid, test, train, then each modality's own train_<PREFIX>."""
    return {key: _file_of(key) for key in ("valid", "test", "train", *(f"train_{prefix}" for prefix in prefixes))}


def _file_of(key: str) -> str:
    """The file name of a split key: train_idx.npy for "train", train_idx_<PREFIX>.npy for "train_<PREFIX>"."""
    split, _, prefix = key.partition("_")
    return split_file_name(split, prefix or None)


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
    _check_folder_and_prefixes(directory, first_prefix, second_prefix)
    labels_path = os.path.join(directory, "labels.npy")
    raw_labels = read_labels(labels_path)
    modalities = tuple(_load_modality(directory, p, e, len(raw_labels))
                       for p, e in zip((first_prefix, second_prefix), encoders))
    files, given = _split_file_names((first_prefix, second_prefix)), splits is not None
    if not given:  # the folder's own split files, named by their paths in errors
        splits = read_split_files(directory, (first_prefix, second_prefix))
        names = {key: os.path.join(directory, name) for key, name in files.items()}
    else:
        names = {key: f"{splits_name or 'the given split'} ({name})" for key, name in files.items()}
    _assign_splits(modalities, splits, names, len(raw_labels))
    for modality in modalities:
        used = np.unique(np.concatenate(list(modality.splits.values())))
        _check_finite(modality.array, used, modality.path)
    labels, classes = _classes(raw_labels, modalities, labels_path)
    return DataFolder(directory, modalities, labels, classes, _unseen_classes(modalities, labels, classes),
                      splits_name if given else None, read_descriptions(directory, modalities, classes))


def _check_folder_and_prefixes(directory: str, first_prefix: str, second_prefix: str) -> None:
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: data folder not found")
    for prefix in (first_prefix, second_prefix):
        if not prefix or os.sep in prefix or prefix != prefix.strip():
            raise DataError(f"{array_path(directory, prefix)}: invalid modality prefix {prefix!r}")
    if first_prefix == second_prefix:
        raise DataError(f"{array_path(directory, first_prefix)}: prefix {first_prefix!r} given twice; "
                        "two different modalities are expected")


def _assign_splits(modalities, rows: dict[str, np.ndarray], names: dict[str, str], num_rows: int) -> None:
    """Checks the split rows (`rows`: split key -> row numbers, `names`: how errors name each key) and
    gives each modality its own: its training rows (its own file's, else the shared ones), and the
    shared valid and test rows, which must be disjoint from each other and from its training rows."""
    def checked(key: str) -> np.ndarray:
        if key not in rows:
            raise DataError(f"{names[key]}: file not found (an array of row numbers expected here)")
        return _check_index(rows[key], names[key], num_rows)

    shared = {split: checked(split) for split in ("valid", "test")}
    for modality in modalities:
        key = f"train_{modality.prefix}" if f"train_{modality.prefix}" in rows else "train"
        train = checked(key)
        if len(train) < 2:
            raise DataError(f"{names[key]}: {len(train)} training row; at least 2 are needed (batch normalisation)")
        for split in ("valid", "test"):
            overlap = np.intersect1d(train, shared[split])
            if overlap.size:
                raise DataError(f"{names[key]}: row {overlap[0]} is also in {split_file_name(split)} "
                                f"({overlap.size} shared rows); training rows must not be evaluated on")
        modality.splits = {"train": train, **shared}
    overlap = np.intersect1d(shared["valid"], shared["test"])
    if overlap.size:
        raise DataError(f"{names['valid']}: row {overlap[0]} is also in {split_file_name('test')} "
                        f"({overlap.size} shared rows); validation and test must be disjoint")


def _classes(raw_labels: np.ndarray, modalities, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
    """The labels as class indices 0..K-1 and the classes (the label values of the rows any split uses)."""
    used = np.unique(np.concatenate([r for m in modalities for r in m.splits.values()]))
    classes = np.unique(np.asarray(raw_labels[used]))
    labels = np.searchsorted(classes, np.asarray(raw_labels)).clip(0, len(classes) - 1).astype(np.int64)
    if len(classes) < 2:
        raise DataError(f"{labels_path}: a single class ({classes[0]}) in the rows used; at least 2 are expected")
    return labels, classes.astype(np.int64)


def _unseen_classes(modalities, labels: np.ndarray, classes: np.ndarray) -> list[str]:
    """Warnings for classes that a modality evaluates on but never trains on."""
    warnings = []
    for modality in modalities:
        trained = set(np.unique(labels[modality.splits["train"]]).tolist())
        for split in ("valid", "test"):
            missing = sorted(set(np.unique(labels[modality.splits[split]]).tolist()) - trained)
            if missing:
                warnings.append(f"{split}_idx.npy: class(es) {classes[missing].tolist()} never seen in "
                                f"{modality.prefix}'s training rows: its classifier has an output for them but no "
                                "example to learn it from, so their rows are scored on untrained guesses")
    return warnings


# ----------------------------------------------------------------------------- a run's data, read again
def load_with_split_files(directory: str, prefixes, encoders: tuple[str, str] = ("auto", "auto"),
                          splits_from: str | None = None) -> DataFolder:
    """The data folder `directory` with the split files of the folder `splits_from` (a run's own drawn
    split, saved beside it), or with its own split files when `splits_from` is None or `directory`."""
    if splits_from is None or os.path.abspath(splits_from) == os.path.abspath(directory):
        return load_data_folder(directory, *prefixes, encoders)
    return load_data_folder(directory, *prefixes, encoders, splits=read_split_files(splits_from, prefixes),
                            splits_name=splits_from)


def data_fingerprint(data: DataFolder) -> str:
    """SHA-256 of the labels and every split's row numbers: what `describe()` cannot see (labels moved
    between rows). The modality arrays, possibly larger than memory, are compared by shape and dtype only."""
    digest = hashlib.sha256(np.ascontiguousarray(data.labels, dtype=np.int64).tobytes())
    for modality in data.modalities:
        for split in sorted(modality.splits):
            digest.update(np.ascontiguousarray(modality.splits[split], dtype=np.int64).tobytes())
    return digest.hexdigest()


def reload_data_folder(described: dict, fingerprint: str, directory: str | None = None) -> DataFolder:
    """The data folder a run recorded, read again as the run read it: `described` is the run's
    `DataFolder.describe()` (its results.json "data"), `fingerprint` its `data_fingerprint`.

    `directory` replaces the recorded data folder (one moved since); the split is the run's: the split
    files of its "splits_from" folder when that is not the recorded data folder (a split drawn for the
    run and saved beside it), else those of the folder read. Raises `DataError` naming what differs
    when the sample shapes or dtypes, the rows per split, the classes, or the labels or split rows
    (the fingerprint) are not the run's.
    """
    recorded, modalities = described["directory"], described["modalities"]
    splits_from = described.get("splits_from", recorded)
    own_split = splits_from == recorded  # else a split drawn for the run, saved beside it
    data = load_with_split_files(directory or recorded, [m["prefix"] for m in modalities],
                                 tuple(m["encoder"] for m in modalities), None if own_split else splits_from)
    changed = "the data folder changed since training"
    for before, after in zip(modalities, data.describe()["modalities"]):
        for field_name, what in (("sample_shape", "sample shape"), ("dtype", "dtype"), ("rows", "rows per split")):
            if before[field_name] != after[field_name]:
                raise DataError(f"{after['file']}: {what} {after[field_name]}, the run's was {before[field_name]}; "
                                f"{changed}")
    if data.classes.tolist() != described["classes"]:
        raise DataError(f"{data.directory}: classes {data.classes.tolist()}, the run's were {described['classes']}; "
                        f"{changed}")
    if data_fingerprint(data) != fingerprint:
        raise DataError(f"{data.directory}: labels or split rows differ from the run's; {changed}")
    return data


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


# ----------------------------------------------------------------------------- splits
def has_split_files(directory: str, prefixes) -> bool:
    """Whether `directory` holds any split file of a folder with these modalities (a broken link counts)."""
    return any(os.path.lexists(os.path.join(directory, name)) for name in _split_file_names(prefixes).values())
