"""discomkd-inspect (inspect_run.py): what a finished DisCoM-KD run learned, in disentanglement probes and figures.

    discomkd-inspect RUN_FOLDER [--no-figures] [--no-probes] [--data DIR] [--output DIR]

Reloads the run's data folder (recorded in RUN_FOLDER/results.json) and each modality's
best_<PREFIX>.pt, and computes the test rows' invariant, informative and irrelevant parts.

Probes (probes.json, naming the epochs of the checkpoints it describes, and a table on stdout):
cross-validated logistic regressions that predict the modality from the pooled features of both
modalities, and the class from each modality's features, per part. If the disentanglement worked, the
invariant part carries no modality (accuracy near 0.5) while the informative and irrelevant parts carry it
(near 1.0).

Figures (RUN_FOLDER/figures/, needs matplotlib, skipped with a message without it):
training_curves.png, confusion_<PREFIX>.png per modality, tsne.png.

Both go to --output DIR instead when given. A run still training (its folder held by its process) is
inspected from its best checkpoints so far and printed, and nothing is written into its folder.

The work is the library's: `discomkd.analysis.inspection`.
"""
from __future__ import annotations

import argparse

from discomkd.analysis.inspection import inspect_run_folder
from discomkd.commands.entry import CommandLine, run_command
from discomkd.training.config import DEVICE_HELP
from discomkd.utils.errors import BadInput


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Disentanglement probes and figures for a finished DisCoM-KD run folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("run_folder", metavar="RUN_FOLDER", help="output folder of main_DisCoM-KD.py")
    parser.add_argument("--no-figures", action="store_true", help="skip the figures (matplotlib not needed)")
    parser.add_argument("--no-probes", action="store_true", help="skip the probes")
    parser.add_argument("--data", metavar="DIR", help="data folder, if it moved since training "
                                                      "(default: the one recorded in results.json)")
    parser.add_argument("--output", metavar="DIR", default=None,
                        help="folder for probes.json and figures/ (default: RUN_FOLDER; a run still training is "
                             "inspected but never written into)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, inspect_run, (BadInput, OSError))


def inspect_run(line: CommandLine) -> None:
    options = line.options
    inspect_run_folder(options["run_folder"], not options["no_figures"], not options["no_probes"], options["data"],
                       options["device"], options["output"])



if __name__ == "__main__":
    raise SystemExit(main())
