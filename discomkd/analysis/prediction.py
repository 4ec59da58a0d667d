"""Classifying one modality's samples with a run's checkpoint (the library behind predict.py): the
inputs checked (an array of rows or raw sample files, row numbers, labels), the predictions written
(<PREFIX>_classes.npy, <PREFIX>_probabilities.npy and, with class names or raw files, a CSV listing),
and the printed summary and, with labels, the evaluation.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass

import numpy as np

from discomkd.data.folder import (
    NORMALIZATION_FILE,
    as_int64,
    file_problem,
    is_integer_dtype,
    is_numeric_dtype,
    load_npy,
)
from discomkd.evaluation.metrics import classification_metrics
from discomkd.preparing.rows import ROWS_FILE, find_record, read_record
from discomkd.preparing.samples import SAMPLE_EXTENSIONS, file_digest, raw_input_files, read_raw_samples
from discomkd.runs.outputs import load_classifier
from discomkd.training.config import Config, checkpoint_precision, resolve_device
from discomkd.training.inference import predict_array
from discomkd.utils.errors import DataError, NoSpaceError, OptionError
from discomkd.utils.files import atomic_write, folder_problem, save_npy

LISTED_INPUTS = 20  # raw files whose predicted class is printed; all of them are in the CSV

logger = logging.getLogger(__name__)


@dataclass
class Outputs:
    """The files a prediction writes: classes and probabilities always, a CSV listing of each input
    when the inputs are raw files or the checkpoint knows the class names."""

    prefix: str
    classes: str
    probabilities: str
    listing: str | None = None


def output_files(input_path: str, output: str | None, overwrite: bool) -> Outputs:
    """The output files of a prediction (prefix `output`, else INPUT without .npy or its sample file's
    extension, plus _pred), refused when their folder cannot be written or, unless `overwrite`, they exist."""
    stem, extension = os.path.splitext(input_path.rstrip(os.sep))
    if output == "":
        raise OptionError("--output '': an empty name; name a prefix for the output files")
    prefix = output or (stem if extension.lower() in SAMPLE_EXTENSIONS else input_path.rstrip(os.sep)) + "_pred"
    classes_path, probabilities_path = output_paths(prefix)
    folder = os.path.dirname(os.path.abspath(classes_path))
    if not os.path.isdir(folder):
        raise DataError(f"{classes_path}: output folder {folder} does not exist")
    if folder_problem(folder) is not None:
        raise DataError(f"{classes_path}: {folder_problem(folder)}")
    for path in (classes_path, probabilities_path):
        if os.path.isdir(path):
            raise DataError(f"{path}: is a folder; an output file is written there")
    for path in (classes_path, probabilities_path):
        if os.path.exists(path) and not overwrite:
            raise DataError(f"{path}: exists; pass --overwrite to replace it or --output to choose another prefix")
    return Outputs(prefix, classes_path, probabilities_path)


def predict_files(checkpoint_file: str, input_path: str, rows_file: str | None = None, labels_file: str | None = None,
                  output: str | None = None, batch_size: int = Config.eval_batch_size, device: str = "auto",
                  overwrite: bool = False) -> None:
    """predict.py's whole job: checks every input, predicts, writes the outputs and prints the summary
    (and, with `labels_file`, the evaluation); raises `DataError` before writing anything on bad input."""
    if batch_size < 1:
        raise OptionError(f"--batch-size {batch_size}: at least 1 is expected")
    for path, what in ((checkpoint_file, "checkpoint"), (rows_file, "row numbers"), (labels_file, "labels")):
        if path is not None and file_problem(path) is not None:
            raise DataError(f"{path}: {file_problem(path)} ({what} expected here)")
    if not (os.path.isfile(input_path) or os.path.isdir(input_path)):
        raise DataError(f"{input_path}: not found (an input array, sample file or folder expected here)")
    outputs = output_files(input_path, output, overwrite)
    device = resolve_device(device)
    branch, checkpoint = load_classifier(checkpoint_file, device)
    if "input_shape" not in checkpoint["classifier"]:
        raise DataError(f"{checkpoint_file}: a classifier of both modalities ({checkpoint['classifier']['kind']}); "
                        "predict.py classifies one modality with a best_<PREFIX>.pt")
    input_shape = tuple(checkpoint["input_shape"])
    files = raw_input_files(input_path, input_shape)
    if files is None:  # an array of rows: --rows and --labels index it
        array = load_input(input_path, input_shape, checkpoint_file)
        rows = None if rows_file is None else load_rows(rows_file, len(array))
        labels = None if labels_file is None else load_labels(labels_file, rows, len(array))
        sources = [str(i) for i in range(len(array))]
        inputs = sources if rows is None else [sources[i] for i in rows]
    else:  # raw files: --rows and --labels reach them through the prepared folder's rows.csv
        files, labels = match_raw_files(files, input_path, checkpoint, rows_file, labels_file)
        array, rows, inputs = read_raw_samples(files, checkpoint.get("preprocessing"), input_shape,
                                               checkpoint_file), None, files
    if files is not None or checkpoint.get("class_names"):
        outputs.listing = f"{outputs.prefix}_predictions.csv"
        if os.path.exists(outputs.listing) and not overwrite:
            raise DataError(f"{outputs.listing}: exists; pass --overwrite to replace it or --output to choose "
                            "another prefix")
    try:
        probabilities, predicted = predict_array(branch, array, batch_size, device, rows,
                                                 checkpoint_precision(checkpoint, device))
    except DataError as error:
        raise DataError(f"{input_path}: {error}") from None
    write_predictions(outputs, checkpoint, inputs if outputs.listing else None, probabilities, predicted)
    report(outputs, checkpoint, device, inputs if files is not None else None, probabilities, predicted, labels)


def match_raw_files(files: list[str], input_path: str, checkpoint: dict, rows_file: str | None,
                    labels_file: str | None) -> tuple[list[str], np.ndarray | None]:
    """The raw files to predict and their labels. Without --rows and --labels: every file, no labels. With
    them, each file is matched to its row of the prepared folder by identity (its SHA-256 in the rows.csv
    beside the --rows file, else beside the --labels file), never by its place in the sorted list: --rows
    selects the files of those rows, in that order; --labels gives each file its row's label. --rows without
    a rows.csv is refused; so are --labels from a prepared folder without one (labels from elsewhere are
    one per input file, in sorted order)."""
    if rows_file is None and labels_file is None:
        return files, None
    found = [find_record(os.path.dirname(os.path.abspath(path))) for path in (rows_file, labels_file) if path]
    record_path = next((path for path in found if path), None)
    if record_path is None:
        if rows_file is not None:
            raise DataError(f"{rows_file}: --rows with raw files needs the {ROWS_FILE} that prepare_data.py writes "
                            "beside the split files, to match each file to its row; there is none (a folder written "
                            "by hand or by an older prepare_data.py: prepare it again, or give the .npy array of rows)")
        if os.path.exists(os.path.join(os.path.dirname(os.path.abspath(labels_file)), NORMALIZATION_FILE)):
            raise DataError(f"{labels_file}: labels of a prepared folder without {ROWS_FILE}, so the raw files "
                            "cannot be matched to their rows; prepare it again, or give the .npy array of rows")
        return files, load_labels(labels_file, None, len(files))
    record = read_record(record_path)
    prefix = checkpoint["prefix"]
    if prefix not in record.names:
        raise DataError(f"{record_path}: no {prefix} files recorded (its modalities are {', '.join(record.names)}); "
                        "not the data of this checkpoint")
    _check_same_statistics(record_path, prefix, checkpoint)
    digests = {}
    for path in files:
        try:
            digests[path] = file_digest(path)
        except OSError as error:
            raise DataError(f"{path}: not readable ({error.strerror or error})") from None
    if rows_file is not None:
        rows = load_rows(rows_file, len(record))
        file_of = {}
        for path in files:
            file_of.setdefault(digests[path], path)
        selected = []
        for row in rows:
            digest = record.digests[prefix][row]
            if not digest:
                raise DataError(f"{rows_file}: row {row} ({record.ids[row]}) has no {prefix} file ({record_path})")
            if digest not in file_of:
                raise DataError(f"{rows_file}: row {row} ({record.files[prefix][row]}) is not among the files of "
                                f"{input_path} (matched by content, as recorded in {record_path})")
            selected.append(file_of[digest])
        files = selected
    else:
        row_of = record.rows_by_digest(prefix)
        unknown = [path for path in files if digests[path] not in row_of]
        if unknown:
            raise DataError(f"{unknown[0]}: not a {prefix} file of {record_path} (matched by content)"
                            + (f", nor {len(unknown) - 1} more" if len(unknown) > 1 else "")
                            + f", so {labels_file} holds no label for it; predict without --labels, or with --rows")
        rows = np.array([row_of[digests[path]] for path in files], dtype=np.int64)
    return files, None if labels_file is None else load_labels(labels_file, rows, len(record))


def _check_same_statistics(record_path: str, prefix: str, checkpoint: dict) -> None:
    """Refuses a rows.csv whose folder's normalization.json differs from the checkpoint's: another
    preparation than the one the checkpoint was trained on, whose rows would be other samples."""
    path = os.path.join(os.path.dirname(record_path), NORMALIZATION_FILE)
    try:
        with open(path) as handle:
            entry = json.load(handle)["modalities"][prefix]
    except (OSError, ValueError, KeyError, TypeError):
        entry = None
    recorded = checkpoint.get("preprocessing") or {}
    if not isinstance(entry, dict) or any(entry.get(key) != recorded.get(key)
                                          for key in ("mean", "std", "shape", "resize")):
        raise DataError(f"{record_path}: its folder's {NORMALIZATION_FILE} differs from the statistics the "
                        "checkpoint was trained with; the rows of another preparation would be other samples")


def write_predictions(outputs: Outputs, checkpoint: dict, inputs: list[str] | None, probabilities: np.ndarray,
                      predicted: np.ndarray) -> None:
    """Writes the probabilities, the classes (the checkpoint's label values) and the listing, if any."""
    values = np.asarray(checkpoint["classes"], dtype=np.int64)[predicted]
    writes = [(outputs.probabilities, lambda temporary: save_npy(temporary, probabilities)),  # the largest first
              (outputs.classes, lambda temporary: save_npy(temporary, values))]
    if outputs.listing:
        writes.append((outputs.listing, lambda temporary: write_listing(
            temporary, inputs, values, predicted, probabilities, checkpoint.get("class_names"))))
    written = []
    for path, write in writes:
        try:
            atomic_write(path, write)
        except (OSError, NoSpaceError) as error:  # a full disk, a quota: the file and the cause, no partial outputs
            for done in written:
                os.remove(done)
            cause = "no space left on device" if isinstance(error, NoSpaceError) else error.strerror or error
            raise DataError(f"{path}: cannot be written ({cause})"
                            + (f"; removed {', '.join(written)}, written before it" if written else "")) from None
        written.append(path)


def report(outputs: Outputs, checkpoint: dict, device, files: list[str] | None, probabilities: np.ndarray,
           predicted: np.ndarray, labels: np.ndarray | None) -> None:
    """The printed summary: what was predicted and written, the class of each raw file predicted
    (`files`; the first few), and with `labels` the metrics and confusion matrix."""
    classes, names = np.asarray(checkpoint["classes"], dtype=np.int64), checkpoint.get("class_names")
    logger.info(f"{checkpoint['prefix']} (epoch {checkpoint['epoch']}, encoder {checkpoint['encoder']}, classes "
        f"{classes.tolist()}): predicted {len(predicted)} rows on {device}; wrote {outputs.classes} and "
        f"{outputs.probabilities}")
    if outputs.listing:
        logger.info(f"wrote {outputs.listing}")
    if files is not None:
        for i, (source, k) in enumerate(zip(files[:LISTED_INPUTS], predicted)):
            logger.info(f"  {source}: {names[k] if names else classes[k]} (probability {probabilities[i, k]:.2f})")
        if len(files) > LISTED_INPUTS:
            logger.info(f"  ... {len(files) - LISTED_INPUTS} more in {outputs.listing}")
    if labels is not None:
        unknown = np.setdiff1d(labels, classes)
        if unknown.size:
            logger.warning(f"{int(np.isin(labels, unknown).sum())} label(s) with value(s) {unknown.tolist()} are not "
                           f"among the checkpoint's classes {classes.tolist()}; they count as errors")
        logger.info(report_metrics(labels, classes[predicted], classes, checkpoint["prefix"]))


def output_paths(prefix: str) -> tuple[str, str]:
    return f"{prefix}_classes.npy", f"{prefix}_probabilities.npy"


def _load_integer_vector(path: str, what: str) -> np.ndarray:
    values = load_npy(path, what)
    if values.ndim != 1 or not is_integer_dtype(values.dtype):
        raise DataError(f"{path}: {what} must be a 1-D integer array, got shape {values.shape} dtype {values.dtype}")
    return as_int64(values, path, what)


def load_input(path: str, input_shape: tuple[int, ...], checkpoint_path: str) -> np.ndarray:
    """The memory-mapped input array, checked against the checkpoint's per-sample shape."""
    array = load_npy(path, f"an (N, {', '.join(map(str, input_shape))}) array of samples")
    if not is_numeric_dtype(array.dtype):
        raise DataError(f"{path}: dtype {array.dtype} is not supported; integers or floats of at most 64 bits "
                        "are expected")
    if array.ndim == 0 or tuple(array.shape[1:]) != tuple(input_shape):
        raise DataError(f"{path}: samples of shape {tuple(array.shape[1:])} (array {tuple(array.shape)}), but "
                        f"{checkpoint_path} expects samples of shape {tuple(input_shape)}")
    if len(array) == 0:
        raise DataError(f"{path}: no rows to predict")
    return array


def load_rows(path: str, num_rows: int) -> np.ndarray:
    rows = _load_integer_vector(path, "row numbers")
    if rows.size == 0:
        raise DataError(f"{path}: no row numbers; at least one is expected")
    if rows.min() < 0 or rows.max() >= num_rows:
        bad = rows.min() if rows.min() < 0 else rows.max()
        raise DataError(f"{path}: row number {bad} out of range; the input's rows are 0..{num_rows - 1}")
    return rows


def load_labels(path: str, rows: np.ndarray | None, num_rows: int) -> np.ndarray:
    """Labels aligned with the predicted rows. The file holds one label per INPUT row (`num_rows`,
    e.g. a data folder's labels.npy), always: with `rows`, the labels of those rows are taken, in
    their order. (One rule, so that a file of as many labels as `rows` is never silently read as
    per-predicted-row labels: then it would be ambiguous whenever len(rows) == num_rows.)"""
    labels = _load_integer_vector(path, "labels")
    if len(labels) != num_rows:
        raise DataError(f"{path}: {len(labels)} labels, expected {num_rows} (one per row of the input, "
                        "also with --rows)")
    return labels if rows is None else labels[rows]


def confusion_table(labels: np.ndarray, predicted: np.ndarray, classes: np.ndarray) -> str:
    """Confusion matrix as text: rows true label values, columns predicted ones (the checkpoint's
    classes); a true value outside the classes gets its own row, marked '(unknown)'."""
    true_values = np.union1d(classes, np.unique(labels))
    from sklearn.metrics import confusion_matrix  # imported when used: about a second

    counts = confusion_matrix(labels, predicted, labels=true_values)[:, np.searchsorted(true_values, classes)]
    names = [f"{v} (unknown)" if v not in classes else str(v) for v in true_values]
    first = max(len("true \\ predicted"), *(len(n) for n in names))
    width = max(5, *(len(str(c)) + 1 for c in classes), len(str(counts.max())) + 1)
    lines = ["true \\ predicted".ljust(first) + "".join(f"{c:>{width}}" for c in classes)]
    for name, row in zip(names, counts):
        lines.append(name.ljust(first) + "".join(f"{n:>{width}}" for n in row))
    return "\n".join(lines)


def report_metrics(labels: np.ndarray, predicted: np.ndarray, classes: np.ndarray, name: str) -> str:
    """The printed evaluation: metrics line then confusion matrix. Labels outside `classes` are errors."""
    metrics = classification_metrics(labels, predicted)
    return (f"{name} on {len(labels)} rows: weighted F1 {metrics['weighted_f1']:.4f}  "
            f"macro F1 {metrics['macro_f1']:.4f}  accuracy {metrics['accuracy']:.4f}\n"
            f"confusion matrix (rows: true label, columns: predicted label)\n"
            + confusion_table(labels, predicted, classes))


def write_listing(path: str, inputs: list[str], values: np.ndarray, predicted: np.ndarray,
                  probabilities: np.ndarray, names: list[str] | None) -> None:
    """CSV: input (file or row number), class (label value), name (class name, when known), probability."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["input", "class", "name", "probability"])
        for i, (source, k) in enumerate(zip(inputs, predicted)):
            writer.writerow([source, int(values[i]), names[k] if names else "", f"{probabilities[i, k]:.6f}"])
