"""One run identity on every path that resumes, one writer per output folder, and --overwrite that
destroys nothing before the new outputs are complete (issue 21: cases 1, 2, 6, T6; --resume --quiet)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple

import numpy as np
import pytest
from toy import PREFIXES, ROOT, TOY_SETTINGS, folder_snapshot, read_results, refused, toy_options, write_toy_folder

from discomkd.comparison import jobs as comparison_jobs
from discomkd.comparison import runner as comparison
from discomkd.comparison.jobs import DataSource, Job, run_job
from discomkd.data.folder import array_path, load_data_folder
from discomkd.runs import outputs as run_files
from discomkd.runs.ownership import LOCK_FILE, SetAside, holder, owning
from discomkd.training.config import Config
from discomkd.training.identity import resume_problem
from discomkd.training.run import run
from discomkd.utils.errors import Interrupted

Usage = namedtuple("Usage", "total used free")
ENCODERS = ("lenet", "auto")  # TOY_SETTINGS' encoders


def interrupted_run(folder: str, output: str, verbose: int = 0, **settings) -> None:
    """A run of the toy folder stopped at its first step, its state.pt saved."""
    with pytest.raises(Interrupted):
        run(Config(**{**TOY_SETTINGS, **settings}, output=output, verbose=verbose), folder, *PREFIXES,
            should_stop=lambda: True)
    assert os.path.exists(os.path.join(output, run_files.STATE_FILE))


# ----------------------------------------------------------------------------- one run identity
def test_resume_problem_names_each_difference(tmp_path):
    folder = write_toy_folder(tmp_path / "a")
    other = shutil.copytree(folder, tmp_path / "b")
    output = str(tmp_path / "run")
    interrupted_run(folder, output)
    saved = run_files.load_state(output)["results"]
    config = Config(**saved["config"])
    assert resume_problem(saved, load_data_folder(folder, *PREFIXES, ENCODERS), config) is None
    assert "trained on" in resume_problem(saved, load_data_folder(other, *PREFIXES, ENCODERS), config)
    changed = Config(**{**saved["config"], "learning_rate": 0.5})
    assert "learning_rate" in resume_problem(saved, load_data_folder(folder, *PREFIXES, ENCODERS), changed)
    # same shapes, labels and split: only the values differ (data regenerated in place)
    values = np.load(array_path(folder, "VEC"))
    np.save(array_path(folder, "VEC"), values[::-1].copy())
    assert "contents of VEC" in resume_problem(saved, load_data_folder(folder, *PREFIXES, ENCODERS), config)


def test_resume_sees_a_change_anywhere_in_the_data(tmp_path):
    """Bytes zeroed in the middle of a modality file between a run and its --resume, through the real command: a
    sample of the file (16 chunks of 64 KiB, what the identity once hashed) would miss them; every byte counts."""
    folder = write_toy_folder(tmp_path / "data", n=2000, shapes=((1, 24, 24), (6,)))
    output = str(tmp_path / "run")
    interrupted_run(folder, output)
    path = array_path(folder, "IMG")
    step = os.path.getsize(path) // 16  # 4.6 MB: the sampled chunks start every `step` bytes
    with open(path, "r+b") as handle:
        handle.seek(step + (1 << 16) + 1000)  # after the second sampled chunk, well before the third
        handle.write(bytes(100_000))
    before = folder_snapshot(tmp_path)
    resumed = subprocess.run([sys.executable, os.path.join(ROOT, "main_DisCoM-KD.py"), "--resume", output],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 2, resumed.stderr
    assert resumed.stderr.startswith(f"error: {output}: cannot be resumed: the contents of IMG changed")
    assert len(resumed.stderr.splitlines()) == 1 and folder_snapshot(tmp_path) == before
    state = run_files.load_state(output)
    assert state["results"]["data_content"]["IMG"].startswith("sha256:")


def test_a_job_never_resumes_the_state_of_another_data_folder(tmp_path):
    """Case 1: same settings, same shapes, labels and split, another data folder (pure noise): a retried
    job must train afresh on its own data, not report the stale state's scores."""
    first = write_toy_folder(tmp_path / "a", separation=3.0)
    second = write_toy_folder(tmp_path / "b", separation=0.0)  # noise: nothing to learn
    config = Config(**TOY_SETTINGS, verbose=0, save_every=1)
    job = Job(0, str(tmp_path / "out"), config, "mono", "VEC", DataSource(second, PREFIXES, ("lenet", "auto"), None))
    stale = comparison_jobs.model_config(job).output
    interrupted_run(first, stale, method="mono", modality="VEC", save_every=1, overwrite=True)
    result = run_job(job, may_resume=True)
    assert result["resumed"] is False
    results = read_results(stale)
    assert results["data"]["directory"] == os.path.abspath(second) and "resumed_at_epoch" not in results
    # its own earlier attempt is resumed
    again = Job(0, str(tmp_path / "out2"), config, "mono", "VEC", DataSource(first, PREFIXES, ("lenet", "auto"), None))
    interrupted_run(first, comparison_jobs.model_config(again).output, method="mono", modality="VEC", save_every=1,
                    overwrite=True)
    assert run_job(again, may_resume=True)["resumed"] is True


