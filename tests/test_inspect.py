"""inspect_run.py: features of a finished run, disentanglement probes, figures."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from toy import PREFIXES, folder_snapshot, read_results, refused, toy_options, write_toy_folder

from discomkd.analysis.figures import MISSING_MATPLOTLIB
from discomkd.analysis.inspection import load_run
from discomkd.commands import compare
from discomkd.commands.inspect_run import main
from discomkd.evaluation.probes import PARTS, probe_accuracy
from discomkd.runs.outputs import PROBES_FILE
from discomkd.training.inference import feature_parts
from discomkd.utils.errors import DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ("training_curves.png", "confusion_IMG.png", "confusion_VEC.png", "tsne.png")


def two_modalities(shift: float, rows: int = 200, dims: int = 16, seed: int = 0):
    """Pooled features of two modalities (rows each), the second's mean shifted by `shift`."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((2 * rows, dims))
    features[rows:] += shift
    return features, np.repeat([0, 1], rows)


def test_probe_is_at_chance_on_modality_free_features():
    mean, std = probe_accuracy(*two_modalities(shift=0.0))
    assert abs(mean - 0.5) < 0.15 and std < 0.15


def test_probe_finds_a_shifted_modality():
    mean, _ = probe_accuracy(*two_modalities(shift=3.0))
    assert mean > 0.95


def test_probe_is_repeatable_with_its_seed():
    features, targets = two_modalities(shift=0.3)
    assert probe_accuracy(features, targets, seed=1) == probe_accuracy(features, targets, seed=1)


def test_features_reproduce_the_runs_test_predictions(toy_run):
    folder, output = toy_run
    _, data = load_run(output)
    features = feature_parts(output, data)
    for prefix in PREFIXES:
        parts = features[prefix]
        test_rows = np.load(os.path.join(folder, "test_idx.npy"))
        for part in PARTS:
            assert parts[part].shape == (len(test_rows), 256) and np.isfinite(parts[part]).all()
        saved = np.load(os.path.join(output, f"test_predictions_{prefix}.npy"))
        np.testing.assert_array_equal(data.classes[parts["predicted"]], saved)
        np.testing.assert_array_equal(parts["labels"], data.labels[test_rows])


def copy_run(output, destination):
    """A copy of the run folder's files (not its figures or probes), so a test starts from a clean run."""
    destination.mkdir()
    for name in os.listdir(output):
        if os.path.isfile(os.path.join(output, name)) and name != PROBES_FILE:
            with open(os.path.join(output, name), "rb") as handle:
                (destination / name).write_bytes(handle.read())
    return str(destination)


def test_probes_are_written_and_printed(toy_run, tmp_path, capsys):
    output = copy_run(toy_run[1], tmp_path / "run")
    assert main([output, "--no-figures"]) == 0
    with open(os.path.join(output, PROBES_FILE)) as handle:
        probes = json.load(handle)
    for part in PARTS:
        assert 0 <= probes["modality"][part]["mean"] <= 1
        for prefix in PREFIXES:
            assert 0 <= probes["class"][prefix][part]["mean"] <= 1
    # lenet and MLP features after 2 epochs: the modality-specific parts tell the modalities apart
    assert probes["modality"]["informative"]["mean"] > 0.9
    assert probes["rows"]["modality"] == 2 * probes["rows"]["IMG"]
    assert probes["chance"]["modality"] == 0.5
    printed = capsys.readouterr().out
    assert f"{probes['modality']['invariant']['mean']:.3f}" in printed and "irrelevant" in printed
    # the probes say which checkpoints they describe: each modality's best epoch, as results.json has it
    final = read_results(output)["final"]
    assert probes["checkpoints"]["epochs"] == {prefix: final[prefix]["best_epoch"] for prefix in PREFIXES}
    assert probes["checkpoints"]["run_status"] == "finished"


