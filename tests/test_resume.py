"""Interrupt and resume: a resumed run is the uninterrupted run, bit for bit; SIGINT through the CLI."""
import dataclasses
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from toy import PREFIXES, ROOT, TOY_SETTINGS, folder_snapshot, read_results, refused, toy_options, write_toy_folder

from discomkd.models import methods
from discomkd.runs import outputs
from discomkd.runs.outputs import STATE_FILE
from discomkd.training.config import Config
from discomkd.training.run import resume, run
from discomkd.utils.errors import Interrupted

ROWS = 72  # 51 training rows: batches of 16, 16, 16, 3 -> 4 steps per epoch
STEPS_PER_EPOCH = 4
EPOCHS = 4
# Image augmentation and the MLP's dropout stay on: both draw random numbers, which resuming must restore.
CONFIG = Config(**{**TOY_SETTINGS, "epochs": EPOCHS, "learning_rate": 2e-3}, verbose=0)


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    return write_toy_folder(tmp_path_factory.mktemp("resume") / "data", n=ROWS)


@pytest.fixture(scope="module")
def reference(data_folder, tmp_path_factory):
    """The uninterrupted run every resumed run must reproduce."""
    output = str(tmp_path_factory.mktemp("reference") / "run")
    run(dataclasses.replace(CONFIG, output=output), data_folder, *PREFIXES)
    return output


@pytest.fixture
def step_counter(monkeypatch):
    """Counts training steps (one loss evaluation each; evaluation computes no loss)."""
    count = [0]
    losses = methods.discomkd_losses

    def counted(*args, **kwargs):
        count[0] += 1
        return losses(*args, **kwargs)

    monkeypatch.setattr(methods, "discomkd_losses", counted)
    return count


def stop_points(seed: int, kind: str, stops: int) -> list[int]:
    """`stops` global step numbers drawn by random.Random(seed), each strictly inside an epoch
    (kind "inside") or at the end of one (kind "boundary"); the run's last step is excluded, since
    a stop there has nothing left to resume."""
    total = EPOCHS * STEPS_PER_EPOCH
    boundary = list(range(STEPS_PER_EPOCH, total, STEPS_PER_EPOCH))
    candidates = boundary if kind == "boundary" else [s for s in range(1, total) if s not in boundary]
    return sorted(random.Random(seed).sample(candidates, stops))


def assert_same_run(reference: str, resumed: str) -> None:
    expected, actual = read_results(reference), read_results(resumed)
    assert actual["status"] == "finished"
    assert len(actual["history"]) == EPOCHS
    for before, after in zip(expected["history"], actual["history"]):
        assert before["epoch"] == after["epoch"]
        assert before["loss"] == after["loss"], f"epoch {after['epoch']}: losses differ"
        for prefix in PREFIXES:
            assert before[prefix] == after[prefix], f"epoch {after['epoch']}: {prefix} metrics differ"
        assert before["improved"] == after["improved"]
    assert expected["final"] == actual["final"]
    for prefix in PREFIXES:
        saved = [torch.load(os.path.join(folder, f"best_{prefix}.pt"), weights_only=True)
                 for folder in (reference, resumed)]
        assert saved[0].keys() == saved[1].keys()
        assert {k: v for k, v in saved[0].items() if k not in ("state_dict", "config")} == \
               {k: v for k, v in saved[1].items() if k not in ("state_dict", "config")}
        assert saved[0]["state_dict"].keys() == saved[1]["state_dict"].keys()
        for name, tensor in saved[0]["state_dict"].items():
            assert torch.equal(tensor, saved[1]["state_dict"][name]), f"best_{prefix}.pt: {name} differs"
        name = f"test_predictions_{prefix}.npy"
        with open(os.path.join(reference, name), "rb") as a, open(os.path.join(resumed, name), "rb") as b:
            assert a.read() == b.read(), name
    assert not os.path.exists(os.path.join(resumed, STATE_FILE)), "a finished run keeps no state.pt"


@pytest.mark.parametrize("seed, kind, stops", [(0, "inside", 1), (1, "inside", 1), (2, "boundary", 1),
                                               (3, "inside", 2)])
