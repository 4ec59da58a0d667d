"""Epoch batching, label mapping, dtypes, and every bad input: one `error:` line, exit status 2, nothing
written."""
import itertools
import os
import shutil

import numpy as np
import pytest
import torch
from toy import PREFIXES, QUICK_OPTIONS, folder_snapshot, read_results, refused, write_toy_folder

from discomkd.data.batches import RowSource, epoch_positions
from discomkd.data.folder import (
    array_path,
    data_fingerprint,
    load_data_folder,
    load_npy,
    load_with_split_files,
    reload_data_folder,
    write_split_files,
)
from discomkd.data.splits import draw_split
from discomkd.utils.errors import DataError

ROWS = 30  # enough for a stratified split of 3 classes with rows in every split


# ----------------------------------------------------------------------------- epoch batching
def check_epoch(sizes, batch_size, seed=0):
    """Returns the batch sizes of one epoch after checking the invariants every epoch must hold."""
    bounds, positions = epoch_positions(sizes, batch_size, torch.Generator().manual_seed(seed))
    length = max(sizes)
    assert bounds[0][0] == 0 and bounds[-1][1] == length
    assert all(end == next_start for (_, end), (next_start, _) in zip(bounds, bounds[1:])), "gaps or overlaps"
    batches = [end - start for start, end in bounds]
    assert min(batches) >= 2, f"a batch of {min(batches)} row(s): {batches}"
    assert max(batches) <= batch_size + 1
    for size, order in zip(sizes, positions):
        assert order.dtype == torch.int64 and len(order) == length
        counts = np.bincount(order.numpy(), minlength=size)
        assert len(counts) == size, "position outside the training rows"
        # every row seen each epoch; the smaller set cycled evenly (each row length // size or one more times)
        assert counts.min() == length // size and counts.max() == -(-length // size), counts
    return batches


def test_paired_modalities_see_every_row_once():
    _, positions = epoch_positions((10, 10), 4, torch.Generator().manual_seed(0))
    for order in positions:
        assert sorted(order.tolist()) == list(range(10))
    # independent shuffles for the two modalities
    assert not torch.equal(positions[0], positions[1])
    assert check_epoch((10, 10), 4) == [4, 4, 2]


def test_smaller_modality_is_cycled_through_fresh_shuffles():
    _, (larger, smaller) = epoch_positions((10, 4), 3, torch.Generator().manual_seed(0))
    assert sorted(larger.tolist()) == list(range(10))
    # each complete cycle of the smaller set is a permutation of its rows
    assert sorted(smaller[:4].tolist()) == sorted(smaller[4:8].tolist()) == list(range(4))
    assert len(set(smaller[8:].tolist())) == 2
    assert check_epoch((10, 4), 3) == [3, 3, 4]  # 10 = 3 + 3 + 3 + 1: the last row joins the batch before


def test_a_remainder_of_one_row_joins_the_previous_batch():
    assert check_epoch((9, 9), 4) == [4, 5]
    assert check_epoch((5, 3), 4) == [5]
    assert check_epoch((2, 2), 2) == [2]


def test_every_size_and_batch_size_keeps_the_epoch_invariants():
    for first, second, batch_size in itertools.product(range(2, 13), range(2, 13), range(2, 6)):
        check_epoch((first, second), batch_size, seed=first * 100 + second)


def test_epoch_shuffles_repeat_with_the_same_generator():
    _, first = epoch_positions((7, 5), 3, torch.Generator().manual_seed(4))
    _, again = epoch_positions((7, 5), 3, torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip(first, again))


# ----------------------------------------------------------------------------- labels
def test_user_label_values_are_mapped_to_classes_and_back(tmp_path):
    folder = write_toy_folder(tmp_path, n=ROWS, label_values=[30, 10, 20])
    data = load_data_folder(folder, "IMG", "VEC")
    assert data.classes.tolist() == [10, 20, 30]
    raw = np.load(os.path.join(folder, "labels.npy"))
    assert data.labels.min() == 0 and data.labels.max() == 2
    assert np.array_equal(data.classes[data.labels], raw)
    assert [m.encoder for m in data.modalities] == ["resnet18", "mlp"]
    assert data.warnings == []


