"""Who may write an output folder: one process at a time, and `--overwrite` that destroys nothing early.

`owning(folder)` holds the folder's lock while a run, a comparison or a search writes there: an
advisory `flock` on `folder/.discomkd-lock`, which names the holder (process, machine, command). The
kernel releases the lock when the process dies, however it dies, so a crashed run never leaves a
folder locked; on NFS, Linux maps `flock` onto the server's byte-range locks, so Ray tasks on several
machines exclude each other too. A second process is refused with one line naming the holder. Nested
`owning` of one folder in one process (the command, then the training loop) is counted, not relocked.

`whole_folder` is how a command writes a whole output folder (a comparison, a search), `--overwrite`
included: the earlier folder is renamed to `<folder>.previous` (`SetAside`) before anything new is
written, removed only once the new one is complete, and renamed back when the new one stops early (its
kept part moved to `<folder>.interrupted-<time>`). A process killed in between leaves
`<folder>.previous`, which the next command refuses to touch until the user moves it back or removes it.
`prepare_output` is the check every output folder passes first.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass

from discomkd.utils.errors import DataError, Interrupted, OptionError, TrainingError
from discomkd.utils.files import folder_problem

LOCK_FILE = ".discomkd-lock"
PREVIOUS_SUFFIX = ".previous"
INTERRUPTED_SUFFIX = ".interrupted-"

logger = logging.getLogger(__name__)

_held: dict[str, list] = {}  # real path of a folder -> [descriptor, depth] for the locks this process holds


def holder(folder: str) -> str | None:
    """Who holds `folder`'s lock now ("process 123 on host: command"), or None when nobody does."""
    path = os.path.join(folder, LOCK_FILE)
    if os.path.realpath(folder) in _held:
        return None  # this process: nested use is allowed
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        with contextlib.suppress(OSError):
            return os.read(descriptor, 4096).decode("utf-8", "replace").strip() or "another process"
        return "another process"
    finally:
        os.close(descriptor)
    return None


def check_not_in_use(folder: str) -> None:
    """Raises `DataError` naming the holder when another process holds `folder`'s lock."""
    if os.path.isdir(folder):
        held_by = holder(folder)
        if held_by is not None:
            raise DataError(f"{folder}: in use by {held_by}; wait for it to end, or choose another --output")


@contextlib.contextmanager
def owning(folder: str):
    """Holds `folder`'s lock (the folder must exist) until the block ends; raises `DataError` when
    another process holds it."""
    key = os.path.realpath(folder)
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    descriptor = _lock(folder)
    _held[key] = [descriptor, 1]
    try:
        yield
    finally:
        del _held[key]
        with contextlib.suppress(OSError):
            os.remove(os.path.join(folder, LOCK_FILE))  # while still held: nobody can have locked it since
        os.close(descriptor)


def _lock(folder: str) -> int:
    path = os.path.join(folder, LOCK_FILE)
    while True:
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise DataError(f"{path}: cannot create the folder's lock file ({error.strerror})") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with contextlib.suppress(OSError):
                held_by = os.read(descriptor, 4096).decode("utf-8", "replace").strip()
            os.close(descriptor)
            raise DataError(f"{folder}: in use by {held_by or 'another process'}; wait for it to end, or choose "
                            "another --output") from None
        except OSError as error:
            os.close(descriptor)
            if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP):
                raise DataError(f"{folder}: the file system cannot lock files ({error.strerror}); choose an output "
                                "folder on a local disk or an NFS mount with locking") from None
            raise
        # the holder before us may have removed the file between our open and our lock: lock the one in place
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(descriptor).st_ino == os.stat(path).st_ino:
                break
        os.close(descriptor)
    os.ftruncate(descriptor, 0)
    command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:200]
    os.write(descriptor, f"process {os.getpid()} on {socket.gethostname()}: {command}\n".encode())
    return descriptor


def ignored_names() -> set[str]:
    """Names that do not make a folder 'hold files': a lock file left by a killed process."""
    return {LOCK_FILE}


