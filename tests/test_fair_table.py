"""compare.py --tune TRIALS, the fair table in one command (discomkd.comparison.fair): every method searched on the
same budget, the teacher first, per-modality models each on their own modality, then compared on the searches' split;
resumable. Needs Ray (skipped without it); the end-to-end commands run as real processes."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest
from toy import PREFIXES, ROOT, TOY_SETTINGS, toy_options, write_toy_folder

ray = pytest.importorskip("ray")

from discomkd.comparison import fair, tuning, tuning_space  # noqa: E402
from discomkd.comparison.jobs import DataSource  # noqa: E402
from discomkd.training.config import Config  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def ray_stopped_after():
    """The in-process commands below start a local Ray of their own: stopped after this module."""
    yield
    if ray.is_initialized():
        ray.shutdown()


SLOW = pytest.mark.skipif(os.environ.get("DISCOMKD_RAY_SLOW") != "1", reason="DISCOMKD_RAY_SLOW=1 runs it (40 s)")


def test_the_plan_searches_the_teacher_first_and_each_modality_of_a_per_modality_method():
    plan = [s.name for s in fair.plan_searches(("mono", "kd", "dml", "discomkd", "svm"), PREFIXES)]
    assert plan == ["teacher", "mono_IMG", "mono_VEC", "kd_IMG", "kd_VEC", "dml", "discomkd"]
    assert [s.name for s in fair.plan_searches(("discomkd", "mono"), PREFIXES)] == ["discomkd", "mono_IMG", "mono_VEC"]
    said = fair.settings_from(("mono", "dkd", "discomkd", "svm"), 6)
    assert said == {"mono": "tuned per modality (6 trials each)",
                    "dkd": "tuned per modality (6 trials each), from the tuned teacher", "discomkd": "tuned (6 trials)"}


def test_a_search_over_one_modality_scores_that_modality_alone(tmp_path):
    """A per-modality trial with `modality` trains that modality's model only and reports its own best validation
    wF1 (not a mean with the other modality); its space holds that modality's augmentation only."""
    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    config = Config(output=str(tmp_path / "search"), **TOY_SETTINGS, method="mono")
    job = tuning.SearchJob(config, DataSource(folder, PREFIXES, ("lenet", "auto"), None), modality="VEC")
    reports = []
    tuning.run_trial({"learning_rate": 2e-3}, job, str(tmp_path / "trial"), reports.append)
    assert os.listdir(tmp_path / "trial") == ["mono_VEC"]
    results = json.load(open(tmp_path / "trial" / "mono_VEC" / "results.json"))
    best = max(h["VEC"]["valid"]["weighted_f1"] for h in results["history"])
    assert reports[-1][tuning.METRIC] == pytest.approx(best)
    assert tuning_space.searched("mono", 1) == ("learning_rate", "weight_decay", "epochs", "augment_second")
    data = tuning.search_data(job)
    assert set(tuning.first_trial(config, data, 0)) == {"learning_rate", "weight_decay", "epochs", "augment_first"}


def test_asha_spares_the_starting_trial_and_says_what_it_would_have_done():
    """The first trial added (the starting settings) lagging at a rung: plain ASHA stops it, SparingASHA lets it go on
    and records where and with which score ASHA would have stopped it; the note says which trial plain ASHA would
    then have chosen."""
    from types import SimpleNamespace

    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    decisions = {}
    for scheduler in (ASHAScheduler, tuning.SparingASHA):
        asha = scheduler(time_attr="training_iteration", max_t=8, grace_period=1, metric=tuning.METRIC, mode="max")
        first, other = SimpleNamespace(trial_id="a", config={"epochs": 8}), SimpleNamespace(trial_id="b", config={})
        for trial in (first, other):
            asha.on_trial_add(None, trial)
        asha.on_trial_result(None, other, {"training_iteration": 1, "epoch": 1, tuning.METRIC: 0.9})
        decisions[scheduler] = asha.on_trial_result(None, first, {"training_iteration": 1, "epoch": 1,
                                                                  tuning.METRIC: 0.2})
    assert decisions == {ASHAScheduler: TrialScheduler.STOP, tuning.SparingASHA: TrialScheduler.CONTINUE}
    assert asha.spared == {"would_stop_after": 1, "score_then": 0.2}
    records = [{tuning.METRIC: 0.95}, {tuning.METRIC: 0.9}, {tuning.METRIC: None}]
    assert tuning.starting_trial_note(records, asha.spared) == {
        "spared": True, "score": 0.95, "would_stop_after": 1, "score_then": 0.2, "chosen": 1,
        "chosen_without_sparing": 2}
    assert tuning.starting_trial_note(records, {})["chosen_without_sparing"] == 1