def test_interrupted_and_resumed_run_equals_the_uninterrupted_run(data_folder, reference, tmp_path, step_counter,
                                                                   seed, kind, stops):
    output = str(tmp_path / "run")
    points = stop_points(seed, kind, stops)
    with pytest.raises(Interrupted) as stopped:
        run(dataclasses.replace(CONFIG, output=output), data_folder, *PREFIXES,
            should_stop=lambda: step_counter[0] >= points[0])
    for i, point in enumerate(points):
        assert step_counter[0] == point, "the run must stop right after the step that asked"
        epoch, step = divmod(point, STEPS_PER_EPOCH)
        state = outputs.load_state(output)
        results = read_results(output)
        assert results["status"] == "interrupted"
        assert len(results["history"]) == epoch, "every finished epoch is recorded"
        if step:  # inside epoch + 1: the state holds that epoch's progress
            assert f"at epoch {epoch + 1}, step {step}/{STEPS_PER_EPOCH}" in str(stopped.value)
            assert (state["epoch"], state["progress"]["step"]) == (epoch + 1, step)
        else:  # at the end of an epoch: the state starts the next one
            assert f"after epoch {epoch}" in str(stopped.value)
            assert (state["epoch"], state["progress"]) == (epoch + 1, None)
        if i + 1 < len(points):
            with pytest.raises(Interrupted) as stopped:
                resume(output, should_stop=lambda: step_counter[0] >= points[i + 1])
    finished = resume(output)
    assert step_counter[0] == EPOCHS * STEPS_PER_EPOCH, "every step ran exactly once over all the runs"
    assert finished["resumed_at_epoch"] == [p // STEPS_PER_EPOCH + 1 for p in points]
    assert_same_run(reference, output)


def test_resume_works_from_another_working_folder(tmp_path, monkeypatch):
    write_toy_folder(tmp_path / "project" / "data", PREFIXES, n=30)
    monkeypatch.chdir(tmp_path / "project")
    config = Config(**{**TOY_SETTINGS, "batch_size": 8}, verbose=0, output="run")
    with pytest.raises(Interrupted):
        run(config, "data", *PREFIXES, should_stop=lambda: True)  # relative paths, as a user types them
    assert read_results("run")["data"]["directory"] == str(tmp_path / "project" / "data")
    monkeypatch.chdir(tmp_path)
    results = resume(os.path.join("project", "run"))
    assert results["status"] == "finished" and len(results["history"]) == 2



def test_sigint_through_the_cli_saves_state_and_resume_finishes(tmp_path, cli_main, capsys):
    folder = write_toy_folder(tmp_path / "data", n=60)
    output = str(tmp_path / "run")
    epochs = 8  # several epochs left when the signal arrives after the first one
    process = subprocess.Popen([sys.executable, "main_DisCoM-KD.py", folder, *PREFIXES,
                                *toy_options(epochs=epochs, learning_rate=2e-3), "--output", output],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and process.poll() is None:
            try:
                if len(read_results(output)["history"]) >= 1:
                    break
            except (FileNotFoundError, ValueError):  # not written yet (the write itself is atomic)
                pass
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted (SIGINT)" in stderr and f"--resume {output}" in stderr
    results = read_results(output)
    done = len(results["history"])
    assert results["status"] == "interrupted" and 1 <= done < epochs
    assert os.path.isfile(os.path.join(output, STATE_FILE))
    assert "modality" in stdout, "the summary so far is printed"

    assert cli_main(["--resume", output]) == 0
    out, err = capsys.readouterr()
    assert f"Resuming {output} at epoch" in out
    results = read_results(output)
    assert results["status"] == "finished"
    assert [entry["epoch"] for entry in results["history"]] == list(range(1, epochs + 1))
    assert not os.path.exists(os.path.join(output, STATE_FILE))

    # a finished run keeps no state: resuming it again is refused with one line
    before = folder_snapshot(output)
    assert cli_main(["--resume", output]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and STATE_FILE in lines[0], err
    assert out == "" and folder_snapshot(output) == before


@pytest.mark.parametrize("change", ["label values", "labels permuted", "test split"])
def test_resume_refuses_a_changed_data_folder(tmp_path, step_counter, cli_main, capsys, change):
    folder = write_toy_folder(tmp_path / "data", n=ROWS)
    output = str(tmp_path / "run")
    with pytest.raises(Interrupted):
        run(dataclasses.replace(CONFIG, output=output), folder, *PREFIXES,
            should_stop=lambda: step_counter[0] >= 2)
    labels_path = os.path.join(folder, "labels.npy")
    labels = np.load(labels_path)
    if change == "label values":
        np.save(labels_path, labels + 100)
    elif change == "labels permuted":  # same classes and counts, other rows: only the contents tell
        train = np.load(os.path.join(folder, "train_idx.npy"))
        first = train[labels[train] != labels[train[0]]][0]
        labels[[train[0], first]] = labels[[first, train[0]]]
        np.save(labels_path, labels)
    else:
        test = np.load(os.path.join(folder, "test_idx.npy"))
        np.save(os.path.join(folder, "test_idx.npy"), test[:-1])
    before = folder_snapshot(tmp_path)
    assert cli_main(["--resume", output]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and folder in lines[0], err
    assert "changed" in lines[0] and "Traceback" not in err
    assert folder_snapshot(tmp_path) == before, "a refused resume writes nothing"


# ----------------------------------------------------------------------------- --resume refused
@pytest.mark.parametrize("others", [["--epochs", "3"], ["--device", "cpu"], ["--epochs", "-5"], ["--no-fast"],
                                    ["--overwrite"], ["{data}", "IMG", "VEC"], ["--seed", "0"],
                                    ["--quiet", "--epochs", "3"]])  # --quiet and --verbose alone may come with it
def test_resume_refuses_any_other_argument(cli_main, data_folder, capsys, others):
    others = [o.replace("{data}", data_folder) for o in others]
    before = folder_snapshot(data_folder)
    status = cli_main(["--resume", data_folder, *others])
    line = refused(status, capsys, before, folder_snapshot(data_folder), "--resume")
    flags = [o for o in others if o.startswith("--")] or ["DIR", "FIRST_PREFIX", "SECOND_PREFIX"]
    assert all(flag in line for flag in flags), line


def test_resume_says_why_a_folder_cannot_be_resumed(cli_main, toy_run, tmp_path, capsys):
    _, output = toy_run
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    for folder, expected in ((tmp_path / "nowhere", "run folder not found"), (tmp_path / "file", "not a folder"),
                             (tmp_path / "empty", "holds no resumable state"), (output, "holds a finished run")):
        before = folder_snapshot(tmp_path)
        line = refused(cli_main(["--resume", str(folder)]), capsys, before, folder_snapshot(tmp_path), expected)
        assert "finished" not in line or expected == "holds a finished run", line


def test_a_setting_added_since_a_run_was_saved_takes_its_default():
    """A results.json written before a setting existed lacks it: the run is the same as one with the setting at its
    default (which computes what the code of then did), and differs from one with another value."""
    from discomkd.training.identity import computed_settings
    recorded = dataclasses.asdict(Config())
    del recorded["kd_weight"]
    assert computed_settings(recorded) == computed_settings(Config())
    assert computed_settings(recorded) != computed_settings(Config(kd_weight=2.0))
