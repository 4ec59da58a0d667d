"""What makes two runs the same run, and the one rule that says whether a saved state may be continued.

A run is its settings (the config, less what only says where and how loudly it runs), its data as
`DataFolder.describe()` records it (folder, files, shapes, rows per split, classes), the labels and
split rows (`data.data_fingerprint`), and the SHA-256 of every byte of each modality's array file
(`file_digest`). A new run computes the digests in a background thread (`ContentHashing`), off the
training thread: its first resumable state waits for them. `resume_problem` compares a saved run with
the one about to start, hashing the files again; every path that continues a state.pt asks it:
`--resume`, the comparison's jobs under either executor, and through them tuning.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os

from discomkd.data.folder import DataFolder, data_fingerprint
from discomkd.training.config import Config

# Config fields that say where a run writes and what it prints, not what it computes.
NOT_IDENTITY = ("output", "overwrite", "verbose")
DIGEST_PREFIX = "sha256:"  # a digest of every byte; runs recorded before it hold sampled stamps ("<size>:<hex>")
SAMPLED_CHUNKS, SAMPLED_CHUNK_BYTES = 16, 1 << 16


def file_digest(path: str) -> str:
    """"sha256:<hex>" of every byte of `path`, read in bounded pieces (the file may be larger than memory)."""
    with open(path, "rb") as handle:
        return DIGEST_PREFIX + hashlib.file_digest(handle, "sha256").hexdigest()


def sampled_stamp(path: str) -> str:
    """What runs recorded before full digests: the size and the SHA-256 of 16 chunks of 64 KiB spread over the
    file. Kept to compare those runs' states with, never written any more."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        step = max(SAMPLED_CHUNK_BYTES, size // SAMPLED_CHUNKS)
        for offset in range(0, size, step):
            handle.seek(offset)
            digest.update(handle.read(SAMPLED_CHUNK_BYTES))
    return f"{size}:{digest.hexdigest()}"


def data_content(data: DataFolder, recorded: dict[str, str] | None = None) -> dict[str, str]:
    """{modality prefix: file_digest of its array file}; for a prefix that `recorded` holds in the sampled form
    of earlier runs, its sampled stamp instead, so that the two compare."""
    recorded = recorded or {}
    return {m.prefix: (file_digest(m.path) if recorded.get(m.prefix, DIGEST_PREFIX).startswith(DIGEST_PREFIX)
                       else sampled_stamp(m.path)) for m in data.modalities}


class ContentHashing:
    """The digests of a run's data files (`data_content`), computed in a thread of their own from the start of
    the run, so that the training thread never reads the files for them (hashlib lets the GIL go while it
    hashes). `result()` waits for them: the first resumable state needs them."""

    def __init__(self, data: DataFolder):
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="discomkd-hashing")
        self._future = self._pool.submit(data_content, data)
        self._pool.shutdown(wait=False)

    def result(self) -> dict[str, str]:
        return self._future.result()


def computed_settings(config: Config | dict) -> dict:
    """The config fields that decide what a run computes. A recorded config (a dict) lacks the fields added to
    `Config` since it was written: each takes its default, which computes what the code of then did."""
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    fields = dataclasses.asdict(config) if isinstance(config, Config) else {**defaults, **config}
    return {k: v for k, v in fields.items() if k not in NOT_IDENTITY}


def identity(config: Config, data: DataFolder) -> dict:
    """What results.json records so that a later start can tell whether it is the same run, but for the files'
    digests ("data_content"), which `ContentHashing` adds once computed."""
    return {"config": dataclasses.asdict(config), "data": data.describe(), "data_fingerprint": data_fingerprint(data)}


def resume_problem(saved: dict, data: DataFolder, config: Config | None = None) -> str | None:
    """Why the run saved with results `saved` may not be continued on `data` with `config` (None: the
    saved run's own config), or None when it may. Checks the data folder and files, the labels and
    split rows, the settings, and every byte of the data files (read again: about 1 GB/s on a CPU core)."""
    described = data.describe()
    if saved.get("data", {}).get("directory") != described["directory"]:
        return f"it was trained on {saved.get('data', {}).get('directory')}, not {described['directory']}"
    if saved.get("data") != described:
        return "its data files, shapes, split sizes or classes differ"
    if saved.get("data_fingerprint") != data_fingerprint(data):
        return "its labels or split rows differ"
    if config is not None and computed_settings(saved.get("config", {})) != computed_settings(config):
        differ = sorted(k for k, v in computed_settings(config).items() if saved.get("config", {}).get(k) != v)
        return f"its settings differ ({', '.join(differ[:5])})"
    recorded = saved.get("data_content")  # last: every byte of the data is read
    if recorded is None:  # every state written since the digests were recorded holds them
        return "its state records no digest of its data files"
    now = data_content(data, recorded)
    if recorded != now:
        changed = [p for p, stamp in now.items() if recorded.get(p) != stamp]
        return f"the contents of {', '.join(changed) or 'its data files'} changed since it started"
    return None