def test_resume_takes_quiet(tmp_path, cli_main, capsys):
    folder = write_toy_folder(tmp_path / "data")
    output = str(tmp_path / "run")
    interrupted_run(folder, output, verbose=1)  # the run's own setting: a line per epoch
    capsys.readouterr()
    assert cli_main(["--resume", output, "--quiet"]) == 0
    assert read_results(output)["status"] == "finished"
    assert "epoch 1/" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- one writer per folder
def test_the_lock_is_held_named_and_released(tmp_path):
    folder = str(tmp_path)
    assert holder(folder) is None
    with owning(folder):
        with owning(folder):  # nested, in one process: counted
            assert os.path.exists(os.path.join(folder, LOCK_FILE))
        code = ("import sys; from discomkd.runs.ownership import holder; print(holder(sys.argv[1]))")
        seen = subprocess.run([sys.executable, "-c", code, folder], capture_output=True, text=True, cwd=ROOT).stdout
        assert f"process {os.getpid()}" in seen
    assert holder(folder) is None and not os.path.exists(os.path.join(folder, LOCK_FILE))


def test_a_second_process_on_a_running_folder_is_refused(tmp_path):
    """Case 2: two real processes on one output folder. The second (a run, an --overwrite, a --resume) is
    refused in one line naming the folder and the process holding it; it writes nothing. Once the first
    dies (SIGKILL: no cleanup), the folder is free again."""
    folder = write_toy_folder(tmp_path / "data", n=600)
    output = str(tmp_path / "run")
    command = [sys.executable, os.path.join(ROOT, "main_DisCoM-KD.py"), folder, *PREFIXES, "--output", output,
               "--quiet", "--save-every", "1"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    first = subprocess.Popen([*command, *toy_options(epochs=1000, learning_rate=1e-4)], env=environment,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(output, run_files.STATE_FILE)):  # training, its lock held
            assert first.poll() is None and time.time() < deadline, first.stderr.read() if first.poll() else "slow"
            time.sleep(0.2)
        for extra in ([], ["--overwrite"], ["--resume"]):
            argv = [*command[:2], "--resume", output] if extra == ["--resume"] else [
                *command, *toy_options(epochs=1, learning_rate=1e-2, seed=3), *extra]
            second = subprocess.run(argv, env=environment, capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, second.stderr
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"error: {output}: in use by process {first.pid}"), lines
        # the run can be inspected meanwhile: printed, nothing written into its folder (probes.json once stayed
        # there, silently stale once the run's best epoch moved on)
        inspected = subprocess.run([sys.executable, os.path.join(ROOT, "inspect_run.py"), output, "--device", "cpu"],
                                   env=environment, capture_output=True, text=True, timeout=120)
        assert inspected.returncode == 0, inspected.stderr
        assert f"in use by process {first.pid}" in inspected.stderr and "nothing is written" in inspected.stderr
        assert "probe accuracy on the test rows" in inspected.stdout and "not written" in inspected.stdout
        assert not os.path.exists(os.path.join(output, "probes.json"))
        assert not os.path.exists(os.path.join(output, "figures"))
        assert first.poll() is None, "the first run goes on"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert holder(output) is None
    quick = subprocess.run([*command, *toy_options(epochs=1), "--overwrite"], env=environment, capture_output=True,
                           text=True, timeout=120)
    assert quick.returncode == 0, quick.stderr
    assert read_results(output)["config"]["epochs"] == 1


# ----------------------------------------------------------------------------- --overwrite keeps the old until the new is done
def test_an_interrupted_run_overwrite_keeps_the_earlier_run(tmp_path):
    folder = write_toy_folder(tmp_path / "data")
    output = str(tmp_path / "run")
    run(Config(**TOY_SETTINGS, output=output, verbose=0), folder, *PREFIXES)
    earlier = {name: open(os.path.join(output, name), "rb").read() for name in os.listdir(output)}
    with pytest.raises(Interrupted):
        run(Config(**{**TOY_SETTINGS, "seed": 5}, output=output, overwrite=True, verbose=0), folder, *PREFIXES,
            should_stop=lambda: True)
    kept = os.path.join(output, run_files.PREVIOUS_RUN_FOLDER)
    assert {name: open(os.path.join(kept, name), "rb").read() for name in os.listdir(kept)} == earlier
    # a second interrupted --overwrite: the finished run set aside stays, the unfinished files go
    with pytest.raises(Interrupted):
        run(Config(**{**TOY_SETTINGS, "seed": 6}, output=output, overwrite=True, verbose=0), folder, *PREFIXES,
            should_stop=lambda: True)
    assert {name: open(os.path.join(kept, name), "rb").read() for name in os.listdir(kept)} == earlier
    assert run_files.load_state(output)["results"]["config"]["seed"] == 6
    from discomkd.training.run import resume

    resume(output)  # the new run finishes: the earlier one is gone
    assert not os.path.exists(kept) and read_results(output)["status"] == "finished"


def test_an_interrupted_comparison_overwrite_keeps_the_earlier_comparison(tmp_path):
    """Case 6: Ctrl-C during `compare.py --overwrite` leaves the earlier comparison whole and in place;
    the new runs finished by then are kept beside it."""
    folder = write_toy_folder(tmp_path / "data")
    output = str(tmp_path / "cmp")
    comparison.compare(Config(**TOY_SETTINGS, output=output), folder, *PREFIXES, runs=1, methods="logreg,mono")
    before = folder_snapshot(output)
    new = Config(**{**TOY_SETTINGS, "seed": 10}, output=output, overwrite=True)

    def stop(entry):
        raise KeyboardInterrupt  # Ctrl-C during the first model's training: no run finished

    with pytest.raises(Interrupted, match="back in place"):
        comparison.compare(new, folder, *PREFIXES, runs=1, methods="logreg,mono", on_epoch=stop)
    assert folder_snapshot(output) == before and not os.path.exists(output + ".previous")
    assert sorted(os.listdir(tmp_path)) == ["cmp", "data"]

    with pytest.raises(Interrupted, match="back in place"):  # Ctrl-C once the first of two runs is done
        comparison.compare(new, folder, *PREFIXES, runs=2, methods="logreg", executor=StopAfterFirstRun())
    assert folder_snapshot(output) == before and not os.path.exists(output + ".previous")
    (interrupted,) = [name for name in os.listdir(tmp_path) if name.startswith("cmp.interrupted-")]
    saved = json.load(open(tmp_path / interrupted / comparison.RESULTS_FILE))
    assert saved["status"] == "interrupted" and saved["seeds"] == [10, 11] and len(saved["results"]) == 1


class StopAfterFirstRun(comparison.LocalExecutor):
    """The local executor, interrupted (as by Ctrl-C) once the first run's job is done."""

    def __call__(self, jobs, run_job):
        for job, result in super().__call__(jobs, run_job):
            yield job, result
            raise KeyboardInterrupt


def test_a_killed_overwrite_leaves_the_earlier_folder_and_blocks_the_next(tmp_path, capsys):
    from discomkd.commands import compare

    folder = write_toy_folder(tmp_path / "data")
    output = str(tmp_path / "cmp")
    comparison.compare(Config(**TOY_SETTINGS, output=output), folder, *PREFIXES, runs=1, methods="logreg")
    SetAside(output).start()  # what a killed --overwrite leaves: the earlier folder set aside
    before = folder_snapshot(tmp_path)
    capsys.readouterr()
    status = compare.main([folder, *PREFIXES, "--methods", "logreg", "--output", output, "--overwrite"])
    refused(status, capsys, before, folder_snapshot(tmp_path), output + ".previous", "move it back")


# ----------------------------------------------------------------------------- a full disk
def test_a_full_disk_during_training_is_one_line_and_keeps_the_earlier_files(tmp_path, cli_main, capsys,
                                                                            monkeypatch):
    """T6: torch.save says only "file write failed" on a full disk; the run says what happened, exits 3,
    and the files of the epochs before stay whole."""
    folder = write_toy_folder(tmp_path / "data")
    output = str(tmp_path / "run")
    real_save, calls = run_files.torch.save, []

    def save(payload, path):
        calls.append(path)
        if len(calls) > 2:  # the first epoch's checkpoints are written; then the disk is full
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0: file write failed")
        real_save(payload, path)

    monkeypatch.setattr(run_files.torch, "save", save)
    monkeypatch.setattr(run_files.shutil, "disk_usage", lambda path: Usage(10, 10, 0))
    status = cli_main([folder, *PREFIXES, "--output", output, *toy_options(epochs=3, save_every=1), "--quiet"])
    err = capsys.readouterr().err
    assert status == 3 and "no space left on device" in err and len(err.strip().splitlines()) == 1, err
    assert read_results(output)["history"][0]["epoch"] == 1  # the earlier results.json: whole
    assert not [name for name in os.listdir(output) if name.startswith(".tmp-")]
