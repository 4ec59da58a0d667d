"""compare.py --executor ray and tune.py on a local Ray with 2 CPUs (skipped when Ray is not installed:
pip install -r requirements-ray.txt). About 35-45 s on 2 shared cores, Ray's start included; the end-to-end
tuning run (30 s more) runs with DISCOMKD_RAY_SLOW=1."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import toy
from toy import PREFIXES, TOY_SETTINGS, KillOnce, logged_lines, toy_options, write_toy_folder

ray = pytest.importorskip("ray")

from discomkd.comparison import jobs as comparison_jobs
from discomkd.comparison import ray_executor, tuning, tuning_space
from discomkd.comparison import runner as comparison  # noqa: E402
from discomkd.data.folder import load_data_folder  # noqa: E402
from discomkd.training import loop as training
from discomkd.training.config import Config  # noqa: E402

slow = pytest.mark.skipif(os.environ.get("DISCOMKD_RAY_SLOW") != "1", reason="DISCOMKD_RAY_SLOW=1 runs it (30 s)")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """A local Ray of 2 CPUs; workers import the project as installed, and toy.py, shipped to them as a
    module (the kill hook). One torch thread here, as each 1-CPU Ray task has (Ray sets OMP_NUM_THREADS),
    so both paths compute alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    if ray.is_initialized():  # an earlier module's command started its own
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"py_modules": [toy], "env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}})
    yield
    ray.shutdown()
    torch.set_num_threads(threads)


def without_times(value):
    """A comparison's results without what differs between executors: times, paths, the executor's name."""
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items()
                if k not in ("seconds", "part_seconds", "total_seconds", "output", "outputs", "folder", "executor",
                             "table", "config")}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def compare_both(tmp_path, folder, settings, methods, runs, executor, lines, on_epoch=None):
    """The comparison by the local executor, then by `executor` (every model's training calling `on_epoch`)
    into the same output folder (paths, such as the per-run splits', are then alike): (local results, its
    table cells, executor results, its table cells)."""
    output = str(tmp_path / "out")
    local = comparison.compare(Config(output=output, **settings), folder, *PREFIXES, runs=runs, methods=methods)
    local_cells = table_cells(output)
    os.rename(output, str(tmp_path / "local"))
    with logged_lines() as logged:
        remote = comparison.compare(Config(output=output, **settings), folder, *PREFIXES, runs=runs, methods=methods,
                                    executor=executor, on_epoch=on_epoch)
    lines.extend(logged)
    return local, local_cells, remote, table_cells(output)


def table_cells(output):
    """comparison.md's rows without the training-time column."""
    lines = open(os.path.join(output, comparison.TABLE_FILE)).read().split("\n\n")[0].splitlines()  # the main table
    return [line.split("|")[1:-2] for line in lines if line.startswith("| ")]


def test_the_ray_executor_gives_the_local_table(tmp_path):
    """Two runs with per-run splits (tasks read them from the run folders), a teacher dependency and a
    classical baseline: the same comparison.json (times aside) and the same table."""
    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    for split in ("train", "valid", "test"):
        os.remove(os.path.join(folder, f"{split}_idx.npy"))
    lines = []
    local, local_cells, remote, cells = compare_both(tmp_path, folder, TOY_SETTINGS, "mono,kd,discomkd,logreg", 2,
                                                     ray_executor.RayExecutor(gpus_per_task=0), lines)
    assert remote["status"] == "finished" and remote["executor"].startswith("ray (local)")
    assert without_times(remote) == without_times(local)
    assert cells == local_cells
    # 2 runs x (mono x2, teacher, kd x2, discomkd, logreg) tasks, a progress line as each finishes
    assert any(line.startswith("ray: 14 tasks submitted") for line in lines)
    assert sum("[14/14]" in line for line in lines) >= 1
    saved = json.load(open(tmp_path / "out" / comparison.RESULTS_FILE))
    assert without_times(saved["results"]) == without_times(local["results"])


