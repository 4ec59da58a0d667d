"""The run behind `main_DisCoM-KD.py`, under the name the original layout gives it: `run(config, directory,
first_prefix, second_prefix)` trains one method on one data folder, `resume(run_folder)` continues an interrupted run.

The code lives in `discomkd/training/run.py` (read it there); this file hands its names on for scripts written
against the original layout. Nothing in the package imports it, and it is not installed.
"""
from discomkd.training.run import default_output, resume, run

__all__ = ["run", "resume", "default_output"]