# ----------------------------------------------------------------------------- bad inputs
def path(folder, name):
    return os.path.join(folder, name)


def save(folder, name, values):
    np.save(path(folder, name), values)


def load(folder, name):
    return np.load(path(folder, name))


def remove(name):
    return lambda folder: os.remove(path(folder, name))


def transform(name, make):
    """A mutation replacing the array in `name` by make(old array)."""
    return lambda folder: save(folder, name, make(load(folder, name)))


def replace_array(prefix, make):
    return transform(array_path("", prefix), make)


def set_value(prefix, value):
    def make(array):
        array = array.copy()
        array.reshape(len(array), -1)[4, 0] = value  # row 4 belongs to one of the splits
        return array
    return replace_array(prefix, make)


def first_test_row_in(name):
    return lambda folder: save(folder, name, np.append(load(folder, name), load(folder, "test_idx.npy")[0]))


def write_object_array(prefix):
    values = np.array([[1.0, "a"]] * ROWS, dtype=object)
    return lambda folder: np.save(array_path(folder, prefix), values, allow_pickle=True)


def write_garbage(name):
    def mutate(folder):
        with open(path(folder, name), "wb") as handle:
            handle.write(b"not a numpy file")
    return mutate


def no_change(folder):
    pass


def options(*extra, second="VEC"):
    """The command line after DIR: both prefixes, then `extra`."""
    return ["IMG", second, *extra]


def own_training_rows_overlapping_test(folder):
    save(folder, "train_idx_VEC.npy", load(folder, "train_idx.npy"))
    first_test_row_in("train_idx_VEC.npy")(folder)


