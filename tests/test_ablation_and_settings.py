"""The loss ablation's methods, --settings files, runs that never score the test split, and
--executor ray without Ray installed (no Ray needed here; tests/test_ray.py runs Ray itself)."""
import json
import os
import sys

import numpy as np
import pytest
import torch
from toy import PREFIXES, QUICK_OPTIONS, TOY_SETTINGS, folder_snapshot, one_error_line, toy_options, write_toy_folder

import discomkd.comparison
from discomkd.commands import compare
from discomkd.comparison import runner as comparison
from discomkd.comparison.executors import LocalExecutor
from discomkd.data.folder import load_data_folder
from discomkd.models.discomkd import PART_DIM
from discomkd.models.methods import ABLATIONS, METHODS, ModelShape, build_model
from discomkd.runs.outputs import checkpoint_path, load_classifier
from discomkd.training import config as config_module
from discomkd.training import loop as training
from discomkd.training import settings_file as settings
from discomkd.training.config import Config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_ablations_differ_from_the_full_model_in_one_weight_or_the_task_features_only():
    full = METHODS["discomkd"]
    assert set(ABLATIONS) == {"discomkd-no-adv", "discomkd-no-mod", "discomkd-no-aux", "discomkd-no-perp",
                              "discomkd-invariant-only"}
    for name, spec in ABLATIONS.items():
        assert (spec.terms, spec.losses, spec.weights, spec.classifiers) == \
            (full.terms, full.losses, full.weights, full.classifiers), name
        assert (spec.per_modality, spec.reads_both, spec.paired, spec.needs_teacher) == \
            (full.per_modality, full.reads_both, full.paired, full.needs_teacher), name
        if name == "discomkd-invariant-only":
            assert spec.overrides == {} and spec.build is not full.build
        else:
            term = name.rsplit("-", 1)[1]
            assert spec.overrides == {f"weight_{term}": 0.0} and spec.build is full.build
    shape = ModelShape(((1, 12, 12), (6,)), ("lenet", "mlp"), 3)
    torch.manual_seed(0)
    reference = build_model("discomkd", shape)
    torch.manual_seed(0)
    invariant = build_model("discomkd-invariant-only", shape)
    different = {k for k, v in reference.state_dict().items()
                 if k not in invariant.state_dict() or invariant.state_dict()[k].shape != v.shape}
    assert different == {f"branches.{m}.task_classifier.weight" for m in (0, 1)}
    assert invariant.branches[0].task_classifier.in_features == PART_DIM
    assert reference.branches[0].task_classifier.in_features == 2 * PART_DIM


def test_ablation_rows_in_the_comparison_and_their_checkpoints_reload(tmp_path, capsys):
    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    output = str(tmp_path / "out")
    argv = [folder, *PREFIXES, "--methods", "discomkd", "--ablation", *toy_options(epochs=1), "--output", output]
    assert compare.main(argv) == 0
    capsys.readouterr()
    saved = json.load(open(os.path.join(output, comparison.RESULTS_FILE)))
    assert saved["methods"] == ["discomkd", *ABLATIONS]
    table = open(os.path.join(output, comparison.TABLE_FILE)).read()
    main = table.split("\n\n")[0]  # the paired table (discomkd minus each ablation row) follows
    rows = [line.split("|")[1].strip() for line in main.splitlines() if line.startswith("| ")][1:]
    assert rows == ["discomkd", *ABLATIONS]
    run = os.path.join(output, "run_0")
    full = json.load(open(os.path.join(run, "discomkd", "results.json")))["config"]
    for name in ABLATIONS:
        config = json.load(open(os.path.join(run, name, "results.json")))["config"]
        differing = {k for k in full if full[k] != config[k]}
        expected = {"method", "output"} | set(ABLATIONS[name].overrides)
        assert differing == expected, name
        module, checkpoint = load_classifier(checkpoint_path(os.path.join(run, name), "IMG"))
        if name == "discomkd-invariant-only":
            assert checkpoint["classifier"]["task_features"] == "invariant"
            assert module.task_classifier.in_features == PART_DIM


def test_score_test_off_never_evaluates_the_test_split(tmp_path, monkeypatch):
    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    data = load_data_folder(folder, *PREFIXES, ("lenet", "auto"))
    scored = []
    evaluate = training.evaluate

    def recording(setup, data, splits=("valid", "test"), classifiers=None):
        scored.extend(splits)
        return evaluate(setup, data, splits, classifiers)

    monkeypatch.setattr(training, "evaluate", recording)
    output = str(tmp_path / "run")
    results = training.fit(Config(**TOY_SETTINGS, score_test=False, verbose=0), data, output)
    assert scored and set(scored) == {"valid"}
    assert results["status"] == "finished"
    assert all(final["test"] is None for final in results["final"].values())
    assert not [name for name in os.listdir(output) if name.startswith("test_predictions")]
    assert all("test" not in entry[p] for entry in results["history"] for p in PREFIXES)
    scored.clear()
    training.fit(Config(**TOY_SETTINGS, verbose=0), data, str(tmp_path / "scored"))
    assert "test" in scored  # the default still scores test at improving epochs
    with pytest.raises(Exception, match="--test-every-epoch"):
        config_module.check_config(Config(**TOY_SETTINGS, score_test=False, test_every_epoch=True))


