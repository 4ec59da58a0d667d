"""Folders of image files -> a DisCoM-KD data folder (the library behind prepare_data.py and predict.py's
raw input).

Input: one folder per modality laid out FOLDER/<class>/<sample>.<ext>, the two modalities' samples
paired by class and file stem; or a CSV manifest (columns id, label, one path column per modality,
optional split). Files: PNG/JPG (Pillow), TIFF with any number of bands (tifffile), per-sample .npy
(H, W) or (C, H, W). A sample keeps its channels, band order and values: (H, W, C) becomes
(C, H, W), a grayscale image one channel.

Output (data.py's layout): <NAME>_data_normalized.npy (N, C, H, W) float32, labels.npy, the split
files, classes.json and normalization.json. Valid and test rows are paired samples (the loader
evaluates both modalities on the same rows); an unpaired sample is a training row of its own
modality only (train_idx_<NAME>.npy) and zeros in the other modality's array, which never reads it.
Each channel is standardised with the mean and std of the training rows only.
"""
from __future__ import annotations

import collections
import csv
import importlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from discomkd import console
from discomkd.data import (
    CLASSES_FILE,
    NORMALIZATION_FILE,
    DataFolder,
    array_path,
    load_data_folder,
    write_split_files,
)
from discomkd.errors import DataError
from discomkd.splits import DEFAULT_FRACTIONS, SPLITS, check_fractions, stratified_split

PILLOW_EXTENSIONS = (".png", ".jpg", ".jpeg")
TIFF_EXTENSIONS = (".tif", ".tiff")
SAMPLE_EXTENSIONS = PILLOW_EXTENSIONS + TIFF_EXTENSIONS + (".npy",)
PREPROCESSING_FORMAT = "discomkd-preprocessing/1"
RESIZE_METHOD = "bilinear, antialiased (torch.nn.functional.interpolate), on the original values"
SKIPPED_FILE = "skipped.txt"
MANIFEST_COLUMNS = ("id", "label", "split")  # every other column is a modality's file paths


class SampleError(ValueError):
    """One file that cannot be used (unreadable, corrupt, wrong size); the message is the problem."""


# ----------------------------------------------------------------------------- one file
def _import_reader(module: str, package: str, path: str):
    """The optional reader library, or a one-line DataError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"{path}: reading {os.path.splitext(path)[1]} files needs {package}: "
                        f"pip install {package}") from None


def _read_pillow(path: str) -> np.ndarray:
    image_module = _import_reader("PIL.Image", "pillow", path)
    try:
        with image_module.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not later
            if image.mode == "P":  # palette indices are not intensities
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            elif image.mode == "1":
                image = image.convert("L")
            pixels = np.asarray(image)
    except Exception as error:  # Pillow raises many types for a corrupt file (OSError, SyntaxError, ...)
        raise SampleError(f"not a readable image ({type(error).__name__}: {error})") from None
    return pixels if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)


def _read_tiff(path: str) -> np.ndarray:
    tifffile = _import_reader("tifffile", "tifffile", path)
    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            axes, pixels = series.axes, series.asarray()
    except Exception as error:  # tifffile raises many types for a corrupt file
        raise SampleError(f"not a readable TIFF ({type(error).__name__}: {error})") from None
    if "Y" not in axes or "X" not in axes:
        raise SampleError(f"TIFF axes {axes!r} (shape {pixels.shape}) hold no Y and X image axes")
    others = [i for i, a in enumerate(axes) if a not in "YX" and pixels.shape[i] > 1]
    if len(others) > 1:
        raise SampleError(f"TIFF of shape {pixels.shape} (axes {axes}): one image of (bands, height, width) "
                          "is expected, not a stack")
    # band axis first, then Y, X; size-1 axes dropped
    order = others + [axes.index("Y"), axes.index("X")]
    pixels = pixels.transpose(order + [i for i in range(pixels.ndim) if i not in order])
    return pixels.reshape(pixels.shape[:len(order)])


def _read_npy(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise SampleError(f"not a readable .npy array of numbers ({error})") from None


def read_sample(path: str) -> np.ndarray:
    """One sample file as (C, H, W) in its own dtype (values and band order untouched).

    PNG/JPG through Pillow, TIFF through tifffile (imported only then), .npy as (H, W) or
    (C, H, W). Raises `SampleError` for an unusable file, `DataError` when a reader is missing.
    """
    extension = os.path.splitext(path)[1].lower()
    if not os.path.isfile(path):
        raise SampleError("file not found")
    if extension in TIFF_EXTENSIONS:
        pixels = _read_tiff(path)
    elif extension in PILLOW_EXTENSIONS:
        pixels = _read_pillow(path)
    elif extension == ".npy":
        pixels = _read_npy(path)
    else:
        raise SampleError(f"unsupported file type {extension!r}; expected one of {', '.join(SAMPLE_EXTENSIONS)}")
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8)
    if not (np.issubdtype(pixels.dtype, np.integer) or np.issubdtype(pixels.dtype, np.floating)):
        raise SampleError(f"dtype {pixels.dtype} is not numeric")
    if pixels.ndim == 2:
        pixels = pixels[None]  # (H, W) -> (1, H, W)
    if pixels.ndim != 3 or min(pixels.shape) < 1:
        raise SampleError(f"shape {pixels.shape}: an image (H, W) or (C, H, W) is expected")
    if np.issubdtype(pixels.dtype, np.floating) and not np.isfinite(pixels).all():
        raise SampleError("holds NaN or Inf")
    return np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("="))


def resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, H, W) -> (C, *size) float32, bilinear with antialiasing on the original values (one method
    for every format, band count and bit depth, which Pillow's resize cannot all take)."""
    if tuple(pixels.shape[1:]) == tuple(size):
        return pixels
    image = torch.from_numpy(pixels.astype(np.float32))[None]  # (1, C, H, W)
    return F.interpolate(image, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)[0].numpy()