# id, mutation of the toy folder, command line after DIR, then what the error line must contain: the
# offending file (or option) and the problem
BAD_INPUTS = [
    ("missing first array", remove(array_path("", "IMG")), options(), "IMG_data_normalized.npy", "file not found"),
    ("missing second array", remove(array_path("", "VEC")), options(), "VEC_data_normalized.npy", "file not found"),
    ("missing labels", remove("labels.npy"), options(), "labels.npy", "file not found"),
    ("missing split", remove("test_idx.npy"), options(), "test_idx.npy", "file not found"),
    ("missing data folder", shutil.rmtree, options(), "data: data folder not found"),
    ("prefix given twice", no_change, options(second="IMG"), "IMG_data_normalized.npy", "given twice"),
    ("rows differ from labels", replace_array("VEC", lambda a: a[:-1]), options(), "VEC_data_normalized.npy",
     "29 rows but labels.npy has 30"),
    ("string array", replace_array("VEC", lambda a: a.astype(str)), options(), "VEC_data_normalized.npy",
     "not numeric"),
    ("object array", write_object_array("VEC"), options(), "VEC_data_normalized.npy", "Python objects"),
    ("not a npy file", write_garbage(array_path("", "IMG")), options(), "IMG_data_normalized.npy",
     "not a .npy file"),
    ("NaN in array", set_value("IMG", np.nan), options(), "IMG_data_normalized.npy", "row 4 holds NaN"),
    ("Inf in array", set_value("VEC", -np.inf), options(), "VEC_data_normalized.npy", "row 4 holds NaN or Inf"),
    ("labels 2-D", transform("labels.npy", lambda a: a.reshape(-1, 1)), options(), "labels.npy", "shape (30, 1)"),
    ("labels float", transform("labels.npy", lambda a: a.astype(np.float64)), options(), "labels.npy",
     "dtype float64"),
    ("index out of range", transform("test_idx.npy", lambda a: np.append(a, ROWS)), options(), "test_idx.npy",
     "row number 30 out of range"),
    ("negative index", transform("valid_idx.npy", lambda a: np.append(a, -1)), options(), "valid_idx.npy",
     "negative row number -1"),
    ("duplicated index", transform("train_idx.npy", lambda a: np.append(a, a[0])), options(), "train_idx.npy",
     "listed 2 times"),
    ("float index", transform("valid_idx.npy", lambda a: a.astype(np.float32)), options(), "valid_idx.npy",
     "dtype float32"),
    ("empty split", transform("valid_idx.npy", lambda a: a[:0]), options(), "valid_idx.npy", "empty split"),
    ("single training row", transform("train_idx.npy", lambda a: a[:1]), options(), "train_idx.npy",
     "1 training row"),
    ("train/test overlap", first_test_row_in("train_idx.npy"), options(), "train_idx.npy", "also in test_idx.npy"),
    ("own train/test overlap", own_training_rows_overlapping_test, options(), "train_idx_VEC.npy",
     "also in test_idx.npy"),
    ("valid/test overlap", first_test_row_in("valid_idx.npy"), options(), "valid_idx.npy", "also in test_idx.npy"),
    ("unsupported rank 5", replace_array("IMG", lambda a: a.reshape(ROWS, 1, 1, 12, 12)), options(),
     "IMG_data_normalized.npy", "unsupported rank 5"),
    ("image too small for resnet18", replace_array("IMG", lambda a: a[:, :, :5, :5]), options(),
     "IMG_data_normalized.npy", "too small for encoder resnet18"),
    ("image too small for lenet", replace_array("IMG", lambda a: a[:, :, :8, :8]),
     options("--encoder-first", "lenet"), "IMG_data_normalized.npy", "too small for encoder lenet"),
    ("encoder of the wrong rank", no_change, options("--encoder-second", "resnet18"), "VEC_data_normalized.npy",
     "reads samples of rank 3"),
    ("unknown encoder", no_change, options("--encoder-first", "vgg"), "IMG_data_normalized.npy",
     "unknown encoder 'vgg'"),
    ("batch size 1", no_change, options("--batch-size", "1"), "--batch-size 1", "at least 2"),
    ("augmentation of vectors", no_change, options("--augment-second", "flip"), "--augment-second flip",
     "not available"),
]


