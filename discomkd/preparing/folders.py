"""Folders of image files -> a DisCoM-KD data folder (the library behind prepare_data.py).

Input: one folder per modality laid out FOLDER/<class>/<sample>.<ext>, the two modalities' samples
paired by class and file stem; or a CSV manifest (columns id, label, one path column per modality,
optional split). Each file is read by `samples.py` (PNG/JPG, TIFF, per-sample .npy).

Output (data/folder.py's layout): <NAME>_data_normalized.npy (N, C, H, W) float32, labels.npy, the split
files, classes.json, normalization.json and rows.csv (each row's identity: `rows.py`).
Valid and test rows are paired samples (the loader evaluates both modalities on the same rows); an
unpaired sample is a training row of its own modality only (train_idx_<NAME>.npy) and zeros in the
other modality's array, which never reads it. Each channel is standardised with the mean and std of
the training rows only. The folder is built beside its place and swapped in (`output.py`).
"""
from __future__ import annotations

import collections
import csv
import json
import os
import re
from dataclasses import dataclass, field

import numpy as np

from discomkd.data.folder import CLASSES_FILE, NORMALIZATION_FILE, array_path, load_data_folder, write_split_files
from discomkd.data.splits import DEFAULT_FRACTIONS, SPLITS, check_fractions, stratified_split
from discomkd.preparing.output import (
    SKIPPED_FILE,
    building,
    check_output,
    check_space,
    is_full_disk,
    no_space,
    reserve,
    swap_in,
)
from discomkd.preparing.rows import DIGEST_SUFFIX, ROWS_FILE, reserved_name_problem, write_record
from discomkd.preparing.samples import (
    SAMPLE_EXTENSIONS,
    SampleError,
    channel_moments,
    check_resize,
    content_digest,
    depth_of,
    file_digest,
    fill_nodata,
    load_sample,
    moments_problem,
    normalise,
    read_sample,
    resize,
    robust_moments,
)
from discomkd.preparing.statistics import check_not_collapsed, preprocessing_entry
from discomkd.utils import console
from discomkd.utils.errors import DataError, NoSpaceError, OptionError
from discomkd.utils.seeds import seed_problem

PREPROCESSING_FORMAT = "discomkd-preprocessing/1"
MANIFEST_COLUMNS = ("id", "label", "split")  # every other column is a modality's file paths
INTEGER_NAME = re.compile(r"-?[0-9]+")  # a class name read as a number: ASCII digits only ('²' is not one)


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
    if reserved_name_problem(name):
        raise DataError(f"{where}: {reserved_name_problem(name)}")
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
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: Excel's "CSV UTF-8" starts with a BOM
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
    """Class names in label order: numerically when every name is an integer (ASCII digits, an optional
    minus), else alphabetically."""
    unique = set(labels)
    if all(INTEGER_NAME.fullmatch(name) for name in unique):
        return sorted(unique, key=int)
    return sorted(unique)


# ----------------------------------------------------------------------------- preparing a folder
@dataclass
class FileCheck:
    """What the first pass learnt about one file: its shape, or why it cannot be used."""

    shape: tuple[int, ...] | None = None
    dtype: str = ""
    moments: tuple[np.ndarray, np.ndarray] | None = None
    robust: np.ndarray | None = None  # (C, 4) per channel: median, median absolute deviation, min, max
    digest: str = ""  # SHA-256 of its bytes: its identity in rows.csv
    content: str = ""  # SHA-256 of its decoded pixels: duplicates, however each file was encoded
    nodata: int = 0  # pixels equal to the modality's --nodata value, filled
    problem: str | None = None


