"""The comparison runner (compare.py) on toy folders."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from toy import PREFIXES, ROOT, TOY_SETTINGS, folder_snapshot, one_error_line, toy_options, write_toy_folder

import discomkd.comparison
from discomkd.commands import compare, train
from discomkd.comparison import inputs as comparison_inputs
from discomkd.comparison import jobs as comparison_jobs
from discomkd.comparison import runner as comparison
from discomkd.comparison.executors import LocalExecutor
from discomkd.data.folder import load_data_folder
from discomkd.models.methods import FUSED
from discomkd.runs.outputs import checkpoint_path
from discomkd.training import loop as training
from discomkd.training.config import Config
from discomkd.training.epoch import train_one_epoch
from discomkd.training.setup import build_setup

# small, fast settings: a LeNet on (1, 12, 12) images and the MLP on 6-d vectors; lr 1e-3 so that
# three epochs of 84 rows suffice
SETTINGS = {**TOY_SETTINGS, "epochs": 3}
NEURAL = "mono,teacher,kd,dkd,discomkd"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def neural(tmp_path_factory):
    """Two runs of the neural methods on a learnable toy folder with its own split."""
    folder = write_toy_folder(tmp_path_factory.mktemp("neural") / "data", separation=3.0)
    output = os.path.join(os.path.dirname(folder), "out")
    results = comparison.compare(Config(output=output, **SETTINGS), folder, "IMG", "VEC", runs=2, methods=NEURAL)
    return folder, output, results


def without_seconds(value):
    if isinstance(value, dict):
        return {k: without_seconds(v) for k, v in value.items()
                if k not in ("seconds", "output", "outputs", "part_seconds")}
    if isinstance(value, list):
        return [without_seconds(v) for v in value]
    return value


def test_neural_baselines_learn_above_chance(neural):
    _, output, results = neural
    assert results["status"] == "finished"
    for method in ("mono", "teacher", "kd", "dkd", "discomkd"):
        for column, summary in results["aggregated"][method]["columns"].items():
            # three balanced classes: chance is 1/3
            assert summary["accuracy"]["mean"] >= 0.6, (method, column, summary)
    for run in results["results"]:
        # the teacher's training time is counted in kd's
        methods = run["methods"]
        assert methods["kd"]["seconds"] == pytest.approx(methods["teacher"]["seconds"] + sum(methods["kd"]["part_seconds"]))
        assert all(methods[m]["compiled"] is False for m in ("mono", "teacher", "kd", "dkd", "discomkd"))
        saved = json.load(open(os.path.join(output, f"run_{run['seed']}", "discomkd", "results.json")))
        assert saved["final"]["IMG"]["test"] == methods["discomkd"]["columns"]["IMG"]["test"]
        assert saved["config"]["seed"] == run["seed"]


def test_table_mean_and_std_match_the_runs(neural):
    _, output, results = neural
    saved = json.load(open(os.path.join(output, comparison.RESULTS_FILE)))
    table = open(os.path.join(output, comparison.TABLE_FILE)).read()
    rows = {line.split("|")[1].strip(): line for line in table.split("\n\n")[0].splitlines() if line.startswith("| ")}
    best = {p: max(saved["aggregated"][m]["columns"][p]["weighted_f1"]["mean"]
                   for m in ("mono", "kd", "dkd", "discomkd")) for p in ("IMG", "VEC")}
    for method in ("mono", "kd", "dkd", "discomkd"):
        for prefix in ("IMG", "VEC"):
            for metric in ("weighted_f1", "accuracy"):
                values = [run["methods"][method]["columns"][prefix]["test"][metric] for run in saved["results"]]
                summary = saved["aggregated"][method]["columns"][prefix][metric]
                assert summary["values"] == values
                assert summary["mean"] == pytest.approx(np.mean(values))
                assert summary["std"] == pytest.approx(np.std(values, ddof=1))
                assert f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" in rows[method]
            bold = saved["aggregated"][method]["columns"][prefix]["weighted_f1"]["mean"] == best[prefix]
            cell = rows[method].split("|")[2 if prefix == "IMG" else 3]
            assert cell.strip().startswith("**") == bold
    assert "[f]" in rows["teacher"] and "[t]" in rows["kd"] and "ddof=1" in table
    assert "mono" in results["table"] and "+-" in results["table"]


def test_discomkd_is_paired_with_every_other_method_run_by_run(neural):
    """comparison.json's "paired" and the table under the main one: discomkd's test wF1 minus the other
    method's, per run; the teacher (fused, no column of its own) is not paired."""
    _, output, results = neural
    saved = json.load(open(os.path.join(output, comparison.RESULTS_FILE)))
    assert set(saved["paired"]) == {"mono", "kd", "dkd"}
    for method in ("mono", "kd", "dkd"):
        for prefix in ("IMG", "VEC"):
            ours, theirs = ([run["methods"][m]["columns"][prefix]["test"]["weighted_f1"] for run in saved["results"]]
                            for m in ("discomkd", method))
            differences = [a - b for a, b in zip(ours, theirs)]
            paired = saved["paired"][method][prefix]
            assert paired["values"] == pytest.approx(differences)
            assert paired["mean"] == pytest.approx(np.mean(differences))
            assert paired["std"] == pytest.approx(np.std(differences, ddof=1))
            assert paired["ahead"] == sum(a > b for a, b in zip(ours, theirs))
            # the 95% interval of the mean difference: Student's t with 1 degree of freedom for 2 runs
            half = 12.706204736 * np.std(differences, ddof=1) / np.sqrt(2)
            assert paired["ci"] == pytest.approx([np.mean(differences) - half, np.mean(differences) + half])
            assert paired["wilcoxon_p"] is None if not any(differences) else 0 < paired["wilcoxon_p"] <= 1
    paired_table = open(os.path.join(output, comparison.TABLE_FILE)).read().split("| discomkd minus | IMG | VEC |")[1]
    row = next(line for line in paired_table.splitlines() if line.startswith("| mono |"))
    first = saved["paired"]["mono"]["IMG"]
    assert (f"{first['mean']:+.3f} ± {first['std']:.3f} [{first['ci'][0]:+.3f}, {first['ci'][1]:+.3f}] "
            f"({first['ahead']} of 2)") in row
    assert "discomkd minus" in results["table"]


