"""predict.py: single-modality inference from a saved checkpoint, and its refusals."""
import errno
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from toy import PREFIXES, ROOT, TOY_RUN_LABELS, folder_snapshot, refused

from discomkd.analysis import prediction
from discomkd.commands.predict import main
from discomkd.data.folder import array_path
from discomkd.runs.outputs import load_classifier
from discomkd.training.inference import predict_array

# class values that are not 0..K-1, so that a prediction returned as an index would be caught
LABEL_VALUES = TOY_RUN_LABELS


def predict_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "predict.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_predict_array_reproduces_the_runs_test_predictions(toy_run, prefix):
    folder, output = toy_run
    branch, checkpoint = load_classifier(os.path.join(output, f"best_{prefix}.pt"))
    array = np.load(array_path(folder, prefix), mmap_mode="r")
    test_rows = np.load(os.path.join(folder, "test_idx.npy"))
    expected = np.load(os.path.join(output, f"test_predictions_{prefix}.npy"))

    probabilities, predicted = predict_array(branch, array, 512, "cpu", rows=test_rows)
    assert checkpoint["classes"] == list(LABEL_VALUES)
    np.testing.assert_array_equal(np.asarray(checkpoint["classes"])[predicted], expected)
    assert probabilities.dtype == np.float32 and probabilities.shape == (len(test_rows), len(LABEL_VALUES))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    # batches of 5 rows (the last one partial) give the same classes
    _, small_batches = predict_array(branch, array, 5, "cpu", rows=test_rows)
    np.testing.assert_array_equal(small_batches, predicted)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_cli_reproduces_the_runs_test_predictions_and_scores_them(toy_run, prefix):
    folder, output = toy_run
    out = os.path.join(folder, f"cli_{prefix}")
    result = predict_cli(os.path.join(output, f"best_{prefix}.pt"), array_path(folder, prefix),
                         "--rows", os.path.join(folder, "test_idx.npy"),
                         "--labels", os.path.join(folder, "labels.npy"), "--output", out)
    assert result.returncode == 0, result.stderr
    expected = np.load(os.path.join(output, f"test_predictions_{prefix}.npy"))
    classes = np.load(f"{out}_classes.npy", allow_pickle=False)
    probabilities = np.load(f"{out}_probabilities.npy", allow_pickle=False)
    np.testing.assert_array_equal(classes, expected)
    assert probabilities.dtype == np.float32 and probabilities.shape == (len(expected), len(LABEL_VALUES))
    np.testing.assert_array_equal(np.asarray(LABEL_VALUES)[probabilities.argmax(axis=1)], classes)
    # the printed accuracy is the run's own test accuracy for this checkpoint
    accuracy = torch.load(os.path.join(output, f"best_{prefix}.pt"), weights_only=True)["metrics"]["test"]["accuracy"]
    assert f"accuracy {accuracy:.4f}" in result.stdout
    assert "true \\ predicted" in result.stdout


def test_predict_array_reads_one_batch_at_a_time(toy_run):
    folder, output = toy_run
    branch, _ = load_classifier(os.path.join(output, "best_VEC.pt"))
    array = np.load(array_path(folder, "VEC"))

    class RecordingArray:
        """Array stand-in that records how many rows each read returns."""

        shape, dtype = array.shape, array.dtype

        def __init__(self):
            self.reads = []

        def __len__(self):
            return len(array)

        def __getitem__(self, index):
            block = array[index]
            self.reads.append(len(block))
            return block

    recording = RecordingArray()
    _, all_rows = predict_array(branch, recording, 16, "cpu")
    _, selected = predict_array(branch, recording, 16, "cpu", rows=np.array([5, 2, 9]))
    assert max(recording.reads) == 16 and sum(recording.reads) == len(array) + 3
    np.testing.assert_array_equal(selected, all_rows[[5, 2, 9]])


def test_shape_mismatch_is_refused_in_one_line(toy_run, tmp_path):
    _, output = toy_run
    np.save(tmp_path / "wrong.npy", np.zeros((5, 7), dtype=np.float32))
    before = folder_snapshot(tmp_path)
    result = predict_cli(os.path.join(output, "best_VEC.pt"), tmp_path / "wrong.npy")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "(7,)" in result.stderr and "(6,)" in result.stderr
    assert folder_snapshot(tmp_path) == before