def test_each_modality_gets_the_setting_its_own_data_wants(tmp_path, monkeypatch):
    """Two image modalities: in A the four classes are mirror images of one pattern (flips turn one class into
    another), in B each class is symmetric (flips change nothing). Searched on its own modality, A's model takes no
    flips and B's keeps the first candidate, flips; one search on the mean of both (tune.py's way) gives both the
    same. The search is by hand over two candidates (no Ray Tune), through the real trials and the real fair table."""
    import numpy as np

    from discomkd.comparison.executors import LocalExecutor
    from discomkd.data.folder import array_path

    folder = write_toy_folder(tmp_path / "data", ("A", "B"), n=400, shapes=((1, 12, 12),) * 2, num_classes=4)
    labels = np.load(os.path.join(folder, "labels.npy"))
    rng = np.random.default_rng(0)
    pattern = rng.standard_normal((1, 12, 12))
    mirrored = np.stack([pattern, pattern[..., ::-1], pattern[..., ::-1, :], pattern[..., ::-1, ::-1]])
    square, ring = np.zeros((1, 12, 12)), np.ones((1, 12, 12))
    square[:, 4:8, 4:8], ring[:, 2:10, 2:10] = 3.0, 0.0
    symmetric = np.stack([square, -square, ring, -ring])
    for prefix, means, noise in (("A", mirrored, 1.5), ("B", symmetric, 0.2)):
        rows = means[labels] + noise * rng.standard_normal((len(labels), 1, 12, 12))
        np.save(array_path(folder, prefix), rows.astype(np.float32))
    candidates = [{"augment_first": "flip", "augment_second": "flip"},
                  {"augment_first": "none", "augment_second": "none"}]

    def by_hand(job, data, trials, *args, **kwargs):
        names = tuning.searched(job.config.method, job.modality_index)
        records = []
        for k, candidate in enumerate(candidates):
            settings = {name: value for name, value in candidate.items() if name in names}
            reports = []
            tuning.run_trial(settings, job, os.path.join(job.config.output, "trials", str(k)), reports.append)
            records.append({"settings": settings, tuning.METRIC: reports[-1][tuning.METRIC], "epochs_trained": 8})
        chosen = max(records, key=lambda record: record[tuning.METRIC])  # the first of equals
        return {"metric": tuning.METRIC, "chosen": chosen["settings"], "chosen_" + tuning.METRIC: chosen[tuning.METRIC],
                "trials": records}

    monkeypatch.setattr(fair, "search", by_hand)
    settings = dict(TOY_SETTINGS, epochs=8, learning_rate=3e-3, encoder_second="lenet")
    config = Config(output=str(tmp_path / "fair"), **settings)
    cluster = type("NoCluster", (), {"cpus": 1, "gpus": 0, "start": lambda self, output: None})()
    record = fair.tune_all(config, folder, ("A", "B"), "mono", 2, 1, None, cluster, LocalExecutor(1))
    chosen = {name: found["chosen"] for name, found in record["searches"].items()}
    assert chosen == {"mono_A": {"augment_first": "none"}, "mono_B": {"augment_second": "flip"}}
    assert record["searches"]["mono_A"]["chosen_" + tuning.METRIC] > 0.7  # flips: about 0.4 here
    trained = {name: json.load(open(tmp_path / "fair" / "comparison" / "run_1" / name / "results.json"))["config"]
               for name in ("mono_A", "mono_B")}
    assert (trained["mono_A"]["augment_first"], trained["mono_B"]["augment_second"]) == ("none", "flip")
    joint = tuning.SearchJob(dataclasses.replace(config, method="mono", output=str(tmp_path / "joint")),
                             DataSource(folder, ("A", "B"), ("lenet", "lenet"), None))
    means = []
    for k, candidate in enumerate(candidates):  # one choice for both, on the mean: no flips for B either
        reports = []
        tuning.run_trial(candidate, joint, str(tmp_path / "joint" / str(k)), reports.append)
        means.append(reports[-1][tuning.METRIC])
    assert means[1] > means[0]