def _check_files(table: Table, sizes: dict, nodata: dict, progress: bool | None) -> dict[tuple[int, str], FileCheck]:
    """The check pass: each (row, modality) file read once, its nodata pixels filled and resized as asked; its
    shape, source dtype, channel statistics and digests, or why it cannot be used."""
    files = [(row, n) for row, s in enumerate(table.samples) for n in table.names if s.paths[n] is not None]
    checks: dict[tuple[int, str], FileCheck] = {}
    bar = console.progress(len(files), "checking files", enabled=progress)
    for row, name in files:
        path = table.samples[row].paths[name]
        try:
            pixels = read_sample(path)
            dtype, content = str(pixels.dtype), content_digest(pixels)
            pixels, filled = fill_nodata(pixels, nodata[name])
            if sizes[name] is not None:
                pixels = resize(pixels, sizes[name])
            moments = channel_moments(pixels)
            checks[row, name] = FileCheck(pixels.shape, dtype, moments, robust_moments(pixels), file_digest(path),
                                          content, filled, moments_problem(moments, pixels))
        except SampleError as error:
            checks[row, name] = FileCheck(problem=str(error))
        bar.update()
    bar.close()
    return checks


def _mark_duplicates(table: Table, checks: dict) -> None:
    """Marks a file that is the same file (resolved path) or has the same pixels as an earlier row's file
    of its modality (compared decoded, so a file saved again in another encoding is found too): one sample
    twice, which a split could put in training and in test."""
    for name in table.names:
        first: dict[str, str] = {}  # resolved path or decoded content -> the first file that had it
        for row, sample in enumerate(table.samples):
            check = checks.get((row, name))
            if check is None or check.problem is not None:
                continue
            path = sample.paths[name]
            real = os.path.realpath(path)
            if real in first:
                check.problem = f"the same file as {first[real]} (one sample twice)"
            elif check.content in first:
                check.problem = f"the same pixels as {first[check.content]} (one sample twice)"
            else:
                first[real] = first[check.content] = path


def _expected_formats(table: Table, checks: dict, sizes: dict) -> dict[str, tuple[int, int, int]]:
    """Per modality the shape every sample must have and the scale of its values: the most common ones
    (first met on a tie), with the resize's (H, W) when one is asked for; other files are marked wrong."""
    expected = {}
    for name in table.names:
        good = {row: c for (row, n), c in checks.items() if n == name and c.problem is None}
        if not good:
            continue
        depths = collections.Counter(depth_of(c.dtype) for c in good.values())
        depth, count = depths.most_common(1)[0]
        for check in good.values():
            if depth_of(check.dtype) != depth:
                check.problem = (f"{depth_of(check.dtype)} ({check.dtype}), but {count} other {name} files hold "
                                 f"{depth}: their scales differ; convert the files of a modality to one type")
        shapes = collections.Counter(c.shape for c in good.values() if c.problem is None)
        shape, count = shapes.most_common(1)[0]
        expected[name] = shape
        for check in good.values():
            if check.problem is not None or check.shape == shape:
                continue
            if check.shape[0] != shape[0]:
                check.problem = f"{check.shape[0]} channels, expected {shape[0]} (as {count} other {name} files)"
            else:
                hint = f"; pass --resize {name}={shape[1]}x{shape[2]} to resize" if sizes.get(name) is None else ""
                check.problem = (f"size {check.shape[1]}x{check.shape[2]} (HxW), expected {shape[1]}x{shape[2]} "
                                 f"(as {count} other {name} files){hint}")
    return expected


def _leave_out_bad_files(table: Table, checks: dict, skip_bad: bool) -> tuple[dict, list[str]]:
    """Refuses the first bad file, or with `skip_bad` leaves the bad files out of `table` (and the rows
    left with nothing, or a valid/test row left with one modality). Returns the good files' checks
    keyed by the new row numbers, and the lines of skipped.txt."""
    bad = [(row, n, c.problem) for (row, n), c in sorted(checks.items()) if c.problem is not None]
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
        if len(paired_rows) == 0:
            first, second = table.names
            example = next(s.paths[first] for s in table.samples if s.paths[first])
            raise DataError(f"{table.sources[0]}: 0 samples are paired: no {second} file has the class and file stem "
                            f"of any {first} file (e.g. {example}); valid and test need paired samples")
        drawn = stratified_split(labels[paired_rows], seed, fractions)
        rows = {split: paired_rows[drawn[split]] for split in SPLITS}
        own_train = {n: np.union1d(rows["train"], np.flatnonzero(present[n] & ~paired)) for n in table.names}
    for split in ("valid", "test"):
        if len(rows[split]) == 0:
            raise DataError(f"{table.sources[0]}: no {split} rows: {int(paired.sum())} samples are paired (same class "
                            "and file stem in both modalities), and valid and test need paired samples (at least 3 "
                            "in a class)")
    for name, train in own_train.items():
        if len(train) == 0:
            raise DataError(f"{table.sources[0]}: no {name} training rows with fractions "
                            f"{' '.join(f'{f:g}' for f in fractions)}; give training a larger share")
    return {**{s: r.astype(np.int64) for s, r in rows.items()},
            **{f"train_{n}": r.astype(np.int64) for n, r in own_train.items()}}


