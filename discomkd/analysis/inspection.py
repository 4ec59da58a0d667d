"""What a run learned (the library behind discomkd-inspect): its results and data folder read again
(`load_run`), the features its best checkpoints give on the test rows, the disentanglement probes of
every part (probes.json, naming the checkpoints' epochs, and a table) and the figures (`figures.py`).
"""
from __future__ import annotations

import json
import logging
import os

from discomkd.analysis.figures import MISSING_MATPLOTLIB, draw_figures, matplotlib_figure
from discomkd.data.folder import DataFolder, reload_data_folder
from discomkd.evaluation.probes import disentanglement_probes, probe_table
from discomkd.models.methods import METHODS
from discomkd.runs.outputs import PROBES_FILE, RESULTS_FILE, checkpoint_path, read_checkpoint
from discomkd.runs.ownership import holder
from discomkd.training.config import resolve_device
from discomkd.training.inference import feature_parts
from discomkd.utils.errors import DataError, OptionError
from discomkd.utils.files import folder_problem, write_json

logger = logging.getLogger(__name__)


def load_run(run_folder: str, data_directory: str | None = None) -> tuple[dict, DataFolder]:
    """The run's results.json and its data folder, read again with the run's split, prefixes and encoders.

    `data_directory` replaces the recorded folder (for a data folder moved since training).
    Raises `DataError` when the run or its data cannot be read, or the data changed since training.
    """
    if data_directory == "":
        raise OptionError("--data '': an empty name; name the data folder")
    results_path = os.path.join(run_folder, RESULTS_FILE)
    if not os.path.isdir(run_folder):
        raise DataError(f"{run_folder}: run folder not found")
    if not os.path.isfile(results_path):
        raise DataError(f"{results_path}: file not found (a run folder written by main_DisCoM-KD.py expected)")
    try:
        with open(results_path) as handle:
            results = json.load(handle)
        described, fingerprint = results["data"], results["data_fingerprint"]
        directory = data_directory or described["directory"]
        # the run's own columns: a classifier's best epoch in "final" (a mono run has one), else one per modality
        columns = list(results.get("final") or {}) or [m["prefix"] for m in described["modalities"]]
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{results_path}: not a DisCoM-KD results file ({type(error).__name__}: {error})") from None
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: data folder of this run not found (moved? pass --data DIR)")
    data = reload_data_folder(described, fingerprint, data_directory)
    for column in columns:
        if not os.path.isfile(checkpoint_path(run_folder, column)):
            raise DataError(f"{checkpoint_path(run_folder, column)}: file not found (the run saved no checkpoint)")
    return results, data


def check_inspectable(run_folder: str, results: dict) -> None:
    """Raises `DataError` unless the run's classifiers have the feature parts inspect_run.py looks at (a
    DisCoM-KD method's; a mono, teacher, kd or dkd run has none)."""
    method = (results.get("config") or {}).get("method", "discomkd")  # runs before the comparison: discomkd
    if method not in METHODS or not METHODS[method].invariant_parts:
        columns = ", ".join(results.get("final") or {}) or "none"
        raise DataError(f"{run_folder}: a {method} run (classifiers: {columns}), whose classifiers have no "
                        f"invariant, informative and irrelevant parts; inspect_run.py inspects those of DisCoM-KD "
                        f"runs (its test scores are in {RESULTS_FILE})")


def inspect_run_folder(run_folder: str, figures: bool = True, probes: bool = True, data_directory: str | None = None,
                       device: str = "auto", output: str | None = None) -> dict:
    """inspect_run.py's whole job; raises `DataError`. Returns {"probes": ..., "figures": [paths], "written":
    whether files were written}. probes.json and figures/ go to `output` (default: the run folder), and never
    into a run folder that another process holds: a run still training is inspected (its best checkpoints so
    far), printed, and left alone. probes.json names the epochs of the checkpoints it describes."""
    if not figures and not probes:
        raise OptionError("--no-figures --no-probes: nothing to do; drop one of them")
    if output == "":
        raise OptionError("--output '': an empty name; name a folder")
    results, data = load_run(run_folder, data_directory)
    check_inspectable(run_folder, results)
    if results.get("status") != "finished":
        # its checkpoints are the best epochs so far, not the final ones
        logger.warning(f"{os.path.join(run_folder, RESULTS_FILE)}: the run's status is {results.get('status')}, "
                       "not finished; inspecting its best checkpoints so far")
    target = run_folder if output is None else output
    held_by = holder(run_folder) if output is None else None
    if held_by is not None:
        logger.warning(f"{run_folder}: in use by {held_by}: the probes are printed and nothing is written into "
                       "it (inspect it again once the run has ended, or give --output DIR)")
    elif folder_problem(target) is not None:
        raise DataError(f"{target}: {folder_problem(target)}")
    write = held_by is None
    new_figure = matplotlib_figure() if figures and write else None
    if figures and write and new_figure is None:
        logger.info(MISSING_MATPLOTLIB)
    outcome = {"probes": None, "figures": [], "written": write}
    if not probes and new_figure is None:
        return outcome
    features = feature_parts(run_folder, data, "test", resolve_device(device))
    if probes:
        epochs = {column: read_checkpoint(checkpoint_path(run_folder, column))["epoch"] for column in features}
        outcome["probes"] = {**disentanglement_probes(features), "checkpoints": {"run_folder": os.path.abspath(
            run_folder), "epochs": epochs, "run_status": results.get("status")}}
        logger.info(probe_table(outcome["probes"]))
        described = ", ".join(f"{column} epoch {epoch}" for column, epoch in epochs.items())
        if write:
            os.makedirs(target, exist_ok=True)
            write_json(os.path.join(target, PROBES_FILE), outcome["probes"])
            logger.info(f"(the checkpoints of {described}; written to {os.path.join(target, PROBES_FILE)})")
        else:
            logger.info(f"(the checkpoints of {described}; not written)")
    if new_figure is not None:
        outcome["figures"] = draw_figures(new_figure, target, results, data, features)
        logger.info("figures: " + ", ".join(outcome["figures"]))
    return outcome
