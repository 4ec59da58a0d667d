"""End-to-end runs of main_DisCoM-KD.py on learnable toy data: accuracy, outputs, checkpoints, seeding,
--overwrite, and stdout written line by line."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from toy import PREFIXES, QUICK_OPTIONS, ROOT, folder_snapshot, read_results, refused, toy_options, write_toy_folder

from discomkd.models.discomkd import LOSS_TERMS
from discomkd.runs import outputs
from discomkd.runs.outputs import load_classifier

LABEL_VALUES = [10, 20, 30]  # labels need not be 0..K-1
EPOCHS = 4
# 2e-3 instead of the paper's 1e-4 so that 4 short epochs (24 steps) learn; no image augmentation because the toy
# classes are arbitrary pixel patterns that flips and rotations would scramble
OPTIONS = toy_options(epochs=EPOCHS, augment_first="none", learning_rate=2e-3, seed=0)
CHANCE = 1 / len(LABEL_VALUES)


@pytest.fixture(scope="module")
def command_line_run(tmp_path_factory):
    """One real command-line run, in its own process, into the default output folder: (data folder, run
    folder, the completed process)."""
    folder = write_toy_folder(tmp_path_factory.mktemp("cli") / "data", n=120, label_values=LABEL_VALUES)
    completed = subprocess.run([sys.executable, "main_DisCoM-KD.py", folder, *PREFIXES, *OPTIONS],
                               cwd=ROOT, capture_output=True, text=True, timeout=300)
    output = os.path.join(folder, "DisCoM-KD_IMG_VEC")
    return folder, output, completed


def test_run_finishes_and_both_modalities_beat_chance(command_line_run):
    _, output, completed = command_line_run
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
def test_test_predictions_hold_the_users_labels(command_line_run, prefix):
    folder, output, _ = command_line_run
    predictions = np.load(os.path.join(output, f"test_predictions_{prefix}.npy"))
    test_rows = np.load(os.path.join(folder, "test_idx.npy"))
    labels = np.load(os.path.join(folder, "labels.npy"))
    assert predictions.shape == test_rows.shape
    assert set(np.unique(predictions)) <= set(LABEL_VALUES)
    # the saved predictions are the ones the reported test accuracy was computed from
    accuracy = float(np.mean(predictions == labels[test_rows]))
    assert accuracy == pytest.approx(read_results(output)["final"][prefix]["test"]["accuracy"])


@pytest.mark.parametrize("prefix", PREFIXES)
def test_reloaded_checkpoint_reproduces_the_saved_test_predictions(command_line_run, prefix):
    folder, output, _ = command_line_run
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


def test_same_seed_repeats_the_run_exactly(command_line_run, tmp_path, capsys, cli_main):
    folder, output, _ = command_line_run
    again = str(tmp_path / "again")
    assert cli_main([folder, *PREFIXES, *OPTIONS, "--output", again, "--quiet"]) == 0
    capsys.readouterr()
    first = [entry["loss"] for entry in read_results(output)["history"]]
    second = [entry["loss"] for entry in read_results(again)["history"]]
    assert first == second
    assert read_results(output)["final"][PREFIXES[0]]["test"] == read_results(again)["final"][PREFIXES[0]]["test"]


# ----------------------------------------------------------------------------- --overwrite
def test_existing_output_folder_is_refused_unless_overwrite(command_line_run, tmp_path, capsys, cli_main):
    folder, output, _ = command_line_run
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
    arguments = [small, *PREFIXES, *QUICK_OPTIONS, "--output", small_output]
    assert cli_main(arguments) == 0
    assert cli_main(arguments) == 2
    assert cli_main([*arguments, "--epochs", "2", "--overwrite"]) == 0
    capsys.readouterr()
    results = read_results(small_output)
    assert results["status"] == "finished" and len(results["history"]) == 2


def test_overwrite_removes_an_earlier_runs_outputs_and_nothing_else(cli_main, tmp_path, capsys):
    folder = write_toy_folder(tmp_path / "data", PREFIXES, n=30)
    output = os.path.join(folder, "DisCoM-KD_IMG_VEC")
    os.makedirs(os.path.join(output, "figures"))
    stale = ["probes.json", "best_OLD.pt", "test_predictions_OLD.npy", "state.pt", "figures/tsne.png",
             "figures/confusion_OLD.png", "results.json"]
    for name in stale + ["notes.txt"]:
        with open(os.path.join(output, name), "w") as handle:
            handle.write("earlier")
    # a refused run removes nothing
    before = folder_snapshot(folder)
    refused(cli_main([folder, *PREFIXES, *QUICK_OPTIONS, "--overwrite", "--augment-first", "shift"]), capsys, before,
            folder_snapshot(folder), "--augment-first")
    assert cli_main([folder, *PREFIXES, *QUICK_OPTIONS, "--overwrite"]) == 0
    left = sorted(os.listdir(output))
    assert left == ["best_IMG.pt", "best_VEC.pt", "notes.txt", "results.json", "test_predictions_IMG.npy",
                    "test_predictions_VEC.npy"], left
    assert read_results(output)["status"] == "finished"


def test_clear_run_outputs_keeps_a_figures_folder_holding_other_files(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "tsne.png").write_text("x")
    (tmp_path / "figures" / "mine.png").write_text("x")
    assert outputs.clear_run_outputs(str(tmp_path)) == [str(tmp_path / "figures" / "tsne.png")]
    assert os.listdir(tmp_path / "figures") == ["mine.png"]


# ----------------------------------------------------------------------------- line-buffered output
def test_stdout_redirected_to_a_file_gets_each_epoch_line_at_once(tmp_path):
    folder = write_toy_folder(tmp_path / "data", PREFIXES, n=30)
    log = tmp_path / "train.log"
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, os.path.join(ROOT, "main_DisCoM-KD.py"), folder, *PREFIXES,
                                    *toy_options(epochs=1000, batch_size=8)], stdout=handle, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None and "epoch    1/1000" not in log.read_text():
            time.sleep(0.1)
        assert process.poll() is None, "the run ended before its first epoch line reached the file"
        assert "epoch    1/1000" in log.read_text()
    finally:
        process.kill()
        process.wait()
