"""Classify one modality alone with a trained DisCoM-KD checkpoint.

    python predict.py CHECKPOINT INPUT.npy [--rows ROWS.npy] [--labels LABELS.npy] [--output PREFIX]
    python predict.py CHECKPOINT FILE_OR_FOLDER ...   (raw PNG/JPG/TIFF/.npy samples, see below)

CHECKPOINT is a run's best_<PREFIX>.pt; INPUT.npy holds that modality's samples only, (N, *shape),
no labels needed. Writes <PREFIX>_classes.npy (N,) in the user's label values and
<PREFIX>_probabilities.npy (N, K) float32. INPUT is read memory-mapped, one batch at a time, so it
may be larger than memory. Everything inference needs (input shape, classes, encoder, precision)
comes from the checkpoint, so no training option is repeated here.

Raw sample files (PNG/JPG, TIFF, per-sample .npy) or a folder of them (searched recursively, in sorted
order) are read as prepare_data.py reads them, resized as its data was and normalised with the
statistics the checkpoint recorded; this needs a run on a folder made by prepare_data.py. When the
checkpoint knows the class names, or the input is raw files, <PREFIX>_predictions.csv lists each
input with its class value, class name and probability.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

import numpy as np
import torch
from sklearn.metrics import confusion_matrix

from discomkd.batches import input_batches
from discomkd.config import DEVICE_HELP, Config, checkpoint_precision, resolve_device
from discomkd.data import as_int64, file_problem, is_integer_dtype, is_numeric_dtype, load_npy
from discomkd.engine import autocast_context, classification_metrics
from discomkd.errors import DataError, command_status
from discomkd.image_folders import SAMPLE_EXTENSIONS, raw_input_files, read_raw_samples
from discomkd.run_files import atomic_write, folder_problem, line_buffered_stdout, load_classifier, save_npy

LISTED_INPUTS = 20  # raw files whose predicted class is printed; all of them are in the CSV


@torch.inference_mode()
def predict_array(branch: torch.nn.Module, array: np.ndarray, batch_size: int = Config.eval_batch_size,
                  device: torch.device | str = "cpu", rows: np.ndarray | None = None,
                  precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities of every sample of `array` (or of its rows `rows`), batch by batch.

    Args:
        branch: a single-modality classifier (`outputs.load_classifier`); it is moved to `device`
            and evaluated in eval mode, its previous mode restored afterwards.
        array: (N, *branch.input_shape), any numeric dtype; may be a memory map (read per batch).
        rows: optional (n,) row numbers of `array` to predict, in the order given.
        precision: 'fp32' or 'bf16' (autocast), as the run evaluated (`checkpoint_precision`).

    Returns:
        probabilities (n, K) float32 and predicted class indices (n,) int64, which index the
        checkpoint's "classes" (the user's label values).
    """
    device = torch.device(device)
    was_training = branch.training
    branch.to(device).eval()
    count = len(array) if rows is None else len(rows)
    probabilities = None
    for start, x in input_batches(array, rows, batch_size, device):
        with autocast_context(device, precision):
            logits = branch(x).logits  # (B, K)
        if probabilities is None:
            probabilities = np.empty((count, logits.shape[1]), dtype=np.float32)
        # the batch's one host transfer
        probabilities[start:start + len(x)] = torch.softmax(logits.float(), dim=1).cpu().numpy()
    branch.train(was_training)
    return probabilities, probabilities.argmax(axis=1).astype(np.int64)


# ----------------------------------------------------------------------------- command line
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Classify one modality's samples with a DisCoM-KD checkpoint (best_<PREFIX>.pt).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a run's best_<PREFIX>.pt")
    parser.add_argument("input", metavar="INPUT.npy", help="(N, *shape) samples of that modality only")
    parser.add_argument("--rows", metavar="ROWS.npy", help="predict only these row numbers of INPUT "
                                                           "(e.g. a data folder's test_idx.npy), in this order")
    parser.add_argument("--labels", metavar="LABELS.npy",
                        help="true label values to score the predictions: one per INPUT row (e.g. the data "
                             "folder's labels.npy), also with --rows, which selects the labels of its rows")
    parser.add_argument("--output", metavar="PREFIX", help="writes PREFIX_classes.npy and PREFIX_probabilities.npy "
                                                           "(default: INPUT without .npy, plus _pred)")
    parser.add_argument("--batch-size", type=int, default=Config.eval_batch_size, help="rows per forward pass")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return parser


