"""rows.csv: what each row of a folder written by prepare_data.py is, so that a raw file is matched to its
row by identity, never by its position in a sorted list.

One line per row, in row order: `row` (its number in the arrays, labels.npy and the split files), `id`
(CLASS/STEM for image folders, the manifest's id), `class` (its name), `label` (its value in labels.npy),
`split` (train, valid or test), then per modality NAME the source file (absolute path, empty where the
modality is absent) and NAME_sha256, the SHA-256 of its bytes: the identity predict.py matches raw files by,
so that a copied or renamed file still finds its row and a changed one does not.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass

import numpy as np

from discomkd.utils.errors import DataError

ROWS_FILE = "rows.csv"
RECORD_COLUMNS = ("row", "id", "class", "label", "split")
DIGEST_SUFFIX = "_sha256"


def reserved_name_problem(name: str) -> str | None:
    """Why a modality cannot be called `name` (its columns would clash with rows.csv's), or None."""
    if name in RECORD_COLUMNS or name.endswith(DIGEST_SUFFIX):
        return f"modality name {name!r} is reserved (a column of {ROWS_FILE}: {', '.join(RECORD_COLUMNS)}, " \
               f"NAME{DIGEST_SUFFIX})"
    return None


def header(names) -> list[str]:
    return [*RECORD_COLUMNS, *names, *(name + DIGEST_SUFFIX for name in names)]


def write_record(path: str, names, lines: list[dict]) -> None:
    """Writes rows.csv: `lines` holds one dict per row with the keys of `header(names)`."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, header(names))
        writer.writeheader()
        writer.writerows(lines)


@dataclass
class RowRecord:
    """A prepared folder's rows.csv, read back: per modality, each row's source file and digest ('' where
    the modality is absent)."""

    path: str
    names: tuple[str, ...]
    ids: list[str]
    labels: np.ndarray  # (N,) int64, as labels.npy
    files: dict[str, list[str]]
    digests: dict[str, list[str]]

    def __len__(self) -> int:
        return len(self.ids)

    def rows_by_digest(self, name: str) -> dict[str, int]:
        """Digest -> row for modality `name` (prepare_data.py refuses two rows of one content)."""
        return {digest: row for row, digest in enumerate(self.digests[name]) if digest}


def find_record(folder: str) -> str | None:
    """The rows.csv of `folder`, or None."""
    path = os.path.join(folder, ROWS_FILE)
    return path if os.path.isfile(path) else None


def read_record(path: str) -> RowRecord:
    """rows.csv read and checked (rows numbered 0..N-1 in order, integer labels, a file digest per
    modality); raises `DataError` naming the file and the line."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            lines, columns = list(reader), list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: not a readable {ROWS_FILE} ({error})") from None
    names = tuple(c for c in columns if c not in RECORD_COLUMNS and not c.endswith(DIGEST_SUFFIX))
    if not lines or columns != header(names):
        raise DataError(f"{path}: the columns {','.join(header(('NAME1', 'NAME2')))} and at least one row are "
                        f"expected (as prepare_data.py writes them), got {','.join(columns) or 'nothing'}")
    labels = []
    for number, line in enumerate(lines):
        if None in line or any(v is None for v in line.values()) or line["row"] != str(number) \
                or not re.fullmatch(r"[0-9]+", line["label"]):
            raise DataError(f"{path}: line {number + 2}: row {number} with an integer label expected, as "
                            "prepare_data.py writes it")
        labels.append(int(line["label"]))
    return RowRecord(path, names, [line["id"] for line in lines], np.array(labels, dtype=np.int64),
                     {n: [line[n] for line in lines] for n in names},
                     {n: [line[n + DIGEST_SUFFIX] for line in lines] for n in names})
