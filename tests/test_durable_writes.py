"""Durable, background and fallback writes: fsync around every atomic write; state snapshots written
off the training thread equal the synchronous ones and resume bit-identically; a failing compile
falls back to eager."""
import copy
import dataclasses
import json
import os

import pytest
import torch
from test_resume import CONFIG as RESUME_CONFIG
from test_resume import ROWS as RESUME_ROWS
from test_resume import STEPS_PER_EPOCH, assert_same_run
from toy import TOY_SETTINGS, read_results, write_toy_folder

from discomkd.commands import benchmark
from discomkd.models import methods
from discomkd.runs import outputs
from discomkd.runs import writer as snapshots
from discomkd.training.config import Config
from discomkd.training.run import resume, run
from discomkd.utils import files
from discomkd.utils.files import TEMPORARY_PREFIX

PREFIXES = ("IMG", "VEC")
CONFIG = Config(**{**TOY_SETTINGS, "epochs": 3, "learning_rate": 2e-3}, verbose=0)


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
    files.write_json(path, {"a": 1})
    (fsync_file, rename, fsync_folder) = disk_events
    assert rename[0] == "replace" and rename[2] == path
    assert fsync_file == ("fsync", rename[1]), "the temporary file's data reach the disk before it is renamed"
    assert os.path.basename(rename[1]).startswith(TEMPORARY_PREFIX)
    assert fsync_folder == ("fsync", str(tmp_path)), "the folder's new entry reaches the disk after the rename"


def test_every_file_a_run_writes_is_fsynced_then_renamed(data_folder, tmp_path, disk_events):
    output = str(tmp_path / "run")
    run(dataclasses.replace(CONFIG, output=output, save_every=1), data_folder, *PREFIXES)
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


# ----------------------------------------------------------------------------- state snapshots
def test_a_background_snapshot_holds_the_tensors_as_they_were_when_written(tmp_path):
    weights = {"layer": torch.arange(6.0).view(2, 3), "step": torch.tensor(4)}
    payload = {"model": weights, "results": {"history": [{"loss": 1.5}]}, "rng": [torch.ones(3), 7, None]}
    expected = copy.deepcopy(payload)
    writer = snapshots.RunWriter(str(tmp_path), torch.device("cpu"), background=True)
    writer.write(1, payload["results"], {str(tmp_path / "best_A.pt"): {"state_dict": weights}}, payload)
    weights["layer"].add_(100)  # the next optimizer step, while the file is being written
    payload["results"]["history"].append({"loss": 0.5})
    writer.close()
    state = outputs.load_state(str(tmp_path))
    assert torch.equal(state["model"]["layer"], expected["model"]["layer"])
    assert state["results"] == expected["results"] == read_results(tmp_path)
    assert torch.equal(torch.load(tmp_path / "best_A.pt", weights_only=True)["state_dict"]["layer"],
                       expected["model"]["layer"])
    buffers = dict(writer.copier.buffers)
    writer.write(2, payload["results"], {}, payload)
    writer.close()
    assert all(writer.copier.buffers[path] is buffer for path, buffer in buffers.items() if path[0] == "state"), \
        "host buffers are allocated once and reused"
    assert torch.equal(outputs.load_state(str(tmp_path))["model"]["layer"], weights["layer"])
    assert [t["state"] for t in writer.timings] == [True, True]


def test_a_failed_background_write_is_raised_on_the_training_thread(tmp_path):
    writer = snapshots.RunWriter(str(tmp_path / "missing-folder"), torch.device("cpu"), background=True)
    writer.write(1, {"status": "running"}, {}, None)
    with pytest.raises(FileNotFoundError):
        writer.wait()
    writer.wait()  # raised once


class Crash(Exception):
    """Stands for kill -9: the run stops where it is, nothing more is saved."""


def crashing_run(data_folder, output, monkeypatch, crash_at_step):
    """Runs CONFIG (a state.pt at every epoch's end) until the step `crash_at_step` and crashes there."""
    count = [0]
    losses = methods.discomkd_losses

    def counted(*args, **kwargs):
        count[0] += 1
        return losses(*args, **kwargs)

    def crash():
        if count[0] >= crash_at_step:
            raise Crash
        return False

    monkeypatch.setattr(methods, "discomkd_losses", counted)
    with pytest.raises(Crash):
        run(dataclasses.replace(RESUME_CONFIG, output=output, save_every_seconds=0), data_folder, *PREFIXES, should_stop=crash)
    monkeypatch.setattr(methods, "discomkd_losses", losses)


TIMINGS = ("train_seconds", "eval_seconds", "write_seconds", "write_wait_seconds")