def test_the_ray_executor_takes_relative_paths(tmp_path, monkeypatch):
    """Relative DIR and --output, typed in another folder than the one Ray's workers started in."""
    write_toy_folder(tmp_path / "data", separation=3.0)
    monkeypatch.chdir(tmp_path)
    found = comparison.compare(Config(output="out", **dict(TOY_SETTINGS, epochs=1)), "data", *PREFIXES, runs=1,
                            methods="discomkd", executor=ray_executor.RayExecutor(gpus_per_task=0))
    assert found["status"] == "finished"
    assert os.path.exists(tmp_path / "out" / "run_0" / "discomkd" / "results.json")


def test_a_killed_worker_is_retried_and_resumes_from_its_state(tmp_path):
    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    config = dict(TOY_SETTINGS, epochs=3, save_every=1)  # a state after every epoch: the retry resumes at epoch 2
    marker = str(tmp_path / "killed")
    lines = []
    executor = ray_executor.RayExecutor(gpus_per_task=0, max_retries=2)
    local, local_cells, remote, cells = compare_both(tmp_path, folder, config, "discomkd", 1, executor, lines,
                                                     on_epoch=KillOnce(marker))
    assert os.path.exists(marker)  # the first attempt died after its first epoch
    run = json.load(open(tmp_path / "out" / "run_0" / "discomkd" / "results.json"))
    assert run["resumed_at_epoch"] == [2] and run["status"] == "finished"
    assert any("discomkd (resumed)" in line for line in lines)
    assert without_times(remote) == without_times(local)
    assert cells == local_cells


def test_an_interrupted_ray_comparison_keeps_its_finished_runs(tmp_path):
    """Ctrl-C in the driver (here: raised while the second of three runs is announced) cancels what still
    runs and leaves the runs finished so far in comparison.json/.md."""
    folder = write_toy_folder(tmp_path / "data")
    output = str(tmp_path / "out")

    def log(line):
        if line.startswith("  [2/3]"):
            raise KeyboardInterrupt

    with pytest.raises(training.Interrupted, match="1/3 run"), logged_lines(log):
        comparison.compare(Config(output=output, device="cpu"), folder, *PREFIXES, runs=3, methods="logreg",
                           resplit=True, executor=ray_executor.RayExecutor(gpus_per_task=0))
    saved = json.load(open(os.path.join(output, comparison.RESULTS_FILE)))
    assert saved["status"] == "interrupted" and len(saved["results"]) == 1
    assert "a single run" in open(os.path.join(output, comparison.TABLE_FILE)).read()


def test_a_task_that_cannot_see_the_output_folder_fails_with_a_clear_message(tmp_path):
    source = comparison_jobs.DataSource(str(tmp_path), PREFIXES, ("auto", "auto"), None)
    job = comparison_jobs.Job(0, str(tmp_path / "out" / "run_0"), Config(), "discomkd", None, source)
    os.makedirs(tmp_path / "out")
    with pytest.raises(ray_executor.SharedStorageError, match="storage every node"):
        ray_executor.run_task(comparison_jobs.run_job, job, str(tmp_path / "out"), "token")


def test_a_trial_never_evaluates_the_test_split(tmp_path, monkeypatch):
    """A search trial in this process with evaluate wrapped: only validation is scored, its data holds
    no test row, and the reported metric is the mean of each classifier's best validation wF1 so far."""
    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    scored, reports = [], []
    evaluate = training.evaluate

    def recording(setup, data, splits=("valid", "test"), classifiers=None):
        assert "test" not in data.modalities[0].splits
        scored.extend(splits)
        return evaluate(setup, data, splits, classifiers)

    monkeypatch.setattr(training, "evaluate", recording)
    job = tuning.SearchJob(Config(output=str(tmp_path / "search"), **dict(TOY_SETTINGS, epochs=3)),
                           comparison_jobs.DataSource(folder, PREFIXES, ("lenet", "auto"), None))
    results = tuning.run_trial({"learning_rate": 2e-3, "weight_adv": 0.3, "epochs": 3}, job,
                               str(tmp_path / "trial"), reports.append)
    assert scored and set(scored) == {"valid"}
    assert results["config"]["learning_rate"] == 2e-3 and results["config"]["weight_adv"] == 0.3
    assert all(final["test"] is None for final in results["final"].values())
    best = {p: max(h[p]["valid"]["weighted_f1"] for h in results["history"]) for p in PREFIXES}
    assert [r["epoch"] for r in reports] == [1, 2, 3]
    assert reports[-1][tuning.METRIC] == pytest.approx(sum(best.values()) / 2)
    assert all(a[tuning.METRIC] <= b[tuning.METRIC] for a, b in zip(reports, reports[1:]))