def _record_lines(table: Table, labels: np.ndarray, rows: dict, class_names: list[str], checks: dict) -> list[dict]:
    """rows.csv's lines: each row's number, id, class, label, split, and per modality its file and digest."""
    split_of = {int(row): split for split in SPLITS for row in rows[split]}
    split_of.update({int(row): "train" for name in table.names for row in rows[f"train_{name}"]})
    lines = []
    for row, sample in enumerate(table.samples):
        line = {"row": row, "id": sample.sample_id, "class": class_names[labels[row]], "label": int(labels[row]),
                "split": split_of.get(row, "")}
        for name in table.names:
            path = sample.paths[name]
            line[name] = os.path.abspath(path) if path else ""
            line[name + DIGEST_SUFFIX] = checks[row, name].digest if path else ""
        lines.append(line)
    return lines


def _needed_bytes(table: Table, preprocessing: dict, skipped: list[str]) -> int:
    """The bytes the output takes: the arrays, and a bound on the small files (labels and split files at
    8 bytes a row each, rows.csv's paths and digests, the JSON files)."""
    rows = len(table.samples)
    arrays = sum(4 * rows * int(np.prod(preprocessing[n]["shape"])) + 4096 for n in table.names)
    record = sum(len(os.path.abspath(p)) + 80 for s in table.samples for p in s.paths.values() if p) + 100 * rows
    return arrays + 8 * rows * 6 + record + sum(len(line) + 1 for line in skipped) + 64 * 1024


def prepare(table: Table, output: str, sizes: dict[str, tuple[int, int] | None] | None = None, seed: int = 0,
            fractions=DEFAULT_FRACTIONS, skip_bad: bool = False, overwrite: bool = False,
            progress: bool | None = None, nodata: dict[str, float] | None = None) -> dict:
    """Reads every file of `table` twice (a check pass that also gathers the statistics and digests, then a
    writing pass: one sample in memory at a time, the arrays written through memory maps whose disk space
    is reserved first) and writes the data folder `output`, built beside it and swapped in whole.

    Raises `OptionError` for bad fractions (`splits.check_fractions`), seed or resize, `DataError` (nothing
    written) for an output that cannot be replaced (`output.check_output`), for the first bad file
    (unreadable, another shape or bit depth, a duplicate, values that overflow) unless `skip_bad`, for a
    missing reader, a full disk, or when the result would not load. Returns a summary (rows, shapes,
    splits, skipped).
    """
    fractions = check_fractions(fractions)
    if seed_problem(seed):
        raise OptionError(seed_problem(seed))
    sizes = {n: (sizes or {}).get(n) for n in table.names}
    nodata = {n: (nodata or {}).get(n) for n in table.names}
    for name, size in sizes.items():
        if size is not None:
            check_resize(name, size)
    target = check_output(output, table.sources + [p for s in table.samples for p in s.paths.values() if p], overwrite)
    checks = _check_files(table, sizes, nodata, progress)
    _mark_duplicates(table, checks)
    expected = _expected_formats(table, checks, sizes)
    checks, skipped = _leave_out_bad_files(table, checks, skip_bad)
    class_names = class_order(s.label for s in table.samples)
    labels = np.array([class_names.index(s.label) for s in table.samples], dtype=np.int64)
    rows = _splits(table, labels, seed, fractions)
    preprocessing = {name: preprocessing_entry(name, [s.paths[name] for s in table.samples], rows[f"train_{name}"],
                                               checks, expected[name], sizes[name], nodata[name])
                     for name in table.names}
    notes = table.notes + _nodata_notes(table.names, checks, nodata)
    record = _record_lines(table, labels, rows, class_names, checks)
    needed = _needed_bytes(table, preprocessing, skipped)
    check_space(target, needed)
    try:
        with building(target) as temporary:
            _write_folder(temporary, table, labels, rows, class_names, preprocessing, sizes, skipped, record, progress)
            try:
                data = load_data_folder(temporary, *table.names)
            except DataError as error:  # said of the output, not of the temporary folder
                raise DataError(str(error).replace(temporary, output)) from None
            swap_in(temporary, target)
    except (OSError, NoSpaceError) as error:  # NoSpaceError: atomic_write's (the split files) full disk
        if isinstance(error, NoSpaceError) or is_full_disk(error):
            raise no_space(output, needed) from None
        raise
    present = {n: sum(s.paths[n] is not None for s in table.samples) for n in table.names}
    return {"output": output, "rows": len(table.samples), "present": present, "classes": class_names,
            "shapes": {n: tuple(expected[n]) for n in table.names},
            "dtypes": {n: preprocessing[n]["source_dtypes"] for n in table.names},
            "splits": {k: len(v) for k, v in rows.items()}, "skipped": skipped, "notes": notes,
            "warnings": data.warnings}


