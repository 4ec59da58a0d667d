"""prepare_data.py's output folder: which entries are prepare's own, the checks made before anything is
read, the disk space reserved before anything is written, and the folder built beside its place and
swapped in whole.

`--overwrite` replaces a folder holding prepare's own files only: anything else there (a trained run,
which training writes into the data folder by default; predictions; notes) is refused, never deleted.
An output given as a symbolic link is written through: its target is replaced, the link is kept.
"""
from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import shutil
import tempfile

from discomkd.data.folder import CLASSES_FILE, NORMALIZATION_FILE
from discomkd.preparing.rows import ROWS_FILE
from discomkd.utils.console import format_bytes
from discomkd.utils.errors import DataError
from discomkd.utils.files import TEMPORARY_PREFIX, folder_problem

SKIPPED_FILE = "skipped.txt"
# every name prepare_data.py writes into its folder (atomic_write's temporaries of a crashed write too)
PREPARED_PATTERNS = ("labels.npy", "*_data_normalized.npy", "train_idx.npy", "valid_idx.npy", "test_idx.npy",
                     "train_idx_*.npy", CLASSES_FILE, NORMALIZATION_FILE, ROWS_FILE, SKIPPED_FILE,
                     TEMPORARY_PREFIX + "*")
BUILDING_PREFIX = ".tmp-prepare-"  # the folder being built, beside the output
OLD_PREFIX = ".old-prepare-"  # the folder being replaced, for the instant of the swap
_ZEROS = 1 << 20  # bytes written at a time where the file system cannot allocate without writing


def is_prepared_entry(folder: str, name: str) -> bool:
    """Whether `name` in `folder` is a file prepare_data.py writes (a folder never is)."""
    return os.path.isfile(os.path.join(folder, name)) and any(fnmatch.fnmatchcase(name, p) for p in PREPARED_PATTERNS)


def check_output(output: str, inputs: list[str], overwrite: bool) -> str:
    """The folder to write `output` into: `output` itself, or the folder a symbolic link `output` points at.
    Refuses (`DataError`) a broken link, a file, a folder that cannot be written, one holding files unless
    `overwrite`, one holding anything prepare does not write even then, one inside an input folder or
    holding an input (`inputs`: folders and files)."""
    target = output
    if os.path.islink(output):
        target = os.path.realpath(output)
        if not os.path.exists(target):
            raise DataError(f"{output}: a symbolic link to {target}, which does not exist")
    if os.path.exists(target) and not os.path.isdir(target):
        raise DataError(f"{output}: exists and is not a folder")
    problem = folder_problem(target)
    if problem is not None:
        raise DataError(f"{output}: {problem}")
    entries = sorted(os.listdir(target)) if os.path.isdir(target) else []
    if entries and not overwrite:
        raise DataError(f"{output}: output folder already holds files; pass --overwrite to replace them "
                        "or choose another folder")
    foreign = [name for name in entries if not is_prepared_entry(target, name)]
    if foreign:
        raise DataError(f"{output}: holds {os.path.join(output, foreign[0])}"
                        + (f" and {len(foreign) - 1} more entries" if len(foreign) > 1 else "")
                        + " that prepare_data.py did not write (a trained run?); --overwrite replaces a prepared "
                          "folder only: move them out or choose another folder")
    real = os.path.realpath(target)
    for source in inputs:
        source_real = os.path.realpath(source)
        if (source_real + os.sep).startswith(real + os.sep):
            raise DataError(f"{output}: holds the input {source}; choose an output folder outside the inputs")
        if os.path.isdir(source) and real.startswith(source_real + os.sep):
            raise DataError(f"{output}: inside the input folder {source}, where it would be read as a class "
                            "folder next time; choose an output folder outside the inputs")
    return target


def check_space(target: str, needed: int) -> None:
    """Refuses, before anything is written, an output whose file system has less than `needed` bytes free."""
    free = shutil.disk_usage(_existing_ancestor(target)).free
    if free < needed:
        raise no_space(target, needed, free)


def no_space(target: str, needed: int, free: int | None = None) -> DataError:
    """The one-line error of a full disk."""
    available = f", {format_bytes(free)} free" if free is not None else ""
    return DataError(f"{target}: no space left on device: needs {format_bytes(needed)}{available}")


def is_full_disk(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def reserve(path: str, start: int, size: int) -> None:
    """Allocates bytes start..size of the file `path` on disk now (os.posix_fallocate), so that writing
    them later through a memory map cannot fault (SIGBUS) on a full disk: a full disk raises OSError
    (ENOSPC) here instead. Where the file system cannot allocate, zeros are written (the same effect)."""
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), start, size - start)
            return
        except AttributeError:  # no posix_fallocate on this platform
            pass
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
        handle.seek(start)
        zeros = bytes(_ZEROS)
        for offset in range(start, size, _ZEROS):
            handle.write(zeros[:min(_ZEROS, size - offset)])
        handle.flush()
        os.fsync(handle.fileno())


@contextlib.contextmanager
def building(target: str):
    """A fresh folder beside `target` to build the output in (with the permissions a plain mkdir gives);
    removed, with whatever is in it, if the block raises."""
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(dir=parent, prefix=BUILDING_PREFIX)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o777 & ~umask)  # mkdtemp's folders are private (0700)
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def swap_in(temporary: str, target: str) -> None:
    """Moves the finished `temporary` folder to `target`, replacing the prepared folder there (restored
    if the move fails)."""
    if os.path.isdir(target) and os.listdir(target):
        old = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(target)), prefix=OLD_PREFIX)
        os.rmdir(old)
        os.rename(target, old)
        try:
            os.rename(temporary, target)
        except BaseException:
            os.rename(old, target)
            raise
        shutil.rmtree(old)
    else:
        if os.path.isdir(target):
            os.rmdir(target)
        os.rename(temporary, target)


def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path
