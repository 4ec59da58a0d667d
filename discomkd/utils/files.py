"""Writing files so that a reader never sees half of one: atomic, durable writes (`atomic_write` and the
JSON, text, array and tensor writers built on it), a full disk told as one line, and whether a folder
can be created and written before anything is."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile

import numpy as np
import torch

from discomkd.utils.errors import NoSpaceError

TEMPORARY_PREFIX = ".tmp-"  # atomic_write's temporary files: hidden, and never a final name


def atomic_write(path: str, write) -> None:
    """Calls `write(temporary_path)`, then renames onto `path`: readers see the old or the new file.

    Durable as well as atomic: the file's data reach the disk (fsync) before the rename, and the
    folder's entry after it, so a power cut or a crashed machine leaves the old or the new file,
    never a renamed but empty one (what ext4 and XFS can show after a crash without the first fsync).
    """
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=TEMPORARY_PREFIX, suffix=os.path.basename(path))
    os.close(handle)
    try:
        # mkstemp makes the file private (0600); give it the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        write(temporary)
        _fsync_path(temporary, os.O_RDONLY)  # fsync acts on the file, whatever descriptor wrote it
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        if out_of_space(error, folder):
            raise NoSpaceError(f"{path}: no space left on device while writing it (its earlier version, if any, is "
                               "intact); free some space and run again") from None
        raise
    with contextlib.suppress(OSError):  # some file systems (and Windows) cannot open or fsync a folder
        _fsync_path(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync_path(path: str, flags: int) -> None:
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


LOW_SPACE_BYTES = 1 << 20


def out_of_space(error: BaseException, folder: str) -> bool:
    """Whether `error`, raised while writing into `folder`, comes from a full disk (or quota): an OSError
    saying so, or another error (torch.save says only "file write failed") with under 1 MiB left."""
    if isinstance(error, OSError):
        return error.errno in SPACE_ERRNOS
    if isinstance(error, (RuntimeError, ValueError)):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(folder).free < LOW_SPACE_BYTES
    return False


def write_text(path: str, text: str) -> None:
    def write(temporary):
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)

    atomic_write(path, write)


def write_json(path: str, payload: dict) -> None:
    def write(temporary):
        with open(temporary, "w") as handle:
            json.dump(payload, handle, indent=1)

    atomic_write(path, write)


SYSTEM_FOLDERS = ("/proc", "/sys")  # the kernel's views: writable files there are settings, never outputs


def folder_problem(folder: str) -> str | None:
    """Why `folder` cannot be created (with its parents) and written to, or None; checked before
    anything is written, so that a run does not fail after creating part of its outputs."""
    if not folder:
        return "an empty name; name a folder (. for this one)"
    path = os.path.abspath(folder)
    real = os.path.realpath(path)
    for system in SYSTEM_FOLDERS:
        if real == system or real.startswith(system + os.sep):
            return f"inside {system}, the kernel's interface; choose an output folder elsewhere"
    existing, missing = path, []
    while not os.path.lexists(existing):  # the deepest existing ancestor (a broken link counts as existing)
        existing, name = os.path.dirname(existing), os.path.basename(existing)
        missing.append(name)
    if not os.path.isdir(existing):
        return f"cannot create the folder: {existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot create or write the folder: {existing} is not writable"
    with contextlib.suppress(OSError, ValueError):
        longest = max(missing, key=len, default="")
        if len(longest.encode()) > os.pathconf(existing, "PC_NAME_MAX"):
            return f"cannot create the folder: name {longest[:20]}... longer than the file system allows"
    return None


def write_payload(path: str, payload: dict) -> None:
    """torch.save of host tensors and plain containers, atomically."""
    atomic_write(path, lambda temporary: torch.save(payload, temporary))


def remove_temporaries(folder: str) -> None:
    """Removes what writes cut short by a kill left behind: never a final name."""
    for name in os.listdir(folder):
        if name.startswith(TEMPORARY_PREFIX):
            os.remove(os.path.join(folder, name))


def save_npy(path: str, values: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a file handle, so numpy does not append .npy to the temporary name
        np.save(handle, values)