@slow
def test_tune_selects_on_validation_and_reports_both_settings(tmp_path, capsys, monkeypatch):
    """With relative paths, as users type them: trials run in Ray Tune's own working folders."""
    from discomkd.commands import tune

    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    output = tmp_path / "tuning"
    monkeypatch.chdir(tmp_path)
    argv = ["data", *PREFIXES, "--trials", "3", "--runs", "1", *toy_options(), "--grace-epochs", "1",
            "--gpus-per-task", "0", "--output", "tuning"]
    assert tune.main(argv) == 0
    out = capsys.readouterr().out
    found = json.load(open(output / "tuning.json"))
    scored = [t for t in found["trials"] if t[tuning.METRIC] is not None]
    assert len(found["trials"]) == 3 and scored
    assert found["chosen_" + tuning.METRIC] == max(t[tuning.METRIC] for t in scored)
    data = load_data_folder(folder, *PREFIXES)
    first = tuning.first_trial(Config(**dict(TOY_SETTINGS, epochs=2)), data)
    assert found["trials"][0]["settings"] == first  # the starting settings, auto augmentations resolved
    assert (first["augment_first"], first["augment_second"]) == ("flip+rot90", "none")
    chosen = json.load(open(output / "settings.json"))
    assert chosen == found["chosen"] and "--settings" in out
    for trial in os.listdir(output / "trials"):  # no trial scored a test row
        results = json.load(open(output / "trials" / trial / "results.json"))
        assert all(f["test"] is None for f in results["final"].values())
        assert results["data"]["modalities"][0]["rows"].keys() == {"train", "valid"}
    table = open(output / "tuning.md").read()
    # lr 1e-3: not the paper's; the tuned row also names the terms its settings switch off, if any
    assert "discomkd (starting settings)" in table and "discomkd (tuned on validation" in table
    off = tuning_space.terms_switched_off("discomkd", Config(**{k: v for k, v in chosen.items()}))
    assert ("L_" + off[0] in table) if off else "discomkd (tuned on validation)" in table
    assert "trial 1/3 (the starting settings)" in out  # numbered as drawn, not as they end
    tuned = json.load(open(output / "tuned" / comparison.RESULTS_FILE))
    assert tuned["seeds"] == [1] and tuned["method_settings"] == {"discomkd": chosen}
    assert tuned["settings_from"] == {"discomkd": "tuned (3 trials)"}
    trained = json.load(open(output / "tuned" / "run_1" / "discomkd" / "results.json"))["config"]
    assert all(trained[k] == v for k, v in chosen.items())
    assert tuned["results"][0]["data"]["modalities"][0]["rows"]["test"] == len(data.modalities[0].splits["test"])