def fair_command(folder, output, *options):
    return [sys.executable, os.path.join(ROOT, "compare.py"), folder, *PREFIXES, "--tune", "2", "--runs", "1",
            *toy_options(epochs=2), "--grace-epochs", "1", "--gpus-per-task", "0", "--output", output, *options]


def run(command):
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_the_fair_table_in_one_command(tmp_path):
    """As typed: the searches (mono per modality, DisCoM-KD), then the comparison of the chosen settings on the
    searches' split, rows saying where their settings came from and which DisCoM-KD terms they switch off. The folder
    has no split files: the split drawn for the searches is the comparison's."""
    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    for name in ("train_idx.npy", "valid_idx.npy", "test_idx.npy"):
        os.remove(os.path.join(folder, name))
    output = str(tmp_path / "fair")
    done = run(fair_command(folder, output, "--methods", "mono,discomkd,logreg"))
    record = json.load(open(os.path.join(output, fair.RECORD_FILE)))
    assert record["status"] == "finished" and list(record["searches"]) == ["mono_IMG", "mono_VEC", "discomkd"]
    assert "augment_second" not in record["searches"]["mono_IMG"]["chosen"]
    compared = json.load(open(os.path.join(output, "comparison", "comparison.json")))
    assert compared["seeds"] == [1] and compared["methods"] == ["mono", "discomkd", "logreg"]
    assert compared["splits"].startswith("the split files in") and "search_split" in compared["splits"]
    for name in ("mono_IMG", "mono_VEC", "discomkd"):  # each model trained with its own search's choice
        assert compared["method_settings"][name] == record["searches"][name]["chosen"]
        trained = json.load(open(os.path.join(output, "comparison", "run_1", name, "results.json")))["config"]
        assert all(trained[k] == v for k, v in record["searches"][name]["chosen"].items())
    chosen = Config(**{**TOY_SETTINGS, **record["searches"]["discomkd"]["chosen"]})
    assert compared["row_labels"]["discomkd"] == tuning_space.row_label("discomkd", chosen)
    assert compared["settings_from"]["mono"] == "tuned per modality (2 trials each)"
    table = open(os.path.join(output, fair.FAIR_TABLE)).read()
    assert "tuned per modality (2 trials each)" in table and "| mono_VEC | 2 |" in table
    assert "plain ASHA would have" in table and "search 3/3 discomkd" in done.stdout
    assert "Configuration for experiment" not in done.stdout and "tensorboard" not in done.stdout  # Ray Tune's boxes
    first = json.load(open(os.path.join(output, "searches", "discomkd", "tuning.json")))
    assert first["trials"][0]["epochs_trained"] == 2  # the starting trial trained all its epochs


