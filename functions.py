"""The run behind `main_DisCoM-KD.py`: one data folder in, one trained method out.

`run(config, directory, first_prefix, second_prefix)` checks the data folder and the output folder,
then trains with the package's one training loop (`discomkd.training.fit`); `resume(run_folder)`
continues a run from its saved state. The comparison, the Ray executor and tuning train runs through
the same loop inside the package, which never imports this file: imports run commands -> functions.py
-> discomkd -> model_pytorch.py.
"""
from __future__ import annotations

import os

from discomkd.config import Config, check_config
from discomkd.data import load_data_folder
from discomkd.engine import resolve_augmentation
from discomkd.run_files import clear_run_outputs, prepare_output
from discomkd.training import fit, resume

__all__ = ["run", "resume", "default_output"]


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
    for m, modality in enumerate(data.modalities):  # before the output folder is touched
        resolve_augmentation(config, modality, m)
    output = prepare_output(config.output or default_output(directory, first_prefix, second_prefix),
                            config.overwrite)
    if config.overwrite:  # every check passed: an earlier run's files must not mix with this run's
        clear_run_outputs(output)
    return fit(config, data, output, should_stop=should_stop)


def default_output(directory: str, first_prefix: str, second_prefix: str) -> str:
    return os.path.join(directory, f"DisCoM-KD_{first_prefix}_{second_prefix}")