def test_overwrite_never_resumes_a_stale_state_of_another_data_folder(tmp_path):
    """Issue 21, case 1: an interrupted Ray comparison left a state.pt; the same command on another data
    folder with --overwrite trains afresh on that folder (pure noise here), never '(resumed)'."""
    learnable = write_toy_folder(tmp_path / "a", separation=3.0)
    noise = write_toy_folder(tmp_path / "b", separation=0.0)
    output = str(tmp_path / "out")
    settings = dict(TOY_SETTINGS, epochs=2, save_every=1)
    stale = os.path.join(output, "run_0", "discomkd")
    with pytest.raises(training.Interrupted):  # what an interrupted first comparison leaves in run_0
        training.fit(Config(**settings, output=stale, verbose=0), load_data_folder(learnable, *PREFIXES,
                                                                                  ("lenet", "auto")),
                     stale, should_stop=lambda: True)
    with logged_lines() as lines:
        found = comparison.compare(Config(output=output, overwrite=True, **settings), noise, *PREFIXES, runs=1,
                                   methods="discomkd", executor=ray_executor.RayExecutor(gpus_per_task=0))
    assert not any("(resumed)" in line for line in lines)
    results = json.load(open(os.path.join(stale, "results.json")))
    assert results["data"]["directory"] == os.path.abspath(noise) and "resumed_at_epoch" not in results
    assert found["status"] == "finished" and not os.path.exists(output + ".previous")


def test_stopped_trials_are_marked_and_keep_no_state(tmp_path):
    """A trial ASHA stopped ends with results.json "running": the search marks it "stopped"."""
    trial = tmp_path / "trials" / "t1"
    os.makedirs(trial)
    json.dump({"status": "running", "history": [{"epoch": 1}]}, open(trial / "results.json", "w"))
    open(trial / "state.pt", "w").close()
    nested = tmp_path / "trials" / "t2" / "mono_VEC"  # a per-modality trial's second model
    os.makedirs(nested)
    json.dump({"status": "running", "history": [{"epoch": 1}, {"epoch": 2}]}, open(nested / "results.json", "w"))
    tuning._mark_stopped_trials(str(tmp_path / "trials"))
    results = json.load(open(trial / "results.json"))
    assert results["status"] == "stopped" and "after epoch 1" in results["stopped_by"]
    assert not os.path.exists(trial / "state.pt")
    assert json.load(open(nested / "results.json"))["status"] == "stopped"


@slow
def test_tune_final_runs_share_the_search_split(tmp_path):
    """Issue 21, case 11: without split files the search draws one split, and the final runs train and
    test on it (their test rows are rows no trial read)."""
    from discomkd.commands import tune

    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    for split in ("train", "valid", "test"):
        os.remove(os.path.join(folder, f"{split}_idx.npy"))
    output = tmp_path / "tuning"
    argv = [folder, *PREFIXES, "--trials", "2", "--runs", "2", *toy_options(epochs=1), "--gpus-per-task", "0",
            "--output", str(output), "--executor", "local"]
    assert tune.main(argv) == 0
    search_split = str(output / "search_split")
    for label in ("starting", "tuned"):
        final = json.load(open(output / label / comparison.RESULTS_FILE))
        assert all(run["data"]["splits_from"] == search_split for run in final["results"])
    test_rows = set(np.load(os.path.join(search_split, "test_idx.npy")).tolist())
    searched = set(np.load(os.path.join(search_split, "train_idx.npy")).tolist()) | set(
        np.load(os.path.join(search_split, "valid_idx.npy")).tolist())
    assert test_rows and not test_rows & searched