def test_background_snapshot_equals_the_synchronous_one_and_resumes_bit_identically(tmp_path, monkeypatch):
    data_folder = write_toy_folder(tmp_path / "data", n=RESUME_ROWS)
    reference = str(tmp_path / "reference")
    run(dataclasses.replace(RESUME_CONFIG, output=reference), data_folder, *PREFIXES)
    crash_at = 2 * STEPS_PER_EPOCH + 2  # inside epoch 3: state.pt is the snapshot written after epoch 2
    saved = {}
    for background in (False, True):
        monkeypatch.setattr(snapshots, "BACKGROUND", background)
        output = str(tmp_path / f"background-{background}")
        crashing_run(data_folder, output, monkeypatch, crash_at)
        saved[background] = outputs.load_state(output)
        assert saved[background]["epoch"] == 3 and saved[background]["progress"] is None
    synchronous, background = saved[False], saved[True]
    for part in ("model", "optimizer", "rng", "best", "test_predictions", "format", "epoch", "progress"):
        assert_equal_trees(synchronous[part], background[part], part)
    strip = [{k: v for k, v in h.items() if k not in TIMINGS} for h in synchronous["results"]["history"]]
    assert strip == [{k: v for k, v in h.items() if k not in TIMINGS} for h in background["results"]["history"]]
    resume(str(tmp_path / "background-True"))
    assert_same_run(reference, str(tmp_path / "background-True"))


def assert_equal_trees(a, b, where):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal_trees(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_trees(x, y, f"{where}/{i}")
    else:
        assert a == b, where


# ----------------------------------------------------------------------------- compile fallback
@pytest.mark.parametrize("fail_at_call", [1, 3])
def test_a_failing_compiled_step_falls_back_to_eager_with_the_same_results(data_folder, tmp_path, monkeypatch, capsys,
                                                                           fail_at_call):
    """The stand-in for torch.compile runs the real step (batch-norm statistics move, dropout and
    augmentation draw random numbers) and then raises, at the first call (a tracing error) or the
    third (a CUDA graph recording error): the undone step, rerun eager, gives the eager run exactly."""
    def failing_compile(function, **options):
        calls = [0]

        def compiled(*args, **kwargs):
            calls[0] += 1
            result = function(*args, **kwargs)
            if calls[0] == fail_at_call:
                raise RuntimeError("inductor: backend compiler failed\nsecond line of the trace")
            return result
        return compiled

    eager = run(dataclasses.replace(CONFIG, output=str(tmp_path / "eager"), compile="no"), data_folder, *PREFIXES)
    capsys.readouterr()
    monkeypatch.setattr(torch, "compile", failing_compile)
    output = str(tmp_path / "fallback")
    fallback = run(dataclasses.replace(CONFIG, output=output, compile="yes"), data_folder, *PREFIXES)
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: torch.compile failed (RuntimeError: inductor: backend compiler failed); training "
                        "goes on eager, as with --compile no"], err
    assert [h["loss"] for h in fallback["history"]] == [h["loss"] for h in eager["history"]]
    assert fallback["final"] == eager["final"]
    saved = read_results(output)
    assert saved["environment"]["compiled"] is False
    assert saved["environment"]["compile_error"] == "RuntimeError: inductor: backend compiler failed"
    assert any("torch.compile failed" in w for w in saved["warnings"])


def test_bf16_asked_on_a_gpu_without_it_resolves_to_fp32(monkeypatch):
    from discomkd.training.config import resolve_precision
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert resolve_precision("bf16", torch.device("cuda")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"  # CPU autocast runs bf16 (slowly)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve_precision("bf16", torch.device("cuda")) == "bf16"


# ----------------------------------------------------------------------------- the end-to-end benchmark
def test_end_to_end_benchmark_times_the_state_write_apart_from_training(tmp_path, capsys):
    assert benchmark.main(["--shape", "tiny", "--first-shape", "8", "--epochs", "2", "--device", "cpu",
                           "--end-to-end", "--output", str(tmp_path)]) == 0
    (saved,) = tmp_path.iterdir()
    report = json.loads(saved.read_text())
    assert set(report["end_to_end"]) == {"fast"} and set(report["end_to_end"]["fast"]) == {"discomkd", "mono", "teacher"}
    for method, result in report["end_to_end"]["fast"].items():
        assert len(result["epochs"]) == 2
        for epoch in result["epochs"]:
            assert epoch["train"] > 0 and epoch["eval"] > 0 and epoch["write"] > 0 and epoch["background_write"] > 0
            assert epoch["whole"] == pytest.approx(epoch["train"] + epoch["eval"] + epoch["write"])
            assert 0 <= epoch["write_wait"] <= epoch["write"]
        assert result["epochs"][0]["state"] and not result["epochs"][1]["state"], "no state after the last epoch"
        assert result["state_bytes"] > 0 and 0 < result["state_write_share_of_epoch"] < 1
    assert "fast discomkd: whole" in capsys.readouterr().out
