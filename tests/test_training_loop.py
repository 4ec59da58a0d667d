"""The one training loop: every method's spec goes through `loop.fit`, and a diverged run keeps
nothing broken."""
import os

import numpy as np
import pytest
import torch
from toy import PREFIXES, TOY_SETTINGS, read_results, write_toy_folder

from discomkd.data.folder import array_path, load_data_folder
from discomkd.models.methods import FUSED, METHODS
from discomkd.runs.outputs import STATE_FILE, checkpoint_path, load_classifier, load_state
from discomkd.training import loop as training
from discomkd.training.config import Config, check_config
from discomkd.training.epoch import train_one_epoch
from discomkd.training.inference import predict_array
from discomkd.training.loop import fit
from discomkd.training.run import run
from discomkd.training.setup import build_setup
from discomkd.utils.errors import TrainingError
from discomkd.utils.seeds import seed_everything

# a LeNet on (1, 12, 12) images and the MLP on 6-d vectors, lr 1e-3: two short epochs learn the toy classes
SETTINGS = {**TOY_SETTINGS, "augment_first": "none", "verbose": 0}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = write_toy_folder(tmp_path_factory.mktemp("engine") / "data", separation=3.0)
    return load_data_folder(folder, *PREFIXES, ("lenet", "auto"))


@pytest.fixture(scope="module")
def teacher(data, tmp_path_factory):
    """A trained teacher's checkpoint: what kd and dkd read."""
    output = str(tmp_path_factory.mktemp("teacher"))
    fit(Config(**SETTINGS, method="teacher"), data, output)
    return checkpoint_path(output, FUSED)


# every method; the per-modality ones for each modality
CASES = [(method, target) for method, spec in METHODS.items() for target in ((0, 1) if spec.per_modality else (0,))]


@pytest.mark.parametrize("method, target", CASES)
def test_every_method_trains_through_the_one_loop(method, target, data, teacher, tmp_path):
    """Each spec through `fit`: a results.json with every raw term per epoch, the classifiers the spec
    declares, checkpoints that reload and reproduce the recorded test predictions, no state left."""
    spec = METHODS[method]
    config = Config(**SETTINGS, method=method, modality=PREFIXES[target] if spec.per_modality else None,
                    teacher=teacher if spec.needs_teacher else None)
    results = fit(config, data, str(tmp_path))
    assert results["status"] == "finished" and results["environment"]["compiled"] is False
    assert [set(h["loss"]) for h in results["history"]] == [set(spec.terms) | {"total"}] * SETTINGS["epochs"]
    expected = {FUSED} if method == "teacher" else {PREFIXES[target]} if spec.per_modality else set(PREFIXES)
    assert set(results["final"]) == expected
    for column, final in results["final"].items():
        assert final["test"]["accuracy"] > 0.5, (method, column, final)  # three balanced classes: chance 1/3
        module, checkpoint = load_classifier(checkpoint_path(str(tmp_path), column))
        assert checkpoint["epoch"] == final["best_epoch"] and checkpoint["config"]["method"] == method
        saved = np.load(os.path.join(str(tmp_path), f"test_predictions_{column}.npy"))
        if column != FUSED:  # a single-modality classifier: predict.py's path reproduces the run's predictions
            rows = data.modalities[PREFIXES.index(column)].splits["test"]
            array = np.load(array_path(data.directory, column), mmap_mode="r")
            _, predicted = predict_array(module, array, rows=rows)
            assert np.array_equal(data.classes[predicted], saved)
    assert not os.path.exists(os.path.join(str(tmp_path), STATE_FILE))
    assert all(results["config"][k] == v for k, v in spec.overrides.items())


def test_methods_differ_only_in_their_spec():
    """The specs are data: each names its terms, and the weights it returns cover exactly those terms."""
    for name, spec in METHODS.items():
        assert set(spec.weights(Config(), 1)) == set(spec.terms), name
        assert set(spec.weights(Config(), 1000)) == set(spec.terms), name


def test_a_diverging_run_keeps_no_non_finite_value_and_reports_a_finite_best(tmp_path):
    """A learning rate of 1e4 blows the weights up: the run stops (exit status 3 on the command line),
    and every file it leaves holds finite numbers only; the best epochs reported are finite ones."""
    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    output = str(tmp_path / "out")
    config = Config(**{**SETTINGS, "epochs": 6, "learning_rate": 1e4, "batch_size": 8}, output=output)
    with pytest.raises(TrainingError, match="NaN or Inf|loss term") as stopped:
        run(config, folder, *PREFIXES)
    results = read_results(output)
    assert results["status"] == "failed"
    assert "last finite" in str(stopped.value) or "no checkpoint" in str(stopped.value)
    for column, final in results["final"].items():
        assert all(np.isfinite(v) for split in ("valid", "test") for v in final[split].values())
        module, checkpoint = load_classifier(checkpoint_path(output, column))
        assert checkpoint["epoch"] == final["best_epoch"]
        assert all(torch.isfinite(t).all() for t in module.state_dict().values() if t.is_floating_point())
        history = {h["epoch"]: h for h in results["history"]}
        assert np.isfinite(history[final["best_epoch"]]["loss"]["total"])
    if os.path.exists(os.path.join(output, STATE_FILE)):
        state = load_state(output)
        assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    for entry in results["history"]:
        assert all(np.isfinite(v) for v in entry["loss"].values())


def test_a_nan_grl_coefficient_is_refused_before_anything_is_written(tmp_path):
    folder = write_toy_folder(tmp_path / "data")
    with pytest.raises(Exception, match="--grl-coefficient"):
        run(Config(**SETTINGS, grl_coefficient=float("nan"), output=str(tmp_path / "out")), folder, *PREFIXES)
    assert not os.path.exists(tmp_path / "out")


def test_on_step_is_called_after_every_step(data):
    seed_everything(0)
    setup = build_setup(Config(**SETTINGS), data, torch.device("cpu"))
    calls = []
    train_one_epoch(setup, 1, on_step=lambda step, steps: calls.append((step, steps)))
    steps = len(range(0, len(data.modalities[0].splits["train"]), SETTINGS["batch_size"]))
    assert calls == [(step, steps) for step in range(1, steps + 1)]


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
        check_config(Config(**TOY_SETTINGS, score_test=False, test_every_epoch=True))