@slow
def test_every_trial_failing_is_one_line_without_ray_tracebacks(tmp_path, capfd):
    """T7: the trials cannot read their data (the folder is gone once the search starts): one
    TrainingError naming the first trial's error and where the logs are; no Ray traceback printed."""
    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    data = load_data_folder(folder, *PREFIXES, ("lenet", "auto"))
    gone = comparison_jobs.DataSource(str(tmp_path / "gone"), PREFIXES, ("lenet", "auto"), None)
    job = tuning.SearchJob(Config(output=str(tmp_path / "search"), **TOY_SETTINGS), gone)
    capfd.readouterr()
    with pytest.raises(training.TrainingError, match="every trial failed.*ray_tune"):
        tuning.search(job, tuning.validation_only(data), 2, 1, 1.0, 0.0)
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("method", ["mono", "kd"])
def test_a_trial_of_a_per_modality_method_trains_both_and_reports_their_mean(tmp_path, method):
    """tune.py --method mono|kd: a trial trains one model per modality (kd: from the search's teacher,
    trained once), reports after each epoch of the last one the mean of both classifiers' best validation
    wF1 so far (the first's final best included), and reads no test row."""
    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    source = comparison_jobs.DataSource(folder, PREFIXES, ("lenet", "auto"), None)
    config = Config(output=str(tmp_path / "search"), **dict(TOY_SETTINGS, epochs=2), method=method)
    job = tuning.SearchJob(config, source)
    data = tuning.search_data(job)
    job = tuning.train_search_teacher(job, data)
    assert (job.teacher is not None) == (method == "kd")
    settings = {"learning_rate": 2e-3, **({"kd_temperature": 2.0} if method == "kd" else {})}
    reports = []
    tuning.run_trial(settings, job, str(tmp_path / "trial"), reports.append)
    first, last = (json.load(open(tmp_path / "trial" / f"{method}_{p}" / "results.json")) for p in PREFIXES)
    assert [r["epoch"] for r in reports] == [1, 2]
    best_first = first["final"]["IMG"]["valid"]["weighted_f1"]
    best_last = max(h["VEC"]["valid"]["weighted_f1"] for h in last["history"])
    assert reports[-1][tuning.METRIC] == pytest.approx((best_first + best_last) / 2)
    for results in (first, last):
        assert results["config"]["learning_rate"] == 2e-3 and results["data"]["modalities"][0]["rows"].keys() == {
            "train", "valid"}
        assert results["config"]["teacher"] == job.teacher
    if method == "kd":
        assert last["config"]["kd_temperature"] == 2.0


def test_each_method_searches_the_common_settings_and_its_own():
    from discomkd.comparison.tuning_space import COMMON, TUNABLE, searched

    assert searched("mono") == COMMON and searched("teacher") == COMMON
    assert set(searched("kd")) - set(COMMON) == {"kd_temperature", "kd_weight"}
    assert set(searched("dkd")) - set(COMMON) == {"dkd_alpha", "dkd_beta", "dkd_temperature"}
    assert set(searched("dml")) - set(COMMON) == {"dml_temperature", "dml_weight"}
    assert {"weight_adv", "grl_coefficient"} <= set(searched("discomkd")) and "align_weight" not in searched("discomkd")
    assert "align_weight" in searched("discomkd-mmd")
    for method in TUNABLE:  # the paper's settings, the first trial, lie in every method's space
        assert set(tuning.starting_point(Config(method=method))) == set(searched(method))


@slow
def test_tune_a_baseline_end_to_end(tmp_path, capsys):
    """tune.py --method kd: the search teacher, trials of both students, the final runs with kd's chosen
    settings (the teacher with --teacher-settings, as the search's), and the reuse line for compare.py
    --settings-for."""
    from discomkd.commands import tune

    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    output = tmp_path / "tuning_kd"
    teacher_file = tmp_path / "teacher.json"  # as tune.py --method teacher writes it
    teacher_file.write_text(json.dumps({"learning_rate": 0.003, "weight_decay": 1e-4}))
    assert tune.main([folder, *PREFIXES, "--method", "kd", "--trials", "2", "--runs", "1", *toy_options(epochs=2),
                      "--grace-epochs", "1", "--gpus-per-task", "0", "--output", str(output),
                      "--executor", "local", "--teacher-settings", str(teacher_file)]) == 0
    assert f"--settings-for kd={output / 'settings.json'}" in capsys.readouterr().out
    found = json.load(open(output / "tuning.json"))
    assert found["method"] == "kd" and "kd_temperature" in found["chosen"] and len(found["trials"]) == 2
    assert os.path.exists(output / "search_teacher" / "best_fused.pt")
    tuned = json.load(open(output / "tuned" / comparison.RESULTS_FILE))
    assert tuned["methods"] == ["kd"] and tuned["settings_from"] == {"kd": "tuned (2 trials)"}
    assert found["teacher_settings"] == {"learning_rate": 0.003, "weight_decay": 1e-4}
    for teacher in (output / "search_teacher", output / "tuned" / "run_1" / "teacher",
                    output / "starting" / "run_1" / "teacher"):  # the search's teacher is the final runs'
        trained = json.load(open(teacher / "results.json"))["config"]
        assert (trained["learning_rate"], trained["weight_decay"]) == (0.003, 1e-4)
    student = json.load(open(output / "tuned" / "run_1" / "kd_IMG" / "results.json"))["config"]
    assert student["learning_rate"] == found["chosen"]["learning_rate"]


