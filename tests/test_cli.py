"""End-to-end runs of main_DisCoM-KD.py on learnable toy data: accuracy, outputs, checkpoints, seeding."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from toy import PREFIXES, ROOT, folder_snapshot, write_toy_folder

from discomkd.run_files import load_classifier
from model_pytorch import LOSS_TERMS

LABEL_VALUES = [10, 20, 30]  # labels need not be 0..K-1
EPOCHS = 4
# 2e-3 instead of the paper's 1e-4 so that 4 short epochs (24 steps) learn; no image augmentation because the toy
# classes are arbitrary pixel patterns that flips and rotations would scramble
OPTIONS = ["--epochs", str(EPOCHS), "--batch-size", "16", "--encoder-first", "lenet", "--augment-first", "none",
           "--learning-rate", "2e-3", "--seed", "0", "--device", "cpu"]
CHANCE = 1 / len(LABEL_VALUES)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One real command-line run, in its own process, into the default output folder."""
    folder = write_toy_folder(tmp_path_factory.mktemp("cli") / "data", n=120, label_values=LABEL_VALUES)
    completed = subprocess.run([sys.executable, "main_DisCoM-KD.py", folder, *PREFIXES, *OPTIONS],
                               cwd=ROOT, capture_output=True, text=True, timeout=300)
    output = os.path.join(folder, "DisCoM-KD_IMG_VEC")
    return folder, output, completed


def read_results(output):
    with open(os.path.join(output, "results.json")) as handle:
        return json.load(handle)


def test_run_finishes_and_both_modalities_beat_chance(finished_run):
    _, output, completed = finished_run
    assert completed.returncode == 0, completed.stderr
    assert "Traceback" not in completed.stderr
    results = read_results(output)
    assert results["status"] == "finished"
    assert [entry["epoch"] for entry in results["history"]] == list(range(1, EPOCHS + 1))
    for entry in results["history"]:
        assert set(entry["loss"]) == set(LOSS_TERMS) | {"total"}
        assert all(np.isfinite(value) for value in entry["loss"].values())
    assert set(results["final"]) == set(PREFIXES)
    for prefix in PREFIXES:
        final = results["final"][prefix]
        assert 1 <= final["best_epoch"] <= EPOCHS
        assert final["test"]["weighted_f1"] > 0.7, (prefix, final["test"])
        assert final["test"]["accuracy"] > CHANCE + 0.3, (prefix, final["test"])
        assert os.path.isfile(os.path.join(output, f"best_{prefix}.pt"))
    # one line per epoch, then the summary table naming both modalities
    epoch_lines = [line for line in completed.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == EPOCHS
    table = completed.stdout.split("\n\n")[-1]
    assert all(any(line.startswith(prefix) for line in table.splitlines()) for prefix in PREFIXES)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_test_predictions_hold_the_users_labels(finished_run, prefix):
    folder, output, _ = finished_run
    predictions = np.load(os.path.join(output, f"test_predictions_{prefix}.npy"))
    test_rows = np.load(os.path.join(folder, "test_idx.npy"))
    labels = np.load(os.path.join(folder, "labels.npy"))
    assert predictions.shape == test_rows.shape
    assert set(np.unique(predictions)) <= set(LABEL_VALUES)
    # the saved predictions are the ones the reported test accuracy was computed from
    accuracy = float(np.mean(predictions == labels[test_rows]))
    assert accuracy == pytest.approx(read_results(output)["final"][prefix]["test"]["accuracy"])


@pytest.mark.parametrize("prefix", PREFIXES)
def test_reloaded_checkpoint_reproduces_the_saved_test_predictions(finished_run, prefix):
    folder, output, _ = finished_run
    branch, checkpoint = load_classifier(os.path.join(output, f"best_{prefix}.pt"))
    assert checkpoint["classes"] == LABEL_VALUES
    assert checkpoint["prefix"] == prefix
    assert checkpoint["epoch"] == read_results(output)["final"][prefix]["best_epoch"]
    test_rows = np.load(os.path.join(folder, "test_idx.npy"))
    x = torch.from_numpy(np.load(os.path.join(folder, f"{prefix}_data_normalized.npy"))[test_rows])
    with torch.inference_mode():
        predicted = branch(x).logits.argmax(dim=1).numpy()
    saved = np.load(os.path.join(output, f"test_predictions_{prefix}.npy"))
    assert np.array_equal(np.asarray(checkpoint["classes"])[predicted], saved)


def test_same_seed_repeats_the_run_exactly(finished_run, tmp_path, capsys, cli_main):
    folder, output, _ = finished_run
    again = str(tmp_path / "again")
    assert cli_main([folder, *PREFIXES, *OPTIONS, "--output", again, "--quiet"]) == 0
    capsys.readouterr()
    first = [entry["loss"] for entry in read_results(output)["history"]]
    second = [entry["loss"] for entry in read_results(again)["history"]]
    assert first == second
    assert read_results(output)["final"][PREFIXES[0]]["test"] == read_results(again)["final"][PREFIXES[0]]["test"]


def test_existing_output_folder_is_refused_unless_overwrite(finished_run, tmp_path, capsys, cli_main):
    folder, output, _ = finished_run
    before = folder_snapshot(folder)
    assert cli_main([folder, *PREFIXES, *OPTIONS]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and output in lines[0], err
    assert "--overwrite" in lines[0] and "Traceback" not in err and out == ""
    assert folder_snapshot(folder) == before

    # with --overwrite a (small, fast) run replaces the earlier one's files
    small = write_toy_folder(tmp_path / "small", n=30)
    small_output = str(tmp_path / "small_output")
    arguments = [small, *PREFIXES, "--epochs", "1", "--batch-size", "8", "--encoder-first", "lenet",
                 "--device", "cpu", "--output", small_output, "--quiet"]
    assert cli_main(arguments) == 0
    assert cli_main(arguments) == 2
    assert cli_main([*arguments, "--epochs", "2", "--overwrite"]) == 0
    capsys.readouterr()
    results = read_results(small_output)
    assert results["status"] == "finished" and len(results["history"]) == 2
