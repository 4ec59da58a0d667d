"""See what a finished DisCoM-KD run learned: disentanglement probes and figures.

    python inspect_run.py RUN_FOLDER [--no-figures] [--no-probes] [--data DIR]

Reloads the run's data folder (recorded in RUN_FOLDER/results.json) and each modality's
best_<PREFIX>.pt, and computes the test rows' invariant, informative and irrelevant parts.

Probes (probes.json, and a table on stdout): cross-validated logistic regressions that predict
the modality from the pooled features of both modalities, and the class from each modality's
features, per part. If the disentanglement worked, the invariant part carries no modality
(accuracy near 0.5) while the informative and irrelevant parts carry it (near 1.0).

Figures (RUN_FOLDER/figures/, needs matplotlib, skipped with a message without it):
training_curves.png, confusion_<PREFIX>.png per modality, tsne.png.

The work is the library's: `discomkd.inspection`.
"""
from __future__ import annotations

import argparse
import sys

from discomkd.config import DEVICE_HELP
from discomkd.console import configure_output
from discomkd.errors import BadInput, command_status
from discomkd.inspection import inspect_run_folder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Disentanglement probes and figures for a finished DisCoM-KD run folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("run_folder", metavar="RUN_FOLDER", help="output folder of main_DisCoM-KD.py")
    parser.add_argument("--no-figures", action="store_true", help="skip the figures (matplotlib not needed)")
    parser.add_argument("--no-probes", action="store_true", help="skip the probes")
    parser.add_argument("--data", metavar="DIR", help="data folder, if it moved since training "
                                                      "(default: the one recorded in results.json)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    return parser


def main(argv=None) -> int:
    configure_output()
    args = build_parser().parse_args(argv)
    return command_status(lambda: inspect_run_folder(args.run_folder, not args.no_figures, not args.no_probes,
                                                     args.data, args.device), (BadInput, OSError))


if __name__ == "__main__":
    sys.exit(main())