@slow
def test_runs_0_is_the_search_alone(tmp_path, capsys):
    """--runs 0: settings.json and tuning.json, no final runs; the reuse line names --settings-for."""
    from discomkd.commands import tune

    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    output = tmp_path / "tuning_mono"
    assert tune.main([folder, *PREFIXES, "--method", "mono", "--trials", "2", "--runs", "0",
                      *toy_options(epochs=1), "--gpus-per-task", "0", "--output", str(output)]) == 0
    assert f"--settings-for mono={output / 'settings.json'}" in capsys.readouterr().out
    found = json.load(open(output / "tuning.json"))
    assert found["method"] == "mono" and len(found["trials"]) == 2 and "runs" not in found
    assert json.load(open(output / "settings.json")) == found["chosen"]
    assert not any(os.path.exists(output / name) for name in ("starting", "tuned", "tuning.md"))


@slow
@pytest.mark.parametrize("command", ["compare.py", "tune.py"])
def test_sigterm_stops_a_ray_command_as_ctrl_c_does(tmp_path, command):
    """SIGTERM (what `timeout` and batch schedulers send) to compare.py --executor ray or tune.py once ended in
    Ray's own handler (a stack trace, exit 134), the earlier contents left in OUT.previous: now exit 130, one
    line, the earlier contents back in place, the new part set beside them."""
    folder = write_toy_folder(tmp_path / "data")
    output = tmp_path / "out"
    output.mkdir()
    (output / "earlier.txt").write_text("an earlier comparison")
    options = ["--methods", "mono", "--executor", "ray"] if command == "compare.py" else ["--trials", "2", "--runs", "0"]
    argv = [sys.executable, os.path.join(toy.ROOT, command), folder, *PREFIXES, *toy_options(epochs=100000),
            *options, "--output", str(output), "--overwrite"]
    process = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not glob.glob(str(tmp_path / "out" / "**" / "results.json"), recursive=True):  # a model trains
            assert process.poll() is None and time.time() < deadline, process.stderr.read()
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err
    # the command's own lines: Ray's start-up lines and the lines its workers forward while they are killed aside
    lines = [line for line in err.splitlines() if "INFO" not in line and "WARNING" not in line and " pid=" not in line]
    assert len(lines) == 1 and "interrupted" in lines[0] and "back in place" in lines[0], err
    assert (output / "earlier.txt").read_text() == "an earlier comparison"
    assert not os.path.exists(str(output) + ".previous")


def test_a_local_ray_keeps_its_token_out_of_the_home_folder(tmp_path):
    """Ray 2.5x turns on token authentication for a local cluster and saves a token in ~/.ray/auth_token, with a
    warning: the command's local Ray keeps a fresh token in its own environment instead (a real process, a HOME
    of its own): nothing written into the home folder, no warning, the comparison done."""
    folder = write_toy_folder(tmp_path / "data")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    process = subprocess.run([sys.executable, "compare.py", folder, *PREFIXES, "--methods", "logreg", "--executor",
                              "ray", "--output", str(tmp_path / "out")], capture_output=True, text=True,
                             cwd=toy.ROOT, env={**env, "HOME": str(home)}, timeout=300)
    assert process.returncode == 0, process.stderr
    assert not (home / ".ray" / "auth_token").exists() and "Token authentication" not in process.stderr
