"""Durable, background and fallback writes: fsync around every atomic write; state snapshots written
off the training thread equal the synchronous ones and resume bit-identically; a failing compile
falls back to eager."""
import dataclasses
import os

import pytest
from toy import quiet, read_results, write_toy_folder

import outputs
from configuration import Config
from functions import run
from outputs import TEMPORARY_PREFIX

PREFIXES = ("IMG", "VEC")
CONFIG = Config(epochs=3, batch_size=16, encoder_first="lenet", learning_rate=2e-3, device="cpu", verbose=0)


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    return write_toy_folder(tmp_path_factory.mktemp("writes") / "data", n=72)


@pytest.fixture
def disk_events(monkeypatch):
    """Records ("fsync", path) and ("replace", source, target) in the order they happen."""
    events = []
    fsync, replace = os.fsync, os.replace

    def recorded_fsync(descriptor):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        fsync(descriptor)

    def recorded_replace(source, target, *args, **kwargs):
        events.append(("replace", os.path.abspath(source), os.path.abspath(target)))
        replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", recorded_fsync)
    monkeypatch.setattr(os, "replace", recorded_replace)
    return events


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, disk_events):
    path = str(tmp_path / "results.json")
    outputs.write_json(path, {"a": 1})
    (fsync_file, rename, fsync_folder) = disk_events
    assert rename[0] == "replace" and rename[2] == path
    assert fsync_file == ("fsync", rename[1]), "the temporary file's data reach the disk before it is renamed"
    assert os.path.basename(rename[1]).startswith(TEMPORARY_PREFIX)
    assert fsync_folder == ("fsync", str(tmp_path)), "the folder's new entry reaches the disk after the rename"


def test_every_file_a_run_writes_is_fsynced_then_renamed(data_folder, tmp_path, disk_events):
    output = str(tmp_path / "run")
    run(dataclasses.replace(CONFIG, output=output, save_every=1), data_folder, *PREFIXES, log=quiet)
    renamed = {target: source for kind, *paths in disk_events if kind == "replace" for source, target in [paths]}
    names = sorted(os.listdir(output))
    assert names == ["best_IMG.pt", "best_VEC.pt", "results.json", "test_predictions_IMG.npy",
                     "test_predictions_VEC.npy"]
    assert os.path.join(output, outputs.STATE_FILE) in renamed, "state.pt was written (then removed at the end)"
    for target, source in renamed.items():
        position = disk_events.index(("replace", source, target))
        assert ("fsync", source) in disk_events[:position], f"{target}: not fsynced before its rename"
        assert ("fsync", output) in disk_events[position:], f"{target}: folder not fsynced after its rename"
    for name in names:
        assert os.path.join(output, name) in renamed, f"{name}: not written through atomic_write"