def test_refuses_to_overwrite_unless_asked(toy_run, tmp_path, capsys):
    folder, output = toy_run
    checkpoint, samples = os.path.join(output, "best_VEC.pt"), array_path(folder, "VEC")
    out = str(tmp_path / "p")
    np.save(f"{out}_probabilities.npy", np.zeros(1))
    assert main([checkpoint, samples, "--output", out]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not os.path.exists(f"{out}_classes.npy") and np.load(f"{out}_probabilities.npy").shape == (1,)
    assert main([checkpoint, samples, "--output", out, "--overwrite"]) == 0
    assert np.load(f"{out}_probabilities.npy").shape == (120, len(LABEL_VALUES))


def test_labels_outside_the_classes_count_as_errors(toy_run, tmp_path, capsys):
    folder, output = toy_run
    checkpoint, samples = os.path.join(output, "best_VEC.pt"), array_path(folder, "VEC")
    assert main([checkpoint, samples, "--output", str(tmp_path / "a")]) == 0
    labels = np.load(tmp_path / "a_classes.npy")  # the predictions themselves: accuracy 1
    labels[:3] = 99
    np.save(tmp_path / "labels.npy", labels)
    capsys.readouterr()
    assert main([checkpoint, samples, "--labels", str(tmp_path / "labels.npy"), "--output", str(tmp_path / "b")]) == 0
    captured = capsys.readouterr()
    assert f"accuracy {(len(labels) - 3) / len(labels):.4f}" in captured.out
    assert "99 (unknown)" in captured.out
    assert captured.err.startswith("warning: 3 label(s) with value(s) [99]")


def test_labels_are_per_input_row_and_follow_rows(toy_run, tmp_path, capsys):
    data, output = toy_run
    labels = np.load(os.path.join(data, "labels.npy"))
    rows = np.random.default_rng(0).permutation(len(labels))  # as many rows as the input: the ambiguous case
    np.save(tmp_path / "rows.npy", rows)
    assert main([os.path.join(output, "best_VEC.pt"), array_path(data, "VEC"), "--rows",
                         str(tmp_path / "rows.npy"), "--labels", os.path.join(data, "labels.npy"),
                         "--output", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    predicted = np.load(tmp_path / "p_classes.npy")
    accuracy = float(np.mean(predicted == labels[rows]))
    assert f"accuracy {accuracy:.4f}" in out, out
    np.save(tmp_path / "short.npy", labels[:10])  # one per selected row is no longer a second meaning
    before = folder_snapshot(tmp_path)
    refused(main([os.path.join(output, "best_VEC.pt"), array_path(data, "VEC"), "--rows",
                          str(tmp_path / "rows.npy"), "--labels", str(tmp_path / "short.npy"),
                          "--output", str(tmp_path / "q")]), capsys, before, folder_snapshot(tmp_path),
            f"expected {len(labels)} (one per row of the input")


def test_no_numpy_warning_is_printed_before_the_error(toy_run, tmp_path, capsys):
    data, output = toy_run
    array = np.load(array_path(data, "VEC")).astype(np.float64)
    array[4, 1] = 1e300  # an overflow when cast to float32: numpy warns unless told that it is expected
    np.save(tmp_path / "big.npy", array)
    before = folder_snapshot(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = main([os.path.join(output, "best_VEC.pt"), str(tmp_path / "big.npy"), "--device", "cpu"])
    refused(status, capsys, before, folder_snapshot(tmp_path), "row 4 ")
    assert [str(w.message) for w in caught] == []


def _write(path, values):
    np.save(path, values)
    return str(path)


BAD_INPUTS = {
    "nan": lambda d: {"input": _write(d / "x.npy", np.where(np.arange(120)[:, None] == 37, np.nan,
                                                              np.ones((120, 6), np.float32)))},
    "text": lambda d: {"input": _write(d / "x.npy", np.full((4, 6), "a"))},
    "labels_length": lambda d: {"labels": _write(d / "y.npy", np.zeros(7, np.int64))},
    "labels_float": lambda d: {"labels": _write(d / "y.npy", np.zeros(120))},
    "missing_input": lambda d: {"input": str(d / "absent.npy")},
    "not_a_checkpoint": lambda d: {"checkpoint": _write(d / "c.npy", np.zeros(3))},
    "rows_out_of_range": lambda d: {"rows": _write(d / "r.npy", np.array([0, 120]))},
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_give_one_error_line_and_write_nothing(toy_run, tmp_path, capsys, case):
    folder, output = toy_run
    paths = {"checkpoint": os.path.join(output, "best_VEC.pt"), "input": array_path(folder, "VEC"),
             **BAD_INPUTS[case](tmp_path)}
    argv = [paths.pop("checkpoint"), paths.pop("input"), "--output", str(tmp_path / "out")]
    for flag, path in paths.items():
        argv += [f"--{flag}", path]
    before = folder_snapshot(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert folder_snapshot(tmp_path) == before
    if case == "nan":
        assert "row 37" in err


def test_a_full_disk_names_the_file_and_leaves_no_partial_outputs(toy_run, tmp_path, capsys, monkeypatch):
    folder, output = toy_run
    real_save = prediction.save_npy

    def classes_on_a_full_disk(path, values):  # the probabilities fit, the classes do not
        if values.dtype == np.int64:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(path, values)

    monkeypatch.setattr(prediction, "save_npy", classes_on_a_full_disk)
    before = folder_snapshot(tmp_path)
    refused(main([os.path.join(output, "best_VEC.pt"), array_path(folder, "VEC"), "--output", str(tmp_path / "p")]),
            capsys, before, folder_snapshot(tmp_path), f"error: {tmp_path / 'p'}_classes.npy: cannot be written",
            "o space left on device")
