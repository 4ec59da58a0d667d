"""Property-based fuzzing of the data checks: a valid folder with one random corruption must give
exit status 2, one `error:` line naming the faulty file, no traceback, and write nothing."""
import collections
import contextlib
import io
import os
import re
import shutil
import tempfile

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis (a test-only dependency) is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from toy import PREFIXES, QUICK_OPTIONS, folder_snapshot, write_toy_folder  # noqa: E402

from discomkd.data.folder import array_path  # noqa: E402

ROWS = 30
SPLIT_FILES = ("train_idx.npy", "valid_idx.npy", "test_idx.npy")
EXAMPLES_PER_KIND = 8  # 12 kinds: 96 corrupted folders in ~10 s


def required_files(folder: str) -> list[str]:
    return [array_path(folder, p) for p in PREFIXES] + [os.path.join(folder, n) for n in ("labels.npy", *SPLIT_FILES)]


# Each corruption edits a valid folder and returns (the arguments' prefixes, the files the error may name).
def rows_mismatch(folder, draw):
    path = array_path(folder, draw(st.sampled_from(PREFIXES)))
    array = np.load(path)
    delta = draw(st.integers(-5, 5).filter(bool))
    np.save(path, array[:delta] if delta < 0 else np.concatenate([array, array[:delta]]))
    return PREFIXES, {path}


def wrong_rank(folder, draw):
    path = array_path(folder, draw(st.sampled_from(PREFIXES)))
    array = np.load(path)
    np.save(path, array.reshape(-1) if draw(st.booleans()) else array.reshape(len(array), 1, 1, 1, -1))
    return PREFIXES, {path}


def wrong_dtype(folder, draw):
    kind = draw(st.sampled_from(["str", "object", "complex", "bool", "record"]))
    path = draw(st.sampled_from(required_files(folder)))
    array = np.load(path)
    if kind == "record":  # a structured array: one named field per element
        converted = np.empty(array.shape, dtype=[("value", array.dtype)])
        converted["value"] = array
    else:
        converted = {"str": lambda a: a.astype(str), "object": lambda a: a.astype(object),
                     "complex": lambda a: a.astype(np.complex64), "bool": lambda a: a != 0}[kind](array)
    np.save(path, converted)  # an object array is pickled by np.save: the loader must still refuse it
    return PREFIXES, {path}


def float_labels(folder, draw):
    path = os.path.join(folder, "labels.npy")
    labels = np.load(path).astype(np.float64)
    if draw(st.booleans()):
        labels[draw(st.integers(0, ROWS - 1))] += 0.5
    np.save(path, labels)
    return PREFIXES, {path}


def non_finite(folder, draw):
    prefix = draw(st.sampled_from(PREFIXES))
    path = array_path(folder, prefix)
    array = np.load(path)
    rows = np.load(os.path.join(folder, draw(st.sampled_from(SPLIT_FILES))))
    row = int(rows[draw(st.integers(0, len(rows) - 1))])
    position = draw(st.integers(0, array[0].size - 1))
    array[row].reshape(-1)[position] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    np.save(path, array)
    return PREFIXES, {path}


def bad_index(folder, draw):
    path = os.path.join(folder, draw(st.sampled_from(SPLIT_FILES)))
    rows = np.load(path)
    kind = draw(st.sampled_from(["negative", "too large", "duplicate", "2-D", "float"]))
    position = draw(st.integers(0, len(rows) - 1))
    if kind == "negative":
        rows[position] = -draw(st.integers(1, 10 ** 6))
    elif kind == "too large":
        rows[position] = ROWS + draw(st.integers(0, 10 ** 6))
    elif kind == "duplicate":
        rows = np.insert(rows, draw(st.integers(0, len(rows))), rows[position])
    elif kind == "2-D":
        rows = rows.reshape(-1, 1) if draw(st.booleans()) else rows.reshape(1, -1)
    else:
        rows = rows.astype(np.float64)
    np.save(path, rows)
    return PREFIXES, {path}


