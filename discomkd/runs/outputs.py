"""The files a run writes, all atomically: results, checkpoints, predictions, state.

`results.json` and `best_<COLUMN>.pt` are the run's results; `state.pt` is the resumable state of
an unfinished run. Everything loads with `torch.load(..., weights_only=True)`: no pickled code.
What is saved is handed in as data; this module knows nothing of the training loop.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil

import torch

from discomkd.models.methods import CLASSIFIER_KINDS, build_classifier
from discomkd.utils.errors import DataError
from discomkd.utils.files import TEMPORARY_PREFIX, write_payload

CHECKPOINT_FORMAT = "discomkd-modality/1"
RESULTS_FILE = "results.json"


# Files a run folder receives (main_DisCoM-KD.py, then inspect_run.py); --overwrite removes these only.
PROBES_FILE = "probes.json"  # inspect_run.py's disentanglement probes
FIGURES_FOLDER = "figures"  # inspect_run.py's figures
RUN_OUTPUT_PATTERNS = ("results.json", "state.pt", "best_*.pt", "test_predictions_*.npy", PROBES_FILE,
                       TEMPORARY_PREFIX + "*")
FIGURE_PATTERNS = ("training_curves.png", "confusion_*.png", "tsne.png")


def clear_run_outputs(output: str) -> list[str]:
    """Removes an earlier run's files from `output` (see RUN_OUTPUT_PATTERNS, and figures/ with
    inspect_run's figures), so that none is mistaken for the new run's; any other file is kept.
    Returns the removed paths."""
    removed = _run_output_paths(output)
    for path in removed:
        os.remove(path)
    with contextlib.suppress(OSError):  # kept when the user put other files there
        os.rmdir(os.path.join(output, FIGURES_FOLDER))
    return removed


def run_status(output: str) -> str | None:
    """The status its results.json gives the run in `output` (running, finished, ...), or None without one."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        with open(os.path.join(output, RESULTS_FILE)) as handle:
            return json.load(handle).get("status")
    return None


PREVIOUS_RUN_FOLDER = ".previous-run"  # --overwrite keeps the last finished run's files here until a new one finishes


def set_aside_run_outputs(output: str) -> str | None:
    """`--overwrite` of a run folder: moves the earlier run's files (those `clear_run_outputs` would
    remove) into `output`/.previous-run, where they stay until the new run finishes (`fit` removes the
    folder then), so an interrupted or failed new run destroys nothing. When .previous-run already
    holds a finished run and the earlier files are those of an unfinished one, the unfinished files are
    removed instead. Returns the .previous-run path when it holds anything, else None."""
    kept = os.path.join(output, PREVIOUS_RUN_FOLDER)
    earlier = _run_output_paths(output)
    if os.path.isdir(kept) and run_status(output) != "finished":
        clear_run_outputs(output)  # an unfinished run's files; the finished one in .previous-run stays
    elif earlier:
        if os.path.isdir(kept):
            shutil.rmtree(kept)  # an older finished run, replaced by the finished one set aside now
        os.makedirs(os.path.join(kept, FIGURES_FOLDER), exist_ok=True)
        for path in earlier:
            os.replace(path, os.path.join(kept, os.path.relpath(path, output)))
        for folder in (output, kept):
            with contextlib.suppress(OSError):  # kept when it holds other files
                os.rmdir(os.path.join(folder, FIGURES_FOLDER))
    return kept if os.path.isdir(kept) else None


def _run_output_paths(output: str) -> list[str]:
    paths = []
    for folder, patterns in ((output, RUN_OUTPUT_PATTERNS), (os.path.join(output, FIGURES_FOLDER), FIGURE_PATTERNS)):
        for pattern in patterns:
            paths += [path for path in glob.glob(os.path.join(glob.escape(folder), pattern), include_hidden=True)
                      if os.path.isfile(path) or os.path.islink(path)]
    return paths


def checkpoint_path(output: str, prefix: str) -> str:
    return os.path.join(output, f"best_{prefix}.pt")