@pytest.mark.parametrize("mutate, arguments, expected", [(case[1], case[2], case[3:]) for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_gives_one_error_line_and_writes_nothing(tmp_path, capsys, cli_main, mutate, arguments, expected):
    folder = write_toy_folder(tmp_path / "data", n=ROWS)
    mutate(folder)
    before = folder_snapshot(tmp_path)
    prefixes, case_options = arguments[:2], arguments[2:]
    # the case's own options come last so that its --batch-size wins
    status = cli_main([folder, *prefixes, "--epochs", "1", "--batch-size", "8", "--device", "cpu", *case_options])
    out, err = capsys.readouterr()
    assert status == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(text in lines[0] for text in expected), lines[0]
    assert out == ""
    assert folder_snapshot(tmp_path) == before
    assert not os.path.exists(os.path.join(folder, "DisCoM-KD_IMG_VEC"))


def test_class_missing_from_training_is_a_warning_not_an_error(tmp_path, capsys, cli_main):
    folder = write_toy_folder(tmp_path / "data", n=ROWS, label_values=[10, 20, 30])
    labels = load(folder, "labels.npy")
    train = load(folder, "train_idx.npy")
    save(folder, "train_idx.npy", train[labels[train] != 30])
    output = str(tmp_path / "out")
    status = cli_main([folder, "IMG", "VEC", *QUICK_OPTIONS, "--output", output])
    _, err = capsys.readouterr()
    assert status == 0
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    # one warning per modality for the test split (class 30 has test rows); valid may warn as well
    test_warnings = [line for line in warnings if "test_idx.npy" in line]
    assert len(test_warnings) == 2 and all("[30]" in line for line in test_warnings), err
    assert "error" not in err
    assert os.path.isfile(os.path.join(output, "results.json"))


# ----------------------------------------------------------------------------- dtypes and values
@pytest.fixture
def folder(tmp_path):
    return write_toy_folder(tmp_path / "data", PREFIXES, n=ROWS)


def _rewrite(folder, name, change):
    path = os.path.join(folder, name)
    np.save(path, change(np.load(path)))
    return path


def test_big_endian_and_narrow_dtypes_are_read_as_their_values(folder):
    reference = np.load(array_path(folder, "IMG"))
    for dtype in (">f4", ">f8", "<f2", ">i2", "u1"):
        array = reference.astype(dtype)
        rows = np.arange(ROWS)
        for resident in (True, False):
            source = RowSource(array, rows, torch.device("cpu"), resident)
            batch = source.gather(torch.arange(ROWS))
            assert batch.dtype == torch.float32
            np.testing.assert_array_equal(batch.numpy(), array.astype(np.float32))


def test_a_big_endian_folder_trains(cli_main, folder, capsys):
    _rewrite(folder, "IMG_data_normalized.npy", lambda a: a.astype(">f4"))
    _rewrite(folder, "labels.npy", lambda a: a.astype(">i8"))
    assert cli_main([folder, *PREFIXES, *QUICK_OPTIONS]) == 0, capsys.readouterr().err
    assert read_results(os.path.join(folder, "DisCoM-KD_IMG_VEC"))["status"] == "finished"


@pytest.mark.parametrize("name, change, expected", [
    ("IMG_data_normalized.npy", lambda a: a.astype(np.longdouble), "not supported"),
    ("IMG_data_normalized.npy", lambda a: a.astype("m8[s]"), "not numeric"),
    ("labels.npy", lambda a: a.astype("m8[D]"), "integer"),
    ("test_idx.npy", lambda a: a.astype("m8[ns]"), "integer"),
    ("labels.npy", lambda a: a.astype(np.uint64) + np.uint64(2**63), "exceeds"),
    ("train_idx.npy", lambda a: np.append(a.astype(np.uint64), np.uint64(2**64 - 1)), "exceeds"),
])
def test_unsupported_dtypes_and_values_are_refused(cli_main, folder, capsys, name, change, expected):
    if name == "IMG_data_normalized.npy" and np.dtype(np.longdouble).itemsize <= 8:
        pytest.skip("no extended precision on this platform")
    path = _rewrite(folder, name, change)
    before = folder_snapshot(folder)
    refused(cli_main([folder, *PREFIXES, *QUICK_OPTIONS]), capsys, before, folder_snapshot(folder), path, expected)


def test_uint64_labels_within_int64_keep_their_values(folder):
    _rewrite(folder, "labels.npy", lambda a: a.astype(np.uint64) + np.uint64(2**62))
    data = load_data_folder(folder, *PREFIXES)
    assert data.classes.tolist() == [2**62, 2**62 + 1, 2**62 + 2]


def test_float64_beyond_float32_is_refused_naming_the_row(cli_main, folder, capsys):
    rows = np.load(os.path.join(folder, "valid_idx.npy"))
    path = array_path(folder, "VEC")
    array = np.load(path).astype(np.float64)
    array[rows[0], 2] = 1e300  # finite in float64, Inf in float32
    np.save(path, array)
    before = folder_snapshot(folder)
    refused(cli_main([folder, *PREFIXES, *QUICK_OPTIONS]), capsys, before, folder_snapshot(folder), path,
            f"row {rows[0]} ", "float32")


def test_load_npy_names_what_stands_where_a_file_should_be(tmp_path):
    os.mkdir(tmp_path / "folder.npy")
    os.mkfifo(tmp_path / "fifo.npy")
    os.symlink(tmp_path / "loop_b.npy", tmp_path / "loop_a.npy")
    os.symlink(tmp_path / "loop_a.npy", tmp_path / "loop_b.npy")
    os.symlink(tmp_path / "gone.npy", tmp_path / "dangling.npy")
    for name, expected in (("folder.npy", "is a folder, not a file"), ("fifo.npy", "not a regular file"),
                           ("loop_a.npy", "symbolic link loop"), ("dangling.npy", "broken symbolic link"),
                           ("missing.npy", "file not found")):
        with pytest.raises(DataError, match=expected):
            load_npy(str(tmp_path / name), "an array")


# ----------------------------------------------------------------------------- a run's data folder, read again
def recorded(folder, splits_from=None):
    """What a run records of its data folder (results.json "data" and "data_fingerprint")."""
    data = load_with_split_files(folder, ("IMG", "VEC"), ("lenet", "auto"), splits_from)
    return data.describe(), data_fingerprint(data)


def test_an_unchanged_folder_reads_again_as_the_run_read_it(tmp_path):
    folder = write_toy_folder(tmp_path / "data", n=ROWS)
    described, fingerprint = recorded(folder)
    data = reload_data_folder(described, fingerprint)
    assert data.describe() == described and data.modalities[0].encoder == "lenet"
    moved = shutil.copytree(folder, tmp_path / "moved")
    assert reload_data_folder(described, fingerprint, str(moved)).directory == str(moved)


def test_a_run_on_its_own_split_reads_it_again_also_from_a_moved_folder(tmp_path):
    folder = write_toy_folder(tmp_path / "data", n=ROWS)
    drawn = write_toy_split(folder)
    write_split_files(str(tmp_path / "run_split"), drawn)
    described, fingerprint = recorded(folder, str(tmp_path / "run_split"))
    assert described["splits_from"] == str(tmp_path / "run_split")
    moved = shutil.copytree(folder, tmp_path / "moved")
    for name in ("train_idx.npy", "valid_idx.npy", "test_idx.npy"):
        os.remove(os.path.join(moved, name))  # the run's split is read from its own folder, not the data folder
    data = reload_data_folder(described, fingerprint, str(moved))
    assert np.array_equal(data.modalities[1].splits["test"], drawn["test"])


def write_toy_split(folder):
    """A split other than the folder's own files: the toy folder's rows drawn with another seed."""
    return draw_split(load(folder, "labels.npy"), seed=7)


@pytest.mark.parametrize("change, expected", [
    ("dtype", ["VEC_data_normalized.npy", "dtype float64", "float32"]),
    ("shape", ["VEC_data_normalized.npy", "sample shape [7]", "[6]"]),
    ("rows", ["IMG_data_normalized.npy", "rows per split"]),
    ("classes", ["classes [100, 101, 102]"]),
    ("labels", ["labels or split rows differ"]),
])
def test_a_changed_folder_is_refused_naming_what_differs(tmp_path, change, expected):
    folder = write_toy_folder(tmp_path / "data", n=ROWS)
    described, fingerprint = recorded(folder)
    labels, vectors = load(folder, "labels.npy"), np.load(array_path(folder, "VEC"))
    if change == "dtype":
        np.save(array_path(folder, "VEC"), vectors.astype(np.float64))
    elif change == "shape":
        np.save(array_path(folder, "VEC"), np.concatenate([vectors, vectors[:, :1]], axis=1))
    elif change == "rows":
        save(folder, "test_idx.npy", load(folder, "test_idx.npy")[:-1])
    elif change == "classes":
        save(folder, "labels.npy", labels + 100)
    else:  # the same classes and counts on other rows: only the fingerprint tells
        train = load(folder, "train_idx.npy")
        other = train[labels[train] != labels[train[0]]][0]
        labels[[train[0], other]] = labels[[other, train[0]]]
        save(folder, "labels.npy", labels)
    with pytest.raises(DataError, match="the data folder changed since training") as error:
        reload_data_folder(described, fingerprint)
    assert all(text in str(error.value) for text in expected), str(error.value)
