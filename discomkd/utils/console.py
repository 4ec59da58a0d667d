"""What the commands print. Library modules log through the standard `logging` module, under the
"discomkd" logger; a command calls `configure_output()` once, which sends information to stdout as
plain lines and warnings to stderr as one "warning: ..." line each, stdout line-buffered. Progress bars
are tqdm's, shown only when tqdm is installed and stderr is a terminal.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import shutil
import sys

LOGGER = "discomkd"


class ConsoleHandler(logging.Handler):
    """Information to stdout, warnings and errors to stderr with a "warning: " prefix. The streams are
    looked up at each message, so a redirected sys.stdout (a test's capture) receives it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if record.levelno >= logging.WARNING:
                sys.stderr.write(f"warning: {message}\n")
            else:
                sys.stdout.write(message + "\n")
        except Exception:  # logging's rule: a failing handler reports and never raises into the caller
            self.handleError(record)


def configure_output(quiet: bool = False) -> None:
    """Line-buffered stdout, and the library's messages on the console (warnings only when `quiet`)."""
    line_buffered_stdout()
    logger = logging.getLogger(LOGGER)
    logger.handlers = [h for h in logger.handlers if not isinstance(h, ConsoleHandler)] + [ConsoleHandler()]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def line_buffered_stdout() -> None:
    """Makes stdout write each line at once, also when redirected to a file (`> train.log`), where
    Python would otherwise buffer blocks of 8 kB and lose them on kill -9."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)  # absent on a test's io.StringIO
    if reconfigure is not None:
        reconfigure(line_buffering=True)


@contextlib.contextmanager
def only_warnings(name: str, level: int = logging.WARNING):
    """Within the block, the logger `name` (and those under it) passes messages of `level` and above only
    (warnings by default): a comparison's models train without their epoch lines and summaries."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


class _NoProgress:
    def update(self, count: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int, description: str, initial: int = 0, enabled: bool | None = None):
    """A progress bar on stderr, updated with `update(count)` and removed by `close()`: tqdm's when
    tqdm is installed and `enabled` (None: when stderr is a terminal), else one that shows nothing."""
    if not (sys.stderr.isatty() if enabled is None else enabled):
        return _NoProgress()
    try:
        from tqdm import tqdm  # optional: pip install tqdm
    except ModuleNotFoundError:
        return _NoProgress()
    return tqdm(total=total, initial=initial, desc=description, leave=False, file=sys.stderr, dynamic_ncols=True)


# ----------------------------------------------------------------------------- the run
def format_duration(seconds: float) -> str:
    """12.3s, 4m05s or 1h02m."""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def format_bytes(count: int) -> str:
    """A size as people read it, never rounded to nothing: 1000 bytes, 12.3 KiB, 4.56 MiB, 7.89 GiB (three
    significant digits)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{count} bytes"


def command_for(module: str) -> str:
    """How to type, from any folder, the command whose `main` is in `module` (e.g. "discomkd.commands.train"),
    for the hints a command prints: its installed script (discomkd-train) where that is on the PATH, else the
    module run by this very interpreter (`python -m discomkd.commands.train`)."""
    for entry in importlib.metadata.entry_points(group="console_scripts"):
        if entry.value == f"{module}:main" and shutil.which(entry.name):
            return entry.name
    python = "python" if shutil.which("python") == sys.executable else sys.executable
    return f"{python} -m {module}"
