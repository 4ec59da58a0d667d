"""The run behind discomkd-train (main_DisCoM-KD.py): one data folder in, one trained method out.

`run(config, directory, first_prefix, second_prefix)` checks the data folder and the output folder,
then trains with the one training loop (`loop.fit`); `resume(run_folder)` (from `loop`) continues a
run from its saved state. The comparison, the Ray executor and tuning train through the same loop on
folders they check themselves. `functions.py` at the top of a checkout hands these names on under the
original layout's name.
"""
from __future__ import annotations

import contextlib
import logging
import os

from discomkd.data.folder import load_data_folder
from discomkd.runs.outputs import PREVIOUS_RUN_FOLDER, set_aside_run_outputs
from discomkd.runs.ownership import owning, prepare_output
from discomkd.training.config import Config, check_config
from discomkd.training.loop import fit, resume
from discomkd.training.setup import check_augmentations
from discomkd.utils.errors import BadInput

__all__ = ["run", "resume", "default_output"]

logger = logging.getLogger("discomkd.run")  # under the package's logger, which the commands show


def run(config: Config, directory: str, first_prefix: str, second_prefix: str, should_stop=None) -> dict:
    """Checks the data, trains `config.method` (DisCoM-KD by default), keeps each classifier's
    best-on-validation checkpoint and writes results.json, best_<COLUMN>.pt and
    test_predictions_<COLUMN>.npy to the output folder.

    Raises `DataError` (before anything is written) for bad input, `TrainingError` when training
    cannot go on, `Interrupted` after a signal (or `should_stop()`) once state.pt is saved.
    Returns the results dict.
    """
    check_config(config)
    data = load_data_folder(directory, first_prefix, second_prefix, (config.encoder_first, config.encoder_second))
    check_augmentations(config, data)  # before the output folder is touched
    output = prepare_output(config.output or default_output(directory, first_prefix, second_prefix),
                            config.overwrite)
    created = not os.path.exists(output)
    os.makedirs(output, exist_ok=True)
    try:
        with owning(output):  # one writer per folder: a second run there is refused, naming this one
            if config.overwrite and set_aside_run_outputs(output):  # every check passed: nothing mixes, nothing lost
                logger.info(f"--overwrite: the earlier run's files are kept in {output}/{PREVIOUS_RUN_FOLDER} until "
                            "this run finishes")
            return fit(config, data, output, should_stop=should_stop)
    except BadInput:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(output)  # refused before training wrote anything: no empty folder left behind
        raise


def default_output(directory: str, first_prefix: str, second_prefix: str) -> str:
    return os.path.join(directory, f"DisCoM-KD_{first_prefix}_{second_prefix}")