def test_output_elsewhere_leaves_the_run_folder_as_it_was(toy_run, tmp_path):
    output = copy_run(toy_run[1], tmp_path / "run")
    before = folder_snapshot(output)
    assert main([output, "--no-figures", "--output", str(tmp_path / "inspected")]) == 0
    assert folder_snapshot(output) == before and os.path.isfile(tmp_path / "inspected" / PROBES_FILE)
    assert not os.path.exists(os.path.join(output, "figures"))


def test_figures_are_valid_pngs(toy_run):
    pytest.importorskip("matplotlib")
    _, output = toy_run
    assert main([output, "--no-probes"]) == 0
    for name in FIGURES:
        with open(os.path.join(output, "figures", name), "rb") as handle:
            content = handle.read()
        assert content[:8] == PNG_SIGNATURE, name
        assert len(content) > 10_000, name  # a drawn figure, not an empty canvas


def test_without_matplotlib_the_figures_are_skipped_and_the_probes_run(toy_run, tmp_path, monkeypatch, capsys):
    copy = copy_run(toy_run[1], tmp_path / "run")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    assert main([copy]) == 0
    assert MISSING_MATPLOTLIB in capsys.readouterr().out and "pip install matplotlib" in MISSING_MATPLOTLIB
    assert os.path.isfile(os.path.join(copy, PROBES_FILE)) and not os.path.exists(os.path.join(copy, "figures"))


def test_a_folder_without_a_run_is_refused_in_one_line(tmp_path, capsys):
    before = folder_snapshot(tmp_path)
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "results.json" in err
    assert folder_snapshot(tmp_path) == before


def test_a_moved_data_folder_is_found_with_data_and_a_changed_one_refused(toy_run, tmp_path):
    folder, output = toy_run
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in os.listdir(folder):
        if name.endswith(".npy"):
            (moved / name).write_bytes((Path(folder) / name).read_bytes())
    _, data = load_run(output, str(moved))
    assert data.directory == str(moved)
    labels = np.load(moved / "labels.npy")
    np.save(moved / "labels.npy", np.roll(labels, 1))  # same classes and shapes, labels on other rows
    with pytest.raises(DataError, match="changed since training"):
        load_run(output, str(moved))


def test_inspect_warns_about_an_untoy_run(toy_run, tmp_path, capsys):
    data, output = toy_run
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    results = read_results(output)
    results["status"] = "interrupted"
    (interrupted / "results.json").write_text(json.dumps(results))
    for name in ("best_IMG.pt", "best_VEC.pt"):
        os.symlink(os.path.join(output, name), interrupted / name)
    assert main([str(interrupted), "--no-figures", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "interrupted" in err and "not finished" in err, err


def test_nothing_to_do_is_refused_in_one_line(toy_run, capsys):
    _, output = toy_run
    before = folder_snapshot(output)
    refused(main([output, "--no-figures", "--no-probes"]), capsys, before, folder_snapshot(output),
            "nothing to do")


def test_a_mono_run_is_read_by_its_own_column_and_refused_for_its_missing_parts(tmp_path, capsys):
    """A mono run has one classifier (best_IMG.pt) and no feature parts: the line says so, instead of
    asking for a best_VEC.pt that such a run never writes."""
    folder = write_toy_folder(tmp_path / "data")
    output = str(tmp_path / "cmp")
    assert compare.main([folder, *PREFIXES, "--methods", "mono", *toy_options(epochs=1), "--output", output]) == 0
    capsys.readouterr()
    run = os.path.join(output, "run_0", "mono_IMG")
    assert sorted(name for name in os.listdir(run) if name.endswith(".pt")) == ["best_IMG.pt"]
    before = folder_snapshot(tmp_path)
    line = refused(main([run, "--device", "cpu"]), capsys, before, folder_snapshot(tmp_path), "a mono run",
                   "classifiers: IMG", "no invariant, informative and irrelevant parts")
    assert "best_VEC.pt" not in line
