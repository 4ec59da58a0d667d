"""What makes two runs the same run, and the one rule that says whether a saved state may be continued.

A run is its settings (the config, less what only says where and how loudly it runs), its data as
`DataFolder.describe()` records it (folder, files, shapes, rows per split, classes), the labels and
split rows (`data.data_fingerprint`), and a sample of each modality file's bytes (`content_stamp`:
the arrays can be larger than memory, so 16 chunks of 64 KiB spread over the file are hashed with its
size). `resume_problem` compares a saved run with the one about to start; every path that continues a
state.pt asks it: `--resume`, the comparison's jobs under either executor, and through them tuning.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os

from discomkd.data.folder import DataFolder, data_fingerprint
from discomkd.training.config import Config

# Config fields that say where a run writes and what it prints, not what it computes.
NOT_IDENTITY = ("output", "overwrite", "verbose")
STAMP_CHUNKS, STAMP_CHUNK_BYTES = 16, 1 << 16


def content_stamp(path: str) -> str:
    """The size of `path` and the SHA-256 of STAMP_CHUNKS chunks spread evenly over it."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        step = max(STAMP_CHUNK_BYTES, size // STAMP_CHUNKS)
        for offset in range(0, size, step):
            handle.seek(offset)
            digest.update(handle.read(STAMP_CHUNK_BYTES))
    return f"{size}:{digest.hexdigest()}"


def data_content(data: DataFolder) -> dict[str, str]:
    """{modality prefix: content_stamp of its array file}."""
    return {m.prefix: content_stamp(m.path) for m in data.modalities}


def computed_settings(config: Config | dict) -> dict:
    """The config fields that decide what a run computes."""
    fields = dataclasses.asdict(config) if isinstance(config, Config) else dict(config)
    return {k: v for k, v in fields.items() if k not in NOT_IDENTITY}


def identity(config: Config, data: DataFolder) -> dict:
    """What results.json records so that a later start can tell whether it is the same run."""
    return {"config": dataclasses.asdict(config), "data": data.describe(), "data_fingerprint": data_fingerprint(data),
            "data_content": data_content(data)}


def resume_problem(saved: dict, data: DataFolder, config: Config | None = None) -> str | None:
    """Why the run saved with results `saved` may not be continued on `data` with `config` (None: the
    saved run's own config), or None when it may. Checks the data folder and files, the labels and
    split rows, the files' contents and the settings."""
    described = data.describe()
    if saved.get("data", {}).get("directory") != described["directory"]:
        return f"it was trained on {saved.get('data', {}).get('directory')}, not {described['directory']}"
    if saved.get("data") != described:
        return "its data files, shapes, split sizes or classes differ"
    if saved.get("data_fingerprint") != data_fingerprint(data):
        return "its labels or split rows differ"
    recorded = saved.get("data_content")
    if recorded is not None and recorded != data_content(data):
        changed = [p for p, stamp in data_content(data).items() if recorded.get(p) != stamp]
        return f"the contents of {', '.join(changed) or 'its data files'} changed since it started"
    if config is not None and computed_settings(saved.get("config", {})) != computed_settings(config):
        differ = sorted(k for k, v in computed_settings(config).items() if saved.get("config", {}).get(k) != v)
        return f"its settings differ ({', '.join(differ[:5])})"
    return None