def test_same_seed_repeats_exactly_whatever_the_other_methods(neural, tmp_path):
    """Each model is seeded on its own: dkd alone (with its teacher) and mono repeat run 0 exactly."""
    folder, _, results = neural
    again = comparison.compare(Config(output=str(tmp_path / "again"), **SETTINGS), folder, "IMG", "VEC", runs=1,
                            methods="dkd,mono")
    for method in ("mono", "dkd"):
        assert without_seconds(again["results"][0]["methods"][method]) == \
            without_seconds(results["results"][0]["methods"][method])
    assert results["results"][0]["methods"]["mono"] != results["results"][1]["methods"]["mono"]


def test_teacher_stays_frozen_while_students_distil(tmp_path):
    """The teacher's weights and batch-norm statistics do not move while kd/dkd students train."""
    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    config = Config(**{**SETTINGS, "epochs": 1}, verbose=0)
    data = load_data_folder(folder, "IMG", "VEC", ("lenet", "auto"))
    source = comparison_jobs.DataSource(folder, ("IMG", "VEC"), ("lenet", "auto"), None, data.describe())
    teacher = comparison_jobs.run_job(comparison_jobs.Job(0, str(tmp_path), config, "teacher", None, source))
    path = checkpoint_path(teacher["output"], FUSED)
    for method in ("kd", "dkd"):
        setup = build_setup(dataclasses.replace(config, method=method, modality="VEC", teacher=path), data,
                                torch.device("cpu"))
        before = {k: v.clone() for k, v in setup.model.teacher.state_dict().items()}
        losses = train_one_epoch(setup, 1)
        assert set(losses) == {"ce", *({"kd"} if method == "kd" else {"tckd", "nckd"}), "total", "finite_weights"}
        assert not setup.model.teacher.training
        assert all(torch.equal(before[k], v) for k, v in setup.model.teacher.state_dict().items())
        assert all(p.grad is None for p in setup.model.teacher.parameters())


def test_classical_baselines_reproduce_scikit_learn(tmp_path):
    folder = write_toy_folder(tmp_path / "data", separation=0.25, n=150)  # hard enough for C to matter
    results = comparison.compare(Config(output=str(tmp_path / "out"), **SETTINGS), folder, "IMG", "VEC", runs=1,
                              methods="svm,logreg")
    data = load_data_folder(folder, "IMG", "VEC")
    models = {"svm": lambda c: SVC(C=c, kernel="rbf"), "logreg": lambda c: LogisticRegression(C=c, max_iter=5000)}
    for method, model in models.items():
        for m, modality in enumerate(data.modalities):
            result = results["results"][0]["methods"][method]["columns"][modality.prefix]
            x = {s: np.asarray(modality.array[rows]).reshape(len(rows), -1) for s, rows in modality.splits.items()}
            y = {s: data.labels[rows] for s, rows in modality.splits.items()}
            valid_scores = [entry["valid"]["weighted_f1"] for entry in result["grid"]]
            assert result["C"] == result["grid"][int(np.argmax(valid_scores))]["C"]
            pipeline = Pipeline([("scale", StandardScaler()), ("model", model(result["C"]))])
            pipeline.fit(x["train"], y["train"])
            assert result["valid"]["weighted_f1"] == pytest.approx(
                f1_score(y["valid"], pipeline.predict(x["valid"]), average="weighted"), abs=1e-12)
            assert result["test"]["weighted_f1"] == pytest.approx(
                f1_score(y["test"], pipeline.predict(x["test"]), average="weighted"), abs=1e-12)
            assert result["test"]["accuracy"] == pytest.approx(pipeline.score(x["test"], y["test"]), abs=1e-12)