def test_an_interrupted_fair_table_resumes_keeping_its_finished_searches(tmp_path, monkeypatch):
    """Ctrl-C during the second search: fair.json keeps the first; --resume searches the rest only, then compares.
    A different command line is refused by --resume."""
    from discomkd.commands import compare

    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    output = str(tmp_path / "fair")
    argv = fair_command(folder, output, "--methods", "mono,dml")[2:]
    searched, real = [], fair.search

    def search_then_stop(job, *args, **kwargs):
        searched.append(job.modality or job.config.method)
        if len(searched) == 2:
            raise KeyboardInterrupt
        return real(job, *args, **kwargs)

    monkeypatch.setattr(fair, "search", search_then_stop)
    assert compare.main(argv) == 130
    record = json.load(open(os.path.join(output, fair.RECORD_FILE)))
    assert record["status"] == "interrupted" and list(record["searches"]) == ["mono_IMG"]
    assert compare.main([*argv, "--resume", "--learning-rate", "0.002"]) == 2  # another command: refused
    assert compare.main([*argv, "--resume"]) == 0
    assert searched == ["IMG", "VEC", "VEC", "dml"]  # the first search kept, the interrupted one again
    record = json.load(open(os.path.join(output, fair.RECORD_FILE)))
    assert record["status"] == "finished" and list(record["searches"]) == ["mono_IMG", "mono_VEC", "dml"]
    assert os.path.exists(os.path.join(output, "comparison", "comparison.md"))


def test_ctrl_c_in_a_search_stops_the_command_and_resume_goes_on(tmp_path):
    """Ray Tune catches Ctrl-C itself and returns as if its search had ended (the command then failed on a trial
    without results): SIGINT to the command as typed now stops it with exit 130, fair.json saying so, and the same
    line with --resume keeps the finished search."""
    import signal
    import time

    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    output = str(tmp_path / "fair")
    command = fair_command(folder, output, "--methods", "mono", "--epochs", "4")
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    record = os.path.join(output, fair.RECORD_FILE)
    deadline = time.time() + 300
    while not (os.path.exists(record) and "mono_IMG" in open(record).read()):  # the second search has started
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.2)
    time.sleep(1.5)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("the fair table was interrupted (by a signal)"), err
    saved = json.load(open(record))
    assert saved["status"] == "interrupted" and list(saved["searches"]) == ["mono_IMG"]
    done = run([*command, "--resume"])
    assert "search 1/2 mono_IMG: kept" in done.stdout and json.load(open(record))["status"] == "finished"


def test_tune_refuses_what_it_cannot_honour(tmp_path):
    from discomkd.commands import compare

    folder = write_toy_folder(tmp_path / "data")
    base = [folder, *PREFIXES, "--tune", "2", *toy_options(), "--output", str(tmp_path / "out")]
    assert compare.main([*base, "--resplit"]) == 2
    assert compare.main([*base, "--settings-for", f"mono={tmp_path / 'x.json'}"]) == 2
    assert compare.main([*base, "--methods", "svm"]) == 2
    assert compare.main([folder, *PREFIXES, "--grace-epochs", "2", *toy_options()]) == 2
    assert not os.path.exists(tmp_path / "out")


@SLOW
def test_the_fair_table_with_a_teacher_on_the_ray_executor(tmp_path):
    """kd: the teacher searched first, one teacher trained with its choice for the students' searches, and the
    comparison (Ray executor) training its teacher with the teacher's chosen settings."""
    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    output = str(tmp_path / "fair")
    run(fair_command(folder, output, "--methods", "kd", "--executor", "ray"))
    record = json.load(open(os.path.join(output, fair.RECORD_FILE)))
    assert list(record["searches"]) == ["teacher", "kd_IMG", "kd_VEC"]
    chosen_teacher = os.path.join(output, "searches", "teacher", fair.CHOSEN_TEACHER)
    for teacher in (chosen_teacher, os.path.join(output, "comparison", "run_1", "teacher")):
        trained = json.load(open(os.path.join(teacher, "results.json")))["config"]
        assert all(trained[k] == v for k, v in record["searches"]["teacher"]["chosen"].items())
    student = json.load(open(os.path.join(output, "searches", "kd_IMG", "tuning.json")))
    assert student["modality"] == "IMG"
    trial = os.path.join(output, "searches", "kd_IMG", "trials")
    first = json.load(open(os.path.join(trial, sorted(os.listdir(trial))[0], "kd_IMG", "results.json")))
    assert first["config"]["teacher"].startswith(chosen_teacher)