def write_listing(path: str, inputs: list[str], values: np.ndarray, predicted: np.ndarray,
                  probabilities: np.ndarray, names: list[str] | None) -> None:
    """CSV: input (file or row number), class (label value), name (class name, when known), probability."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["input", "class", "name", "probability"])
        for i, (source, k) in enumerate(zip(inputs, predicted)):
            writer.writerow([source, int(values[i]), names[k] if names else "", f"{probabilities[i, k]:.6f}"])


def run_prediction(args: argparse.Namespace) -> None:
    """Checks every input, predicts, writes both outputs and prints the summary; raises `DataError`."""
    if args.batch_size < 1:
        raise DataError(f"--batch-size {args.batch_size}: at least 1 is expected")
    for path, what in ((args.checkpoint, "checkpoint"), (args.rows, "row numbers"), (args.labels, "labels")):
        if path is not None and file_problem(path) is not None:
            raise DataError(f"{path}: {file_problem(path)} ({what} expected here)")
    if not (os.path.isfile(args.input) or os.path.isdir(args.input)):
        raise DataError(f"{args.input}: not found (an input array, sample file or folder expected here)")
    stem, extension = os.path.splitext(args.input.rstrip(os.sep))
    prefix = args.output or (stem if extension.lower() in SAMPLE_EXTENSIONS else args.input.rstrip(os.sep)) + "_pred"
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
        if os.path.exists(path) and not args.overwrite:
            raise DataError(f"{path}: exists; pass --overwrite to replace it or --output to choose another prefix")

    device = resolve_device(args.device)
    branch, checkpoint = load_classifier(args.checkpoint, device)
    if "input_shape" not in checkpoint["classifier"]:
        raise DataError(f"{args.checkpoint}: a classifier of both modalities ({checkpoint['classifier']['kind']}); "
                        "predict.py classifies one modality with a best_<PREFIX>.pt")
    classes = np.asarray(checkpoint["classes"], dtype=np.int64)
    files = raw_input_files(args.input, tuple(checkpoint["input_shape"]))
    if files is None:
        array = load_input(args.input, tuple(checkpoint["input_shape"]), args.checkpoint)
    else:
        array = read_raw_samples(files, checkpoint.get("preprocessing"), tuple(checkpoint["input_shape"]),
                                 args.checkpoint)
    names = checkpoint.get("class_names")
    listing_path = f"{prefix}_predictions.csv" if files is not None or names else None
    if listing_path and os.path.exists(listing_path) and not args.overwrite:
        raise DataError(f"{listing_path}: exists; pass --overwrite to replace it or --output to choose another prefix")
    rows = None if args.rows is None else load_rows(args.rows, len(array))
    count = len(array) if rows is None else len(rows)
    labels = None if args.labels is None else load_labels(args.labels, rows, len(array))

    try:
        probabilities, predicted = predict_array(branch, array, args.batch_size, device, rows,
                                                 checkpoint_precision(checkpoint, device))
    except DataError as error:
        raise DataError(f"{args.input}: {error}") from None
    values = classes[predicted]
    # the larger file first: if the disk fills up, neither output is left behind
    atomic_write(probabilities_path, lambda temporary: save_npy(temporary, probabilities))
    atomic_write(classes_path, lambda temporary: save_npy(temporary, values))
    if listing_path:
        sources = files or [str(i) for i in range(len(array))]
        inputs = sources if rows is None else [sources[i] for i in rows]
        atomic_write(listing_path, lambda temporary: write_listing(temporary, inputs, values, predicted,
                                                                    probabilities, names))
    print(f"{checkpoint['prefix']} (epoch {checkpoint['epoch']}, encoder {checkpoint['encoder']}, classes "
          f"{classes.tolist()}): predicted {count} rows on {device}; wrote {classes_path} and {probabilities_path}")
    if listing_path:
        print(f"wrote {listing_path}")
    if files is not None:  # raw files: each one's class, the first few
        for i, (source, k) in enumerate(zip(inputs[:LISTED_INPUTS], predicted)):
            print(f"  {source}: {names[k] if names else classes[k]} (probability {probabilities[i, k]:.2f})")
        if count > LISTED_INPUTS:
            print(f"  ... {count - LISTED_INPUTS} more in {listing_path}")
    if labels is not None:
        unknown = np.setdiff1d(labels, classes)
        if unknown.size:
            print(f"warning: {int(np.isin(labels, unknown).sum())} label(s) with value(s) {unknown.tolist()} are not "
                  f"among the checkpoint's classes {classes.tolist()}; they count as errors", file=sys.stderr)
        print(report_metrics(labels, values, classes, checkpoint["prefix"]))


def main(argv=None) -> int:
    line_buffered_stdout()
    args = build_parser().parse_args(argv)
    return command_status(lambda: run_prediction(args), (DataError, OSError))


if __name__ == "__main__":
    sys.exit(main())