def checkpoint_payload(module: torch.nn.Module, description: dict, metadata: dict) -> dict:
    """What a checkpoint of one classifier holds: its weights (as they are, on their device),
    `description` (what rebuilds it, see methods.classifier_description) and `metadata` (classes,
    config, epoch, metrics, ...)."""
    payload = {"format": CHECKPOINT_FORMAT, "classifier": description, **metadata,
               "state_dict": {k: v.detach() for k, v in module.state_dict().items()}}
    if "input_shape" in description:  # single-modality classifiers: what prediction checks inputs against
        payload.update(input_shape=description["input_shape"], encoder=description["encoder"])
    return payload


def read_checkpoint(path: str) -> dict:
    """A checkpoint's payload (weights only, no pickled code), its fields checked."""
    checkpoint = _load_weights_only(path, CHECKPOINT_FORMAT, "checkpoint")
    try:
        classes, described = len(checkpoint["classes"]), checkpoint["classifier"].get("num_classes")
        checkpoint["state_dict"]  # noqa: B018 (present, or the KeyError below)
    except KeyError as error:
        raise DataError(f"{path}: checkpoint field {error} missing") from None
    except (TypeError, AttributeError):
        raise DataError(f"{path}: not a DisCoM-KD checkpoint (malformed fields)") from None
    if described != classes:
        raise DataError(f"{path}: the checkpoint lists {classes} classes but its classifier has {described}")
    return checkpoint


def load_classifier(path: str, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Loads a `best_<COLUMN>.pt` checkpoint of any method, rebuilt, in eval mode.

    The module is built under a forked random state, so loading never shifts a run's random draws.
    Returns:
        (classifier, checkpoint): the module and the checkpoint's metadata.
    """
    checkpoint = read_checkpoint(path)
    if checkpoint["classifier"].get("kind") not in CLASSIFIER_KINDS:
        raise DataError(f"{path}: unknown classifier kind {checkpoint['classifier'].get('kind')!r}; expected one of "
                        f"{', '.join(CLASSIFIER_KINDS)}")
    try:
        with torch.random.fork_rng(devices=[]):
            module = build_classifier(checkpoint["classifier"])
        module.load_state_dict(checkpoint["state_dict"])
    except KeyError as error:
        raise DataError(f"{path}: checkpoint field {error} missing") from None
    except (AssertionError, RuntimeError, TypeError, ValueError) as error:
        # load_state_dict lists every mismatch on its own line; the first one tells what differs
        detail = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error).strip())
        raise DataError(f"{path}: the weights do not fit the checkpoint's own description "
                        f"({checkpoint['classifier']}): {detail[:200]}") from None
    return module.to(device).eval(), checkpoint


# ----------------------------------------------------------------------------- resumable state
STATE_FILE = "state.pt"
STATE_FORMAT = "discomkd-state/1"


def save_state(output: str, payload: dict) -> None:
    """Writes state.pt from `payload` (tensors and plain containers: what a run needs to continue)."""
    write_payload(os.path.join(output, STATE_FILE), {"format": STATE_FORMAT, **payload})


def load_state(run_folder: str) -> dict:
    path = os.path.join(run_folder, STATE_FILE)
    if not os.path.isdir(run_folder):
        raise DataError(f"{run_folder}: " + ("not a folder" if os.path.exists(run_folder) else "run folder not found")
                        + f"; --resume expects the output folder of an interrupted run (holding {STATE_FILE})")
    if not os.path.isfile(path):
        status = run_status(run_folder)
        if status == "finished":
            raise DataError(f"{run_folder}: holds a finished run (results.json status finished, no {STATE_FILE}); "
                            "nothing to resume")
        raise DataError(f"{path}: not found; {run_folder} holds no resumable state "
                        + (f"(its run's status is {status})" if status else "(no run was interrupted there)"))
    return _load_weights_only(path, STATE_FORMAT, "state")


def _load_weights_only(path: str, expected_format: str, what: str) -> dict:
    """torch.load with weights_only=True (tensors and plain containers, never pickled code), and a
    check of the file's `format` field; any failure is one DataError line naming the file."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a safe payload
        raise DataError(f"{path}: not a loadable DisCoM-KD {what} ({type(error).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        raise DataError(f"{path}: not a DisCoM-KD {what} (format {expected_format} expected)")
    return payload