def test_folder_without_splits_gets_a_saved_split_per_run(tmp_path):
    folder = write_toy_folder(tmp_path / "data", label_values=[5, -1, 40])
    for split in ("train", "valid", "test"):
        os.remove(os.path.join(folder, f"{split}_idx.npy"))
    before = folder_snapshot(folder)
    output = str(tmp_path / "out")
    results = comparison.compare(Config(output=output, **SETTINGS), folder, "IMG", "VEC", runs=2, methods="logreg")
    assert folder_snapshot(folder) == before  # the user's folder is only read
    labels = np.load(os.path.join(folder, "labels.npy"))
    splits = []
    for seed in (0, 1):
        view = os.path.join(output, f"run_{seed}", comparison_inputs.SPLIT_FOLDER)
        split = {s: np.load(os.path.join(view, f"{s}_idx.npy")) for s in ("train", "valid", "test")}
        assert np.array_equal(np.sort(np.concatenate(list(split.values()))), np.arange(len(labels)))
        for value in (5, -1, 40):  # 40 rows per class: 28 / 4 / 8
            assert [int((labels[split[s]] == value).sum()) for s in ("train", "valid", "test")] == [28, 4, 8]
        assert results["results"][seed]["data"]["directory"] == folder
        assert results["results"][seed]["data"]["splits_from"] == view
        splits.append(split)
    assert not np.array_equal(splits[0]["test"], splits[1]["test"])