def prepare_output(output: str, overwrite: bool) -> str:
    """Checks that `output` can hold a run; refuses a folder holding files unless `overwrite`."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise DataError(f"{output}: exists and is not a folder")
    problem = folder_problem(output)
    if problem is not None:
        raise DataError(f"{output}: {problem}")
    check_not_in_use(output)
    if os.path.isdir(output) and set(os.listdir(output)) - ignored_names() and not overwrite:
        raise DataError(f"{output}: output folder already holds files (an earlier run?); "
                        "pass --overwrite to replace them or --output to choose another folder")
    return output


# ----------------------------------------------------------------------------- --overwrite of a whole folder
def previous_of(folder: str) -> str:
    """Where --overwrite sets `folder`'s earlier contents aside: beside the folder itself, a link to it followed
    (renaming the link would leave the earlier contents behind it, and a real folder in its place)."""
    real = os.path.realpath(folder)
    return (real if os.path.islink(folder.rstrip(os.sep) or folder) else os.path.normpath(folder)) + PREVIOUS_SUFFIX


def check_no_set_aside(folder: str) -> None:
    """Raises `DataError` when an earlier `--overwrite` of `folder` was killed before it finished: the
    folder it set aside is still there, and only the user can say which one to keep."""
    previous = previous_of(folder)
    if os.path.lexists(previous):
        raise DataError(f"{previous}: holds what an earlier --overwrite of {folder} set aside and never got to "
                        f"restore (that process was killed); move it back to {folder} or remove it, then run again")


class SetAside:
    """`--overwrite` of a whole output folder, in three steps: `start()` renames the earlier folder (if
    it holds anything) to `<folder>.previous`; `commit()` removes it once the new folder is complete;
    `restore()` (the new one stopped early) puts it back, moving the new folder, if it holds anything, to
    `<folder>.interrupted-<time>`. Returns, or logs, what it did."""

    def __init__(self, folder: str):
        # a link to a folder: the folder itself is set aside and restored, the link keeps pointing at it
        link = os.path.islink(folder.rstrip(os.sep) or folder)
        self.folder = os.path.realpath(folder) if link else os.path.normpath(folder)
        self.previous = previous_of(folder)
        self.active = False

    def start(self) -> None:
        check_no_set_aside(self.folder)
        if os.path.isdir(self.folder) and set(os.listdir(self.folder)) - ignored_names():
            check_not_in_use(self.folder)
            os.rename(self.folder, self.previous)
            self.active = True
            logger.info(f"--overwrite: the earlier contents of {self.folder} are kept in {self.previous} until the "
                        "new ones are complete")

    def commit(self) -> None:
        if self.active:
            shutil.rmtree(self.previous, ignore_errors=True)
            self.active = False

    def restore(self) -> str:
        """Puts the earlier folder back, the new one moved to `<folder>.interrupted-<time>` when it holds anything
        (what its command kept: finished runs, a search's trials), else removed; returns a sentence saying where
        everything is."""
        if not self.active:
            return ""
        moved = None
        if os.path.isdir(self.folder) and set(os.listdir(self.folder)) - ignored_names():
            moved = self.folder + INTERRUPTED_SUFFIX + time.strftime("%Y%m%d-%H%M%S")
            os.rename(self.folder, moved)
        else:
            shutil.rmtree(self.folder, ignore_errors=True)
        os.rename(self.previous, self.folder)
        self.active = False
        return (f"the earlier contents of {self.folder} are back in place" +
                (f"; the new part is in {moved}" if moved else ""))


@dataclass(frozen=True)
class FolderWrite:
    """What `whole_folder` tells the block: whether it made the folder, and whether --overwrite set earlier
    contents aside (restored if the block fails)."""

    created: bool
    replacing: bool


@contextlib.contextmanager
def whole_folder(folder: str, overwrite: bool, before_writing=None, resume: bool = False):
    """One command writing a whole output folder (a comparison, a search), in the one order every such command
    follows. Before anything is written: the folder checked (`prepare_output`), no earlier --overwrite left half
    done (`check_no_set_aside`), and `before_writing()`, the command's own last check (an executor that must reach
    its cluster). Then, with `overwrite`, the earlier contents set aside (`SetAside`); the folder made and locked
    (`owning`) for the block, which gets a `FolderWrite`. The block ending normally removes the earlier contents;
    any exception puts them back (`SetAside.restore`), and an `Interrupted` or `TrainingError` is raised again
    with a sentence saying where everything is (any other exception after a warning saying it). `resume`: the
    folder's files are the command's own earlier work, continued in place (not with `overwrite`)."""
    if overwrite and resume:
        raise OptionError("--resume continues the output folder's comparison and --overwrite replaces it: give one")
    prepare_output(folder, overwrite or resume)
    check_no_set_aside(folder)
    if before_writing is not None:
        before_writing()
    aside = SetAside(folder)
    # ---- nothing was written before this line
    if overwrite:
        aside.start()
    created = not os.path.exists(folder)
    os.makedirs(os.path.realpath(folder), exist_ok=True)  # a link's folder, set aside just now, made again
    try:
        with owning(folder):
            yield FolderWrite(created, aside.active)
    except BaseException as error:
        restored = aside.restore()
        if restored and isinstance(error, (Interrupted, TrainingError)):
            raise type(error)(f"{error}; {restored}") from None
        if restored:
            logger.warning(f"stopped: {restored}")
        raise
    aside.commit()