def test_a_settings_file_sets_defaults_and_the_command_line_wins(tmp_path, cli_main, capsys):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"learning_rate": 0.003, "weight_adv": 0.5, "epochs": 7, "augment_first": "flip"}))
    parser = compare.build_parser()
    args = vars(settings.parse_with_settings(parser, ["D", "A", "B", "--settings", str(path), "--epochs", "2"]))
    assert (args["learning_rate"], args["weight_adv"], args["epochs"], args["augment_first"]) == (0.003, 0.5, 2, "flip")
    assert settings.command_line({"learning_rate": 0.003, "overwrite": True, "epochs": 7}) == \
        ["--epochs", "7", "--learning-rate", "0.003", "--overwrite"]
    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    output = str(tmp_path / "run")
    path.write_text(json.dumps({"epochs": 1, "learning_rate": 0.002, "weight_perp": 0.0}))
    assert cli_main([folder, *PREFIXES, "--settings", str(path), "--batch-size", "16", "--encoder-first", "lenet",
                     "--device", "cpu", "--quiet", "--output", output]) == 0
    config = json.load(open(os.path.join(output, "results.json")))["config"]
    assert (config["epochs"], config["learning_rate"], config["weight_perp"]) == (1, 0.002, 0.0)
    capsys.readouterr()
    for content, expected in (("{", "not JSON"), ('{"learning_rate": "fast"}', "a number is expected"),
                              ('{"method": "mono"}', "'method' is not a setting"), ("[1]", "JSON object")):
        path.write_text(content)
        before = folder_snapshot(tmp_path)
        assert cli_main([folder, *PREFIXES, "--settings", str(path)]) == 2
        assert expected in one_error_line(capsys.readouterr().err)
        assert folder_snapshot(tmp_path) == before


def test_a_settings_file_goes_through_the_checks_of_the_command_line(tmp_path, cli_main, capsys):
    """compare.py has no --legacy-modality-targets (its discomkd-legacy row trains them): a settings file
    cannot slip it into the discomkd row (it used to, as a default the parser never checked), while
    main_DisCoM-KD.py, which has the option, takes it from a file as from its command line."""
    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    path = tmp_path / "legacy.json"
    path.write_text(json.dumps({"legacy_modality_targets": True}))
    output = str(tmp_path / "cmp")
    argv = [folder, *PREFIXES, "--methods", "discomkd", *toy_options(epochs=1), "--output", output]
    before = folder_snapshot(tmp_path)
    with pytest.raises(SystemExit):  # argparse's refusal of the option typed
        compare.main([*argv, "--legacy-modality-targets"])
    capsys.readouterr()
    assert compare.main([*argv, "--settings", str(path)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(path) in line and "'legacy_modality_targets' is not an option of this command" in line
    assert folder_snapshot(tmp_path) == before
    run = str(tmp_path / "run")
    assert cli_main([folder, *PREFIXES, *toy_options(epochs=1), "--quiet", "--output", run,
                     "--settings", str(path)]) == 0
    assert json.load(open(os.path.join(run, "results.json")))["config"]["legacy_modality_targets"] is True


@pytest.mark.parametrize("content, expected", [
    ('{"weight_decay": 1' + "0" * 400 + "}", "--weight-decay inf"),  # read as a float, as typed: was a traceback
    ('{"grl_warmup": NaN}', "--grl-warmup nan"),
    ('{"epochs": ' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply"),  # was a RecursionError
    ('{"epochs": 1, "epochs": 0}', "'epochs' given more than once"),  # was the last one, silently
    ('{"output": null}', "output null: a string is expected"),
    ('{"epochs": {"epochs": 1}}', "an integer is expected"),
])
def test_a_settings_value_is_refused_as_its_option_would_be(tmp_path, cli_main, capsys, content, expected):
    folder = write_toy_folder(tmp_path / "data")
    path = tmp_path / "settings.json"
    path.write_text(content)
    before = folder_snapshot(tmp_path)
    assert cli_main([folder, *PREFIXES, *QUICK_OPTIONS, "--settings", str(path)]) == 2
    assert expected in one_error_line(capsys.readouterr().err)
    assert folder_snapshot(tmp_path) == before


def test_executor_ray_without_ray_installed_is_one_error_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if Ray were not installed
    monkeypatch.delitem(sys.modules, "discomkd.comparison.ray_executor", raising=False)  # imported again, if it was
    monkeypatch.delattr(discomkd.comparison, "ray_executor", raising=False)
    folder = write_toy_folder(tmp_path / "data")
    before = folder_snapshot(tmp_path)
    assert compare.main([folder, *PREFIXES, "--methods", "logreg", "--executor", "ray"]) == 2
    out, err = capsys.readouterr()
    assert "pip install -r requirements-ray.txt" in one_error_line(err) and out == ""
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