def _nodata_notes(names, checks: dict, nodata: dict) -> list[str]:
    """A line per modality with a --nodata value: how many pixels had it, in how many files."""
    notes = []
    for name in names:
        if nodata[name] is not None:
            counts = [c.nodata for (_, n), c in checks.items() if n == name and c.nodata]
            notes.append(f"{name}: nodata {nodata[name]:g} in {sum(counts)} pixel(s) of {len(counts)} file(s), each "
                         "filled with its file's channel mean")
    return notes


def _write_folder(folder: str, table: Table, labels: np.ndarray, rows: dict, class_names: list[str],
                  preprocessing: dict, sizes: dict, skipped: list[str], record: list[dict],
                  progress: bool | None) -> None:
    # the arrays first, their space reserved before a byte is written through the memory maps: a full disk
    # is then an OSError here, not a SIGBUS while writing
    arrays = {}
    for name in table.names:
        path = array_path(folder, name)
        arrays[name] = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                                 shape=(len(table.samples), *preprocessing[name]["shape"]))
        reserve(path, arrays[name].offset, os.path.getsize(path))
    np.save(os.path.join(folder, "labels.npy"), labels)
    # the shared splits, and a modality's own training rows where they differ from the paired ones
    write_split_files(folder, {**{split: rows[split] for split in SPLITS if len(rows[split])},
                               **{f"train_{n}": rows[f"train_{n}"] for n in table.names
                                  if not np.array_equal(rows[f"train_{n}"], rows["train"])}})
    with open(os.path.join(folder, CLASSES_FILE), "w", encoding="utf-8") as handle:
        json.dump(class_names, handle, indent=1)
    with open(os.path.join(folder, NORMALIZATION_FILE), "w") as handle:  # allow_nan=False: never Infinity/NaN
        json.dump({"format": PREPROCESSING_FORMAT, "modalities": preprocessing}, handle, indent=1, allow_nan=False)
    write_record(os.path.join(folder, ROWS_FILE), table.names, record)
    if skipped:
        with open(os.path.join(folder, SKIPPED_FILE), "w", encoding="utf-8") as handle:
            handle.write("\n".join(skipped) + "\n")
    total = sum(s.paths[n] is not None for s in table.samples for n in table.names)
    bar = console.progress(total, "writing files", enabled=progress)
    for name in table.names:
        entry, array = preprocessing[name], arrays.pop(name)
        for row, sample in enumerate(table.samples):
            if sample.paths[name] is None:
                array[row] = 0.0  # absent: never read, this modality's splits exclude the row
                continue
            try:
                pixels = load_sample(sample.paths[name], sizes[name], entry["nodata"])
                if pixels.shape != tuple(entry["shape"]):
                    raise SampleError(f"shape {pixels.shape} changed since it was checked")
                array[row] = normalise(pixels, entry["mean"], entry["std"])
                check_not_collapsed(pixels, array[row])
            except SampleError as error:  # changed since the check pass, or beyond float32 once normalised
                raise DataError(f"{sample.paths[name]}: {error}") from None
            bar.update()
        array.flush()
        del array
    bar.close()
