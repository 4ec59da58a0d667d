"""discomkd-predict (predict.py): one modality alone classified with a trained DisCoM-KD checkpoint.

    discomkd-predict CHECKPOINT INPUT.npy [--rows ROWS.npy] [--labels LABELS.npy] [--output PREFIX]
    discomkd-predict CHECKPOINT FILE_OR_FOLDER ...   (raw PNG/JPG/TIFF/.npy samples, see below)

CHECKPOINT is a run's best_<PREFIX>.pt; INPUT.npy holds that modality's samples only, (N, *shape),
no labels needed. Writes <PREFIX>_classes.npy (N,) in the user's label values and
<PREFIX>_probabilities.npy (N, K) float32. INPUT is read memory-mapped, one batch at a time, so it
may be larger than memory. Everything inference needs (input shape, classes, encoder, precision)
comes from the checkpoint, so no training option is repeated here.

Raw sample files (PNG/JPG, TIFF, per-sample .npy) or a folder of them (searched recursively, in sorted
order, hidden files and folders skipped) are read as prepare_data.py reads them, resized as its data
was and normalised with the statistics the checkpoint recorded; this needs a run on a folder made by
prepare_data.py. With raw files, --rows and --labels (a prepared folder's test_idx.npy, labels.npy)
reach the files through the rows.csv beside them, which matches each file to its row by content,
never by its place in the sorted list. When the checkpoint knows the class names, or the input is raw
files, <PREFIX>_predictions.csv lists each input with its class value, class name and probability.

The work is the library's: `discomkd.prediction`.
"""
from __future__ import annotations

import argparse

from discomkd.analysis.prediction import predict_files
from discomkd.commands.entry import CommandLine, run_command
from discomkd.training.config import DEVICE_HELP, Config
from discomkd.utils.errors import BadInput


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Classify one modality's samples with a DisCoM-KD checkpoint (best_<PREFIX>.pt).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a run's best_<PREFIX>.pt")
    parser.add_argument("input", metavar="INPUT.npy", help="(N, *shape) samples of that modality only")
    parser.add_argument("--rows", metavar="ROWS.npy", help="predict only these row numbers of INPUT (e.g. a data "
                                                           "folder's test_idx.npy), in this order; with raw files, "
                                                           "rows of the prepared folder, through its rows.csv")
    parser.add_argument("--labels", metavar="LABELS.npy",
                        help="true label values to score the predictions: one per INPUT row (e.g. the data "
                             "folder's labels.npy), also with --rows, which selects the labels of its rows")
    parser.add_argument("--output", metavar="PREFIX", help="writes PREFIX_classes.npy and PREFIX_probabilities.npy "
                                                           "(default: INPUT without .npy, plus _pred)")
    parser.add_argument("--batch-size", type=int, default=Config.eval_batch_size, help="rows per forward pass")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, predict, (BadInput, OSError))


def predict(line: CommandLine) -> None:
    options = line.options
    predict_files(options["checkpoint"], options["input"], options["rows"], options["labels"], options["output"],
                  options["batch_size"], options["device"], options["overwrite"])



if __name__ == "__main__":
    raise SystemExit(main())
