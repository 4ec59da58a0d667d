"""The errors a command turns into one line on stderr, and the exit statuses every command shares."""
from __future__ import annotations

# Exit statuses of every command: bad input (nothing written), training failed (the last good
# outputs kept), interrupted (state saved for --resume).
EXIT_BAD_INPUT, EXIT_TRAINING_FAILED, EXIT_INTERRUPTED = 2, 3, 130


class BadInput(ValueError):
    """Input this code refuses, explained in one line; nothing was written."""


class DataError(BadInput):
    """A data folder, a file or a run folder that cannot be used."""


class OptionError(BadInput):
    """An option, or a combination of options, that cannot be used (a setting, a device, a Ray resource)."""


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or model, GPU memory exhausted); explained in one line."""


class NoSpaceError(TrainingError):
    """An output file could not be written for lack of disk space; the earlier version of it is intact."""


class Interrupted(RuntimeError):
    """The run was stopped by a signal after saving a resumable state."""