def overlapping_splits(folder, draw):
    source, target = draw(st.permutations(SPLIT_FILES))[:2]
    rows = np.load(os.path.join(folder, source))
    target_rows = np.load(os.path.join(folder, target))
    np.save(os.path.join(folder, target), np.append(target_rows, rows[draw(st.integers(0, len(rows) - 1))]))
    # the train file is named when it takes part, otherwise valid_idx.npy
    named = "train_idx.npy" if "train_idx.npy" in (source, target) else "valid_idx.npy"
    return PREFIXES, {os.path.join(folder, named)}


def missing_file(folder, draw):
    path = draw(st.sampled_from(required_files(folder)))
    os.remove(path)
    return PREFIXES, {path}


def empty_split(folder, draw):
    path = os.path.join(folder, draw(st.sampled_from(SPLIT_FILES)))
    rows = np.load(path)
    # no rows at all; or a single training row, too few for batch normalisation
    np.save(path, rows[:1] if path.endswith("train_idx.npy") and draw(st.booleans()) else rows[:0])
    return PREFIXES, {path}


def damaged_bytes(folder, draw):
    path = draw(st.sampled_from(required_files(folder)))
    with open(path, "rb") as handle:
        content = handle.read()
    header_end = content.index(b"\n") + 1  # the header (magic, version, length, dict) ends with a newline
    kind = draw(st.sampled_from(["truncated", "garbage", "garbage header"]))
    if kind == "truncated":
        content = content[:draw(st.integers(0, len(content) - 1))]
    elif kind == "garbage":  # not a .npy file at all
        content = draw(st.binary(max_size=200).filter(lambda b: not b.startswith(b"\x93NUMPY")))
    else:  # the magic string kept, what follows replaced
        content = content[:6] + draw(st.binary(min_size=0, max_size=header_end))
    with open(path, "wb") as handle:
        handle.write(content)
    return PREFIXES, {path}


def single_class(folder, draw):
    path = os.path.join(folder, "labels.npy")
    np.save(path, np.full(ROWS, draw(st.integers(-10, 10)), dtype=np.int64))
    return PREFIXES, {path}


def same_prefix_twice(folder, draw):
    prefix = draw(st.sampled_from(PREFIXES))
    return (prefix, prefix), {array_path(folder, prefix)}


CORRUPTIONS = {f.__name__: f for f in (rows_mismatch, wrong_rank, wrong_dtype, float_labels, non_finite, bad_index,
                                        overlapping_splits, missing_file, empty_split, damaged_bytes, single_class,
                                        same_prefix_twice)}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupted_folder_gives_one_error_line_and_writes_nothing(cli_main, kind):
    ran = collections.Counter()

    @settings(max_examples=EXAMPLES_PER_KIND, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def corrupted_folder_is_refused(data):
        parent = tempfile.mkdtemp(prefix="fuzz-")
        try:
            folder = write_toy_folder(os.path.join(parent, "data"), n=ROWS, seed=data.draw(st.integers(0, 3)))
            prefixes, blamed = CORRUPTIONS[kind](folder, data.draw)
            before = folder_snapshot(parent)
            stdout, stderr = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                status = cli_main([folder, *prefixes, *QUICK_OPTIONS])
            err = stderr.getvalue()
            assert status == 2, f"exit {status}, stderr {err!r}"
            assert "Traceback" not in err and stdout.getvalue() == ""
            lines = err.splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), err
            assert any(lines[0].startswith(f"error: {path}: ") for path in blamed), f"{lines[0]} names none of {blamed}"
            assert folder_snapshot(parent) == before, "files written"
            ran[re.sub(r"-?\d+", "#", lines[0].split(": ")[2].split(";")[0])[:40]] += 1  # messages seen, for the report
        finally:
            shutil.rmtree(parent)

    corrupted_folder_is_refused()
    print(f"\nfuzz {kind}: {sum(ran.values())} corrupted folders refused with exit 2; messages {dict(ran)}")
    assert ran, "no example ran"