def test_teacher_and_distillation_skipped_without_paired_rows(tmp_path):
    folder = write_toy_folder(tmp_path / "data")
    train = np.load(os.path.join(folder, "train_idx.npy"))
    np.save(os.path.join(folder, "train_idx_IMG.npy"), train[: len(train) // 2])
    np.save(os.path.join(folder, "train_idx_VEC.npy"), train[len(train) // 2:])
    config = Config(output=str(tmp_path / "out"), **{**SETTINGS, "epochs": 1})
    results = comparison.compare(config, folder, "IMG", "VEC", runs=1, methods="mono,kd")
    entries = results["results"][0]["methods"]
    assert entries["kd"]["status"] == "skipped" and "paired" in entries["kd"]["note"]
    assert entries["mono"]["columns"]["IMG"]["train_rows"] == len(train) // 2
    table = open(tmp_path / "out" / comparison.TABLE_FILE).read()
    assert "skipped (needs paired rows)" in table and "needs paired data" in table


def run_main(argv, capsys):
    status = compare.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("case", ["no folder", "missing array", "missing array, no splits", "float labels, no splits",
                                  "unknown method", "no runs", "output not empty", "bad augmentation"])
def test_bad_input_gives_one_line_and_writes_nothing(case, tmp_path, capsys):
    folder = write_toy_folder(tmp_path / "data")
    prefixes, options = ["IMG", "VEC"], ["--epochs", "1"]
    if case == "no folder":
        folder = str(tmp_path / "nowhere")
    if case.startswith("missing array"):
        prefixes = ["IMG", "MISSING"]
    if case.endswith("no splits"):
        for split in ("train", "valid", "test"):
            os.remove(os.path.join(folder, f"{split}_idx.npy"))
    if case.startswith("float labels"):
        np.save(os.path.join(folder, "labels.npy"), np.zeros(120))
    options += {"unknown method": ["--methods", "mono,bagging"], "no runs": ["--runs", "0"],
                "bad augmentation": ["--augment-first", "shift"]}.get(case, [])
    if case == "output not empty":
        os.makedirs(os.path.join(folder, "comparison_IMG_VEC"))
        open(os.path.join(folder, "comparison_IMG_VEC", "keep.txt"), "w").close()
    before = folder_snapshot(tmp_path)
    status, out, err = run_main([folder, *prefixes, *options], capsys)
    assert status == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "compare-check" not in err  # errors name the user's files, not the temporary view
    if case.startswith("missing array"):
        assert os.path.join(folder, "MISSING_data_normalized.npy") in err
    assert folder_snapshot(tmp_path) == before


def test_command_line_bad_folder_exits_2_without_traceback(tmp_path):
    process = subprocess.run([sys.executable, os.path.join(ROOT, "compare.py"), str(tmp_path / "none"), "A", "B"],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert process.returncode == 2
    assert process.stderr == f"error: {tmp_path / 'none'}: data folder not found\n"
    assert os.listdir(tmp_path) == []


def test_config_options_shared_with_main():
    main_args = vars(train.build_parser().parse_args(["D", "A", "B"]))
    assert {k: main_args[k] for k in ("epochs", "weight_adv", "legacy_modality_targets", "encoder_first")} == \
        {"epochs": 300, "weight_adv": 1.0, "legacy_modality_targets": False, "encoder_first": "auto"}
    argv = ["D", "A", "B", "--epochs", "7", "--weight-adv", "0.5", "--runs", "3"]
    args = vars(compare.build_parser().parse_args(argv))
    assert (args["epochs"], args["weight_adv"], args["runs"], args["seed"]) == (7, 0.5, 3, 0)
    assert "legacy_modality_targets" not in args  # a method of its own here: discomkd-legacy
    assert comparison_inputs.parse_methods("kd, mono,kd") == ("kd", "mono")


# ----------------------------------------------------------------------------- stopping and failing
def test_single_class_training_rows_get_a_constant_classical_prediction(tmp_path):
    """svm/logreg need two classes: a modality whose training rows hold one gets a constant prediction,
    said in the result, instead of a crash after the output folder was written."""
    folder = write_toy_folder(tmp_path / "data")
    labels = np.load(os.path.join(folder, "labels.npy"))
    train = np.load(os.path.join(folder, "train_idx.npy"))
    np.save(os.path.join(folder, "train_idx_VEC.npy"), train[labels[train] == labels[train][0]])
    results = comparison.compare(Config(output=str(tmp_path / "out"), **SETTINGS), folder, "IMG", "VEC", runs=1,
                              methods="svm,logreg")
    for method in ("svm", "logreg"):
        column = results["results"][0]["methods"][method]["columns"]["VEC"]
        assert "single class" in column["note"] and column["C"] is None
        assert column["test"]["accuracy"] == pytest.approx(float(np.mean(labels[np.load(
            os.path.join(folder, "test_idx.npy"))] == labels[train][0])))
        assert "note" not in results["results"][0]["methods"][method]["columns"]["IMG"]


@pytest.mark.parametrize("finished_runs", [0, 1])
def test_an_interrupted_comparison_keeps_what_finished_and_says_so(tmp_path, monkeypatch, capsys, finished_runs):
    """A stop request during run `finished_runs + 1`: with a run finished, comparison.json/.md keep it (status
    interrupted) and the message says where; with none, nothing is left behind, so the same command runs again."""
    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    output = str(tmp_path / "out")
    real_fit = training.fit
    calls = [0]

    def stopping_fit(config, data, run_output, state=None, should_stop=None, on_epoch=None):
        calls[0] += 1
        stop_now = calls[0] == finished_runs + 1  # one neural model per run here: discomkd
        return real_fit(config, data, run_output, state, (lambda: True) if stop_now else should_stop, on_epoch)

    monkeypatch.setattr(training, "fit", stopping_fit)
    argv = [folder, "IMG", "VEC", "--runs", "2", "--methods", "discomkd,logreg", "--output", output, *toy_options()]
    assert compare.main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"comparison interrupted with {finished_runs}/2 run(s) finished")
    assert "Traceback" not in err[0]
    if finished_runs:
        saved = json.load(open(os.path.join(output, comparison.RESULTS_FILE)))
        assert saved["status"] == "interrupted" and len(saved["results"]) == 1
        assert os.path.join(output, comparison.RESULTS_FILE) in err[0]
        table = open(os.path.join(output, comparison.TABLE_FILE)).read()
        assert table.startswith("**Interrupted after 1 of 2 runs; the same command with --resume continues it.**")
        assert "discomkd" in table
    else:
        assert "nothing was kept" in err[0] and not os.path.exists(output)
        monkeypatch.setattr(training, "fit", real_fit)
        assert compare.main(argv[:4] + ["1"] + argv[5:]) == 0  # the same folder is free again


def test_sigterm_during_the_classical_baselines_stops_cleanly(tmp_path):
    """SIGTERM outside a neural training (here: while svm fits) ends like Ctrl-C: one line, exit 130, nothing
    left when no run had finished."""
    folder = write_toy_folder(tmp_path / "data", n=150)
    output = str(tmp_path / "out")
    script = (
        "import os, signal, sys\n"
        "from discomkd.commands import compare\n"
        "from discomkd.comparison import classical\n"
        "real = classical.fit_classical\n"
        "def terminated(*args):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return real(*args)\n"
        "classical.fit_classical = terminated\n"
        f"sys.exit(compare.main([{folder!r}, 'IMG', 'VEC', '--methods', 'svm', '--output', {output!r}]))\n")
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert process.returncode == 130, process.stderr
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0] and "nothing was kept" in lines[0], process.stderr
    assert not os.path.exists(output)


def test_settings_per_method_and_where_each_row_s_settings_came_from(tmp_path, capsys):
    """compare.py --settings-for: one method's models train with its own file; the table's "settings"
    column says tuned (a settings.json beside tune.py's tuning.json), borrowed (tuned for another
    method), a settings file, or the paper's."""
    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    tuned = tmp_path / "tuning_mono"
    os.makedirs(tuned)
    json.dump({"learning_rate": 0.005, "weight_decay": 0.0001}, open(tuned / "settings.json", "w"))
    json.dump({"method": "mono", "trials": [{}, {}, {}]}, open(tuned / "tuning.json", "w"))
    plain = tmp_path / "dkd.json"
    json.dump({"dkd_beta": 2.0, "dkd_temperature": 2.0}, open(plain, "w"))
    output = tmp_path / "cmp"
    argv = [folder, "IMG", "VEC", "--methods", "mono,kd,dkd,discomkd,logreg", "--output", str(output),
            *toy_options(epochs=1), "--settings", str(tuned / "settings.json"),
            "--settings-for", f"mono={tuned / 'settings.json'}", "--settings-for", f"dkd={plain}"]
    assert compare.main(argv) == 0
    saved = json.load(open(output / comparison.RESULTS_FILE))
    assert saved["settings_from"] == {"mono": "tuned (3 trials)", "kd": "borrowed: tuned for mono (3 trials)",
                                      "dkd": f"settings file {plain}", "discomkd": "borrowed: tuned for mono (3 trials)",
                                      "logreg": "C chosen on validation"}
    config = {name: json.load(open(output / "run_0" / name / "results.json"))["config"]
              for name in ("mono_IMG", "dkd_VEC", "teacher")}
    assert config["mono_IMG"]["learning_rate"] == 0.005 and config["mono_IMG"]["weight_decay"] == 0.0001
    # dkd: its file's settings; the learning rate typed on the command line wins over --settings
    assert config["dkd_VEC"]["dkd_beta"] == 2.0 and config["dkd_VEC"]["learning_rate"] == 1e-3
    assert config["dkd_VEC"]["weight_decay"] == 0.0001  # from --settings
    assert config["teacher"]["dkd_beta"] == 8.0  # the teacher's own: the command line's and --settings
    table = open(output / comparison.TABLE_FILE).read()
    assert "| settings |" in table and "tuned (3 trials)" in table
    for bad, expected in ((f"svm={plain}", "not a neural method"), ("mono", "METHOD=FILE"),
                          (f"mono={tmp_path / 'none.json'}", "none.json")):
        capsys.readouterr()
        assert compare.main([*argv[:-4], "--settings-for", bad, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and expected in err, err
    json.dump({"legacy_modality_targets": True}, open(tmp_path / "legacy.json", "w"))  # not an option of compare.py
    assert compare.main([folder, "IMG", "VEC", "--methods", "discomkd", "--output", str(tmp_path / "c2"),
                         *toy_options(epochs=1), "--settings-for", f"discomkd={tmp_path / 'legacy.json'}"]) == 2
    assert "not an option of this command" in capsys.readouterr().err and not os.path.exists(tmp_path / "c2")


def test_settings_for_one_modality_s_model(tmp_path, capsys):
    """--settings-for mono_IMG=FILE: that modality's model alone trains with the file, the other with the method's
    settings; the row says so for each; a key that names no per-modality model is one error line."""
    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    own = tmp_path / "img.json"
    json.dump({"learning_rate": 0.004}, open(own, "w"))
    output = tmp_path / "cmp"
    argv = [folder, *PREFIXES, "--methods", "mono,discomkd", "--output", str(output), *toy_options(epochs=1)]
    assert compare.main([*argv, "--settings-for", f"mono_IMG={own}"]) == 0
    saved = json.load(open(output / comparison.RESULTS_FILE))
    assert saved["method_settings"] == {"mono_IMG": {"learning_rate": 0.004}}
    assert saved["settings_from"]["mono"] == f"IMG: settings file {own}; VEC: command line"
    trained = {name: json.load(open(output / "run_0" / name / "results.json"))["config"]["learning_rate"]
               for name in ("mono_IMG", "mono_VEC", "discomkd")}
    assert trained == {"mono_IMG": 0.004, "mono_VEC": 1e-3, "discomkd": 1e-3}
    for key, expected in (("discomkd_IMG", "not a neural method"), ("mono_XYZ", "not a neural method"),
                          ("kd_IMG", "not among the methods compared")):
        capsys.readouterr()
        assert compare.main([*argv, "--settings-for", f"{key}={own}", "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and expected in err, err


def test_the_local_executor_trains_with_the_threads_of_a_ray_task(tmp_path, capsys):
    """--cpus-per-task (default 1) is the local executor's torch threads per model, as a Ray task's; the caller's
    own number is back afterwards; a non-positive number is one error line."""
    from discomkd.comparison.executors import make_executor

    folder = write_toy_folder(tmp_path / "data")
    seen = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        executor = make_executor("local")
        assert executor.threads == 1 and executor.description == "local (1 torch thread per model)"
        comparison.compare(Config(output=str(tmp_path / "cmp"), **TOY_SETTINGS), folder, *PREFIXES, methods="mono",
                           executor=executor, on_epoch=lambda entry: seen.append(torch.get_num_threads()))
        assert seen and set(seen) == {1} and torch.get_num_threads() == 2
        assert json.load(open(tmp_path / "cmp" / comparison.RESULTS_FILE))["executor"] == executor.description
    finally:
        torch.set_num_threads(before)
    assert compare.main([folder, *PREFIXES, "--methods", "mono", "--cpus-per-task", "0", *toy_options(),
                         "--output", str(tmp_path / "never")]) == 2
    assert "--cpus-per-task 0" in capsys.readouterr().err and not os.path.exists(tmp_path / "never")


def test_a_shared_split_folder_gives_every_run_its_rows(tmp_path):
    """Tuning's final runs (issue 21, case 11) train and test on the search's split: compare(shared_split=...)
    reads that folder's split files for every run, never a fresh split."""
    folder = write_toy_folder(tmp_path / "data")
    for split in ("train", "valid", "test"):
        os.remove(os.path.join(folder, f"{split}_idx.npy"))
    split_folder = tmp_path / "search_split"
    os.makedirs(split_folder)
    labels = np.load(os.path.join(folder, "labels.npy"))
    from discomkd.data.splits import stratified_split

    for split, rows in stratified_split(labels, 7).items():
        np.save(split_folder / f"{split}_idx.npy", rows)
    found = comparison.compare(Config(**SETTINGS, output=str(tmp_path / "cmp")), folder, "IMG", "VEC", runs=2,
                               methods="logreg", shared_split=str(split_folder))
    assert [run["data"]["splits_from"] for run in found["results"]] == [os.path.abspath(split_folder)] * 2
    assert not os.path.exists(tmp_path / "cmp" / "run_0" / comparison_inputs.SPLIT_FOLDER)
    assert "split files in" in found["splits"]


def test_executor_ray_without_ray_installed_is_one_error_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if Ray were not installed
    monkeypatch.delitem(sys.modules, "discomkd.comparison.ray_executor", raising=False)  # imported again, if it was
    monkeypatch.delattr(discomkd.comparison, "ray_executor", raising=False)
    folder = write_toy_folder(tmp_path / "data")
    before = folder_snapshot(tmp_path)
    assert compare.main([folder, *PREFIXES, "--methods", "logreg", "--executor", "ray"]) == 2
    out, err = capsys.readouterr()
    assert 'pip install "discomkd[ray]"' in one_error_line(err) and out == ""
    assert folder_snapshot(tmp_path) == before


def test_runs_finishing_out_of_order_are_saved_in_seed_order(tmp_path):
    """An executor may finish run 1 before run 0: the table lists the seeds finished, in order."""
    folder = write_toy_folder(tmp_path / "data")
    output = str(tmp_path / "out")

    class Reversed:
        """Runs every job here, then hands the results back last job first."""

        description, local = "reversed", False

        def start(self, output):
            pass

        def __call__(self, jobs, run_job):
            yield from reversed(list(LocalExecutor()(jobs, run_job)))

    results = comparison.compare(Config(output=output, device="cpu"), folder, *PREFIXES, runs=3, methods="logreg",
                              resplit=True, executor=Reversed())
    assert [run["seed"] for run in results["results"]] == [0, 1, 2] and results["executor"] == "reversed"
    local = comparison.compare(Config(output=str(tmp_path / "local"), device="cpu"), folder, *PREFIXES, runs=3,
                            methods="logreg", resplit=True)
    values = [r["methods"]["logreg"]["columns"]["IMG"]["test"]["weighted_f1"] for r in local["results"]]
    assert results["aggregated"]["logreg"]["columns"]["IMG"]["weighted_f1"]["values"] == values
    assert np.isfinite(values).all()


def test_a_resumed_comparison_keeps_what_finished_and_ends_as_an_uninterrupted_one(tmp_path, monkeypatch, capsys):
    """Stopped in run 2 after its first model finished and during its second: `compare.py ... --resume`, typed as
    a user would, keeps run 1 and that model as they are (their files untouched), continues the second from its
    state.pt, trains the rest, and ends with the results of the same comparison never stopped."""
    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    argv = [folder, "IMG", "VEC", "--runs", "2", "--resplit", "--methods", "mono,discomkd,logreg",
            *toy_options(epochs=3)]
    real_fit, calls = training.fit, [0]

    def stopping_fit(config, data, run_output, state=None, should_stop=None, on_epoch=None):
        calls[0] += 1  # per run: mono IMG, mono VEC, discomkd; the 5th is run 2's mono VEC
        return real_fit(config, data, run_output, state, (lambda: True) if calls[0] == 5 else should_stop, on_epoch)

    monkeypatch.setattr(training, "fit", stopping_fit)
    stopped = str(tmp_path / "stopped")
    assert compare.main([*argv, "--output", stopped]) == 130
    assert "--resume continues" in capsys.readouterr().err
    run_2 = os.path.join(stopped, "run_1")
    assert os.path.exists(os.path.join(run_2, "mono_VEC", "state.pt"))
    untouched = {**folder_snapshot(os.path.join(stopped, "run_0")), **folder_snapshot(os.path.join(run_2, "mono_IMG"))}

    process = subprocess.run([sys.executable, "compare.py", *argv, "--output", stopped, "--resume"],
                             capture_output=True, text=True, cwd=ROOT, timeout=300,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})  # the threads of this process's runs
    assert process.returncode == 0, process.stderr
    assert "seed 0  kept" in process.stdout and "mono (resumed)" in process.stdout
    assert {p: s for p, s in folder_snapshot(stopped).items() if p in untouched} == untouched
    resumed = json.load(open(os.path.join(stopped, comparison.RESULTS_FILE)))
    assert resumed["status"] == "finished" and resumed["resumed"] == {"kept_runs": [0]}

    monkeypatch.setattr(training, "fit", real_fit)
    whole = str(tmp_path / "whole")
    assert compare.main([*argv, "--output", whole]) == 0
    uninterrupted = json.load(open(os.path.join(whole, comparison.RESULTS_FILE)))
    assert [without_seconds(run["methods"]) for run in resumed["results"]] == \
        [without_seconds(run["methods"]) for run in uninterrupted["results"]]
    for key in ("aggregated", "paired"):
        assert without_seconds(resumed[key]) == without_seconds(uninterrupted[key]), key


@pytest.mark.parametrize("case", ["no comparison", "other epochs", "fewer runs", "with overwrite", "changed labels"])
def test_resume_refuses_what_is_not_the_same_comparison(case, tmp_path, capsys):
    """--resume continues only the comparison its command line started, on the data it recorded: anything else
    is one error line naming the file, exit 2, and nothing written."""
    folder = write_toy_folder(tmp_path / "data")
    output = str(tmp_path / "out")
    argv = [folder, "IMG", "VEC", "--runs", "2", "--resplit", "--methods", "logreg", "--output", output]
    assert compare.main(argv) == 0
    capsys.readouterr()
    if case == "no comparison":
        os.remove(os.path.join(output, comparison.RESULTS_FILE))
    if case == "changed labels":
        labels = np.load(os.path.join(folder, "labels.npy"))
        np.save(os.path.join(folder, "labels.npy"), np.roll(labels, 1))
    before = folder_snapshot(output)
    changed = {"other epochs": ["--epochs", "7"], "fewer runs": ["--runs", "1"], "with overwrite": ["--overwrite"]}
    assert compare.main([*argv, *changed.get(case, []), "--resume"]) == 2
    line = one_error_line(capsys.readouterr().err)
    expected = {"no comparison": "not found", "other epochs": "other epochs", "fewer runs": "give at least --runs 2",
                "with overwrite": "give one", "changed labels": "cannot be kept"}[case]
    assert expected in line, line
    assert folder_snapshot(output) == before


def test_resume_with_more_runs_adds_them(tmp_path):
    """A finished comparison resumed with a larger --runs keeps its runs and adds the new seeds."""
    folder = write_toy_folder(tmp_path / "data")
    output = str(tmp_path / "out")
    argv = [folder, "IMG", "VEC", "--resplit", "--methods", "svm,logreg", "--output", output]
    assert compare.main([*argv, "--runs", "1"]) == 0
    first = json.load(open(os.path.join(output, comparison.RESULTS_FILE)))["results"]
    assert compare.main([*argv, "--runs", "3", "--resume"]) == 0
    results = json.load(open(os.path.join(output, comparison.RESULTS_FILE)))
    assert [run["seed"] for run in results["results"]] == [0, 1, 2] and results["results"][0] == first[0]
    assert len(results["aggregated"]["svm"]["columns"]["IMG"]["weighted_f1"]["values"]) == 3


def test_resume_with_more_methods_keeps_the_models_that_finished(tmp_path):
    """--methods may grow on --resume: every run is planned again, its finished models kept (files untouched),
    the method added trained, and the recorded methods' results as before."""
    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    output = str(tmp_path / "out")
    argv = [folder, "IMG", "VEC", "--runs", "2", "--resplit", *toy_options(), "--output", output]
    assert compare.main([*argv, "--methods", "mono,svm"]) == 0
    before = json.load(open(os.path.join(output, comparison.RESULTS_FILE)))
    models = {p: s for p, s in folder_snapshot(output).items() if os.sep + "mono_" in p}
    assert compare.main([*argv, "--methods", "mono,dml,svm", "--resume"]) == 0
    after = json.load(open(os.path.join(output, comparison.RESULTS_FILE)))
    assert after["methods"] == ["mono", "dml", "svm"] and after["resumed"] == {"kept_runs": []}
    assert {p: s for p, s in folder_snapshot(output).items() if p in models} == models
    for old, new in zip(before["results"], after["results"]):
        assert without_seconds({m: new["methods"][m] for m in ("mono", "svm")}) == without_seconds(old["methods"])
        assert new["methods"]["dml"]["status"] == "done"
    assert compare.main([*argv, "--methods", "mono", "--resume"]) == 2  # a method left out: refused


@pytest.mark.parametrize("weights, label", [
    ({"weight_adv": 0.0, "weight_mod": 0.0}, "discomkd (L_mod, L_adv off)"),
    ({"weight_aux": 0.0, "weight_mod": 0.0, "weight_adv": 0.0, "weight_perp": 0.0},
     "discomkd (only L_cl on: each modality's classifier trained alone, two encoders each)")])
def test_a_row_whose_settings_switch_terms_off_says_which(weights, label, tmp_path, capsys):
    """A DisCoM-KD row whose settings (here a --settings-for file, as tune.py writes) set terms' weights to 0 is
    named with them, in comparison.md, comparison.json and the printed table; the ablation rows, whose names say
    it already, and the other methods keep their names; a finished comparison.md has no heading."""
    folder = write_toy_folder(tmp_path / "data")
    settings = tmp_path / "tuned.json"
    settings.write_text(json.dumps(weights))
    output = str(tmp_path / "out")
    assert compare.main([folder, "IMG", "VEC", "--methods", "discomkd,discomkd-no-adv,mono", "--output", output,
                         *toy_options(epochs=1), "--settings-for", f"discomkd={settings}"]) == 0
    printed = capsys.readouterr().out
    table = open(os.path.join(output, comparison.TABLE_FILE)).read()
    saved = json.load(open(os.path.join(output, comparison.RESULTS_FILE)))
    assert saved["row_labels"] == {"discomkd": label, "discomkd-no-adv": "discomkd-no-adv", "mono": "mono"}
    assert f"| {label} |" in table and f"| {label} minus |" in table and "| discomkd-no-adv |" in table
    assert table.startswith("| method") and label in printed


def test_the_comparison_figure_is_drawn_beside_the_table_or_said_missing(neural, tmp_path, monkeypatch, caplog):
    """comparison.png (every run's score and the paired differences) beside comparison.md when matplotlib is
    installed; without it, no figure and the last line says why."""
    pytest.importorskip("matplotlib")
    _, output, _ = neural
    with open(os.path.join(output, comparison.FIGURE_FILE), "rb") as figure:
        assert figure.read(8) == b"\x89PNG\r\n\x1a\n"
    folder = write_toy_folder(tmp_path / "data")
    monkeypatch.setattr(comparison, "matplotlib_figure", lambda: None)
    with caplog.at_level("INFO"):
        comparison.compare(Config(output=str(tmp_path / "out"), device="cpu"), folder, *PREFIXES, methods="logreg")
    assert not os.path.exists(tmp_path / "out" / comparison.FIGURE_FILE)
    assert "matplotlib is not installed" in caplog.text.splitlines()[-1]