def load_sample(path: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """`read_sample`, resized to `size` (H, W) when given."""
    pixels = read_sample(path)
    return pixels if size is None else resize(pixels, size)


def normalise(pixels: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """(C, H, W) -> float32 (x - mean) / std per channel (computed in float64): the one function that
    both prepare_data.py and predict.py apply, so a raw file predicts as its prepared row does."""
    mean = np.asarray(mean, dtype=np.float64)[:, None, None]
    std = np.asarray(std, dtype=np.float64)[:, None, None]
    return ((pixels.astype(np.float64) - mean) / std).astype(np.float32)


def channel_moments(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and sum of squared deviations (float64) of one (C, H, W) sample."""
    values = pixels.reshape(len(pixels), -1).astype(np.float64)
    mean = values.mean(axis=1)
    return mean, ((values - mean[:, None]) ** 2).sum(axis=1)


def combine_moments(means: np.ndarray, squares: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std of several samples of `count` values per channel each,
    from their (n, C) means and squared-deviation sums (Chan et al.'s pairwise formula: stable)."""
    mean = means.mean(axis=0)
    total = squares.sum(axis=0) + count * ((means - mean) ** 2).sum(axis=0)
    return mean, np.sqrt(total / (count * len(means)))


# ----------------------------------------------------------------------------- listing samples
@dataclass
class Sample:
    """One row: a sample id, its class name, a file per modality (None where absent), a user split."""

    sample_id: str
    label: str
    paths: dict[str, str | None]
    split: str | None = None


@dataclass
class Table:
    names: tuple[str, str]  # the two modality names
    samples: list[Sample]
    sources: list[str]  # the input folders or manifest
    notes: list[str] = field(default_factory=list)


def check_name(name: str, where: str) -> str:
    if not name or not all(c.isalnum() or c in "_-" for c in name):
        raise DataError(f"{where}: modality name {name!r}: letters, digits, '_' and '-' only")
    return name


def list_class_folders(folders: dict[str, str]) -> Table:
    """Samples of FOLDER/<class>/<sample>.<ext> per modality, paired by (class, file stem)."""
    names = tuple(folders)
    found: dict[tuple[str, str], dict[str, str]] = {}
    ignored = 0
    for name, folder in folders.items():
        if not os.path.isdir(folder):
            raise DataError(f"{folder}: folder not found ({name} samples expected as {folder}/<class>/<sample>.<ext>)")
        for entry in sorted(os.listdir(folder)):
            path = os.path.join(folder, entry)
            if entry.startswith("."):
                continue
            if not os.path.isdir(path):
                if entry.lower().endswith(SAMPLE_EXTENSIONS):
                    raise DataError(f"{path}: not inside a class folder; {folder}/<class>/<sample>.<ext> expected")
                ignored += 1
                continue
            for file_name in sorted(os.listdir(path)):
                stem, extension = os.path.splitext(file_name)
                if file_name.startswith(".") or extension.lower() not in SAMPLE_EXTENSIONS \
                        or not os.path.isfile(os.path.join(path, file_name)):
                    ignored += not file_name.startswith(".")
                    continue
                paths = found.setdefault((entry, stem), {})
                if name in paths:
                    raise DataError(f"{os.path.join(path, file_name)}: same sample as {paths[name]} (one file per "
                                    "class and stem in each modality)")
                paths[name] = os.path.join(path, file_name)
        if not any(name in paths for paths in found.values()):
            raise DataError(f"{folder}: no sample files; {folder}/<class>/<sample>.<ext> expected with ext one of "
                            + ", ".join(SAMPLE_EXTENSIONS))
    samples = [Sample(f"{label}/{stem}", label, {n: paths.get(n) for n in names})
               for (label, stem), paths in sorted(found.items())]
    notes = [f"ignored {ignored} entries that are not <class>/<sample> files of a known type"] if ignored else []
    return Table(names, samples, list(folders.values()), notes)


def read_manifest(path: str) -> Table:
    """Samples of a CSV manifest: id, label, one column of file paths per modality (relative to the
    manifest's folder; empty where absent), optional split (train, valid or test)."""
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            rows, header = list(reader), list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: not a readable CSV manifest ({error})") from None
    names = tuple(c for c in header if c not in MANIFEST_COLUMNS)
    if not rows or "id" not in header or "label" not in header or len(names) != 2:
        raise DataError(f"{path}: header id,label,<NAME1>,<NAME2>[,split] and at least one row expected, got "
                        f"{','.join(header) or 'nothing'}")
    for name in names:
        check_name(name, path)
    base = os.path.dirname(os.path.abspath(path))
    samples, seen = [], set()
    for line, row in enumerate(rows, start=2):
        where = f"{path}: line {line}"
        if None in row or any(v is None for v in row.values()):
            raise DataError(f"{where}: {len(header)} columns expected")
        sample_id, label = row["id"].strip(), row["label"].strip()
        if not sample_id or not label or sample_id in seen:
            raise DataError(f"{where}: " + (f"id {sample_id!r} repeated" if sample_id in seen else "empty id or label"))
        seen.add(sample_id)
        paths = {n: os.path.join(base, row[n].strip()) if row[n].strip() else None for n in names}
        split = (row["split"].strip() or None) if "split" in header else None
        if "split" in header and split not in SPLITS:
            raise DataError(f"{where}: split {split or ''!r}; one of {', '.join(SPLITS)} expected")
        if not any(paths.values()):
            raise DataError(f"{where}: no file in either modality")
        if split in ("valid", "test") and not all(paths.values()):
            raise DataError(f"{where}: a {split} sample needs a file in both modalities (both are evaluated on it)")
        samples.append(Sample(sample_id, label, paths, split))
    return Table(names, samples, [path])


def class_order(labels) -> list[str]:
    """Class names in label order: numerically when every name is an integer, else alphabetically."""
    unique = set(labels)
    if all(name.lstrip("-").isdigit() for name in unique):
        return sorted(unique, key=int)
    return sorted(unique)


# ----------------------------------------------------------------------------- preparing a folder
@dataclass
class FileCheck:
    """What the first pass learnt about one file: its shape, or why it cannot be used."""

    shape: tuple[int, ...] | None = None
    dtype: str = ""
    moments: tuple[np.ndarray, np.ndarray] | None = None
    problem: str | None = None


def _expected_shapes(table: Table, checks: dict, sizes: dict) -> dict[str, tuple[int, int, int]]:
    """Per modality the shape every sample must have: the most common one (first met on a tie), with
    the resize's (H, W) when one is asked for; other files are marked wrong."""
    expected = {}
    for name in table.names:
        shapes = collections.Counter(c.shape for (_, n), c in checks.items() if n == name and c.problem is None)
        if not shapes:
            continue
        shape, count = shapes.most_common(1)[0]
        expected[name] = shape
        for (row, n), check in checks.items():
            if n != name or check.problem is not None or check.shape == shape:
                continue
            if check.shape[0] != shape[0]:
                check.problem = f"{check.shape[0]} channels, expected {shape[0]} (as {count} other {name} files)"
            else:
                hint = f"; pass --resize {name}={shape[1]}x{shape[2]} to resize" if sizes.get(name) is None else ""
                check.problem = (f"size {check.shape[1]}x{check.shape[2]} (HxW), expected {shape[1]}x{shape[2]} "
                                 f"(as {count} other {name} files){hint}")
    return expected


def _splits(table: Table, labels: np.ndarray, seed: int, fractions) -> dict[str, np.ndarray]:
    """Row numbers of train (paired), valid, test and train_<NAME> (that modality's own training rows)."""
    present = {n: np.array([s.paths[n] is not None for s in table.samples]) for n in table.names}
    paired = present[table.names[0]] & present[table.names[1]]
    if any(s.split for s in table.samples):
        split_of = np.array([s.split for s in table.samples])
        rows = {split: np.flatnonzero((split_of == split) & paired) for split in SPLITS}
        own_train = {n: np.flatnonzero((split_of == "train") & present[n]) for n in table.names}
    else:
        paired_rows = np.flatnonzero(paired)
        drawn = stratified_split(labels[paired_rows], seed, fractions)
        rows = {split: paired_rows[drawn[split]] for split in SPLITS}
        own_train = {n: np.union1d(rows["train"], np.flatnonzero(present[n] & ~paired)) for n in table.names}
    for split in ("valid", "test"):
        if len(rows[split]) == 0:
            raise DataError(f"{table.sources[0]}: no {split} rows: {int(paired.sum())} samples are paired (same class "
                            "and file stem in both modalities), and valid and test need paired samples (at least 3 "
                            "in a class)")
    return {**{s: r.astype(np.int64) for s, r in rows.items()},
            **{f"train_{n}": r.astype(np.int64) for n, r in own_train.items()}}


def _replace_folder(temporary: str, output: str) -> None:
    """Moves the finished `temporary` folder to `output`, replacing what was there."""
    if os.path.isdir(output) and os.listdir(output):
        old = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(output)), prefix=".old-prepare-")
        os.rmdir(old)
        os.rename(output, old)
        os.rename(temporary, output)
        shutil.rmtree(old)
    else:
        if os.path.isdir(output):
            os.rmdir(output)
        os.rename(temporary, output)


def check_output(output: str, table: Table, overwrite: bool) -> None:
    """Refuses an output that is a file, holds files (unless `overwrite`), or holds an input, which
    --overwrite would delete."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise DataError(f"{output}: exists and is not a folder")
    if os.path.isdir(output) and os.listdir(output) and not overwrite:
        raise DataError(f"{output}: output folder already holds files; pass --overwrite to replace them "
                        "or choose another folder")
    inside = os.path.realpath(output) + os.sep
    for source in table.sources + [p for s in table.samples for p in s.paths.values() if p]:
        if (os.path.realpath(source) + os.sep).startswith(inside):
            raise DataError(f"{output}: holds the input {source}; choose an output folder outside the inputs")


def prepare(table: Table, output: str, sizes: dict[str, tuple[int, int] | None] | None = None, seed: int = 0,
            fractions=DEFAULT_FRACTIONS, skip_bad: bool = False, overwrite: bool = False,
            progress: bool | None = None) -> dict:
    """Reads every file of `table` twice (a check pass that also gathers the statistics, then a writing
    pass: one sample in memory at a time, the arrays written through memory maps) and writes the data
    folder `output`, built in a temporary sibling folder and renamed, so nothing is half-written.

    Raises `DataError` (nothing written) for bad fractions (`splits.check_fractions`), for the first
    bad file unless `skip_bad`, for a missing reader, or when the result would not load. Returns a
    summary (rows, shapes, splits, skipped).
    """
    fractions = check_fractions(fractions)
    sizes = {n: (sizes or {}).get(n) for n in table.names}
    check_output(output, table, overwrite)
    checks = _check_files(table, sizes, progress)
    expected = _expected_shapes(table, checks, sizes)
    checks, skipped = _leave_out_bad_files(table, checks, skip_bad)
    class_names = class_order(s.label for s in table.samples)
    labels = np.array([class_names.index(s.label) for s in table.samples], dtype=np.int64)
    rows = _splits(table, labels, seed, fractions)
    preprocessing = {name: _preprocessing(table, name, rows[f"train_{name}"], checks, expected[name], sizes[name])
                     for name in table.names}
    data = _write_and_load(output, table, labels, rows, class_names, preprocessing, sizes, skipped, progress)
    present = {n: sum(s.paths[n] is not None for s in table.samples) for n in table.names}
    return {"output": output, "rows": len(table.samples), "present": present, "classes": class_names,
            "shapes": {n: tuple(expected[n]) for n in table.names},
            "dtypes": {n: preprocessing[n]["source_dtypes"] for n in table.names},
            "splits": {k: len(v) for k, v in rows.items()}, "skipped": skipped, "notes": table.notes,
            "warnings": data.warnings}


def _check_files(table: Table, sizes: dict, progress: bool | None) -> dict[tuple[int, str], FileCheck]:
    """The check pass: each (row, modality) file read once, resized as asked; its shape, source dtype and
    channel moments, or why it cannot be used."""
    files = [(row, n) for row, s in enumerate(table.samples) for n in table.names if s.paths[n] is not None]
    checks: dict[tuple[int, str], FileCheck] = {}
    bar = console.progress(len(files), "checking files", enabled=progress)
    for done, (row, name) in enumerate(files, start=1):
        try:
            pixels = read_sample(table.samples[row].paths[name])
            dtype = str(pixels.dtype)
            if sizes[name] is not None:
                pixels = resize(pixels, sizes[name])
            checks[row, name] = FileCheck(pixels.shape, dtype, channel_moments(pixels))
        except SampleError as error:
            checks[row, name] = FileCheck(problem=str(error))
        bar.update()
    bar.close()
    return checks


def _leave_out_bad_files(table: Table, checks: dict, skip_bad: bool) -> tuple[dict, list[str]]:
    """Refuses the first bad file, or with `skip_bad` leaves the bad files out of `table` (and the rows
    left with nothing, or a valid/test row left with one modality). Returns the good files' checks
    keyed by the new row numbers, and the lines of skipped.txt."""
    bad = [(row, n, c.problem) for (row, n), c in checks.items() if c.problem is not None]
    if bad and not skip_bad:
        row, name, problem = bad[0]
        more = f" (and {len(bad) - 1} more bad files)" if len(bad) > 1 else ""
        raise DataError(f"{table.samples[row].paths[name]}: {problem}{more}; --skip-bad leaves bad files out and "
                        f"lists them in {SKIPPED_FILE}")
    skipped = [f"{table.samples[row].paths[name]}: {problem}" for row, name, problem in bad]
    for row, name, _ in bad:
        table.samples[row].paths[name] = None
    keep = []
    for row, sample in enumerate(table.samples):
        if sample.split in ("valid", "test") and not all(sample.paths.values()):
            skipped.append(f"{sample.sample_id}: a {sample.split} sample left with one modality; left out")
        elif any(sample.paths.values()):
            keep.append(row)
    new_row = {row: i for i, row in enumerate(keep)}
    checks = {(new_row[row], n): c for (row, n), c in checks.items() if c.problem is None and row in new_row}
    table.samples = [table.samples[row] for row in keep]
    for name in table.names:
        if not any(s.paths[name] for s in table.samples):
            raise DataError(f"{table.sources[0]}: no usable {name} file")
    return checks, skipped


def _preprocessing(table: Table, name: str, train: np.ndarray, checks: dict, shape: tuple[int, int, int],
                   size: tuple[int, int] | None) -> dict:
    """Modality `name`'s normalization.json entry: per-channel mean and std over its training rows
    `train`, its sample shape and resize, and the dtypes its files had."""
    means = np.stack([checks[row, name].moments[0] for row in train])
    squares = np.stack([checks[row, name].moments[1] for row in train])
    mean, std = combine_moments(means, squares, shape[1] * shape[2])
    dtypes = collections.Counter(checks[row, name].dtype for row in range(len(table.samples)) if (row, name) in checks)
    return {
        "mean": mean.tolist(),
        "std": np.where(std > 0, std, 1.0).tolist(),  # a constant channel: centred only
        "shape": list(shape), "resize": list(size) if size else None,
        "resize_method": RESIZE_METHOD if size else None, "source_dtypes": sorted(dtypes),
        "statistics": f"per channel over the {len(train)} training rows of {name} (population std)",
    }


def _write_and_load(output: str, table: Table, labels: np.ndarray, rows: dict, class_names: list[str],
                    preprocessing: dict, sizes: dict, skipped: list[str], progress: bool | None) -> DataFolder:
    """Writes the folder in a temporary sibling of `output`, loads it as training would (its errors
    name `output`), then renames it to `output`; nothing is left behind on failure."""
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(dir=parent, prefix=".tmp-prepare-")
    try:
        _write_folder(temporary, table, labels, rows, class_names, preprocessing, sizes, skipped, progress)
        try:
            data = load_data_folder(temporary, *table.names)
        except DataError as error:  # say it of the output, not of the temporary folder
            raise DataError(str(error).replace(temporary, output)) from None
        _replace_folder(temporary, output)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return data


def _write_folder(folder: str, table: Table, labels: np.ndarray, rows: dict, class_names: list[str],
                  preprocessing: dict, sizes: dict, skipped: list[str], progress: bool | None) -> None:
    np.save(os.path.join(folder, "labels.npy"), labels)
    # the shared splits, and a modality's own training rows where they differ from the paired ones
    write_split_files(folder, {**{split: rows[split] for split in SPLITS if len(rows[split])},
                               **{f"train_{n}": rows[f"train_{n}"] for n in table.names
                                  if not np.array_equal(rows[f"train_{n}"], rows["train"])}})
    with open(os.path.join(folder, CLASSES_FILE), "w") as handle:
        json.dump(class_names, handle, indent=1)
    with open(os.path.join(folder, NORMALIZATION_FILE), "w") as handle:
        json.dump({"format": PREPROCESSING_FORMAT, "modalities": preprocessing}, handle, indent=1)
    if skipped:
        with open(os.path.join(folder, SKIPPED_FILE), "w") as handle:
            handle.write("\n".join(skipped) + "\n")
    total = sum(s.paths[n] is not None for s in table.samples for n in table.names)
    bar = console.progress(total, "writing files", enabled=progress)
    for name in table.names:
        entry = preprocessing[name]
        # a memory map: the array may be larger than memory, one sample is held at a time
        array = np.lib.format.open_memmap(array_path(folder, name), mode="w+", dtype=np.float32,
                                          shape=(len(table.samples), *entry["shape"]))
        for row, sample in enumerate(table.samples):
            if sample.paths[name] is None:
                array[row] = 0.0  # absent: never read, this modality's splits exclude the row
                continue
            try:
                pixels = load_sample(sample.paths[name], sizes[name])
            except SampleError as error:  # changed since the check pass
                raise DataError(f"{sample.paths[name]}: {error}") from None
            if pixels.shape != tuple(entry["shape"]):
                raise DataError(f"{sample.paths[name]}: shape {pixels.shape} changed since it was checked")
            array[row] = normalise(pixels, entry["mean"], entry["std"])
            bar.update()
        array.flush()
        del array
    bar.close()


# ----------------------------------------------------------------------------- raw input for predict.py
def raw_input_files(path: str, input_shape: tuple[int, ...]) -> list[str] | None:
    """The sample files `path` stands for (a folder's, searched recursively, sorted; or the file itself),
    or None when `path` is an (N, *input_shape) .npy array of rows (predict.py's original input)."""
    if os.path.isdir(path):
        files = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                       if name.lower().endswith(SAMPLE_EXTENSIONS) and not name.startswith("."))
        if not files:
            raise DataError(f"{path}: no sample files ({', '.join(SAMPLE_EXTENSIONS)}) in this folder")
        return files
    if path.lower().endswith(".npy"):
        try:
            rank = np.load(path, mmap_mode="r", allow_pickle=False).ndim
        except (OSError, ValueError, EOFError):
            return None  # predict.py's own checks name the problem
        return None if rank == len(input_shape) + 1 else [path]
    return [path] if path.lower().endswith(SAMPLE_EXTENSIONS) else None


def read_raw_samples(files: list[str], preprocessing: dict | None, input_shape: tuple[int, ...],
                     checkpoint_path: str) -> np.ndarray:
    """(N, *input_shape) float32: the files read as prepare_data.py read them, resized as recorded and
    normalised with the checkpoint's statistics. Raises `DataError` on the first unusable file."""
    if preprocessing is None:
        raise DataError(f"{checkpoint_path}: no normalisation recorded (its run's data folder was not made by "
                        "prepare_data.py); give an (N, ...) .npy array of normalised samples instead")
    size = tuple(preprocessing["resize"]) if preprocessing.get("resize") else None
    samples = np.empty((len(files), *input_shape), dtype=np.float32)
    for i, path in enumerate(files):
        try:
            pixels = load_sample(path, size)
        except SampleError as error:
            raise DataError(f"{path}: {error}") from None
        if pixels.shape != tuple(input_shape):
            raise DataError(f"{path}: sample of shape {pixels.shape} (C, H, W), but {checkpoint_path} expects "
                            f"{tuple(input_shape)}" + ("" if size else " and its data was not resized"))
        samples[i] = normalise(pixels, preprocessing["mean"], preprocessing["std"])
    return samples
