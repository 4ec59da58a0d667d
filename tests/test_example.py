"""The embedded example the README's first command builds, and make_example.py's refusals."""
import os

import numpy as np
import pytest
from toy import folder_snapshot, refused

from discomkd.commands import make_example
from discomkd.commands.make_example import make_digits_example
from discomkd.data.folder import load_data_folder
from discomkd.utils.errors import DataError


def test_example_is_a_valid_two_modality_folder(tmp_path):
    make_digits_example(str(tmp_path))
    data = load_data_folder(str(tmp_path), "IMAGE", "PROJ")
    assert [m.sample_shape for m in data.modalities] == [(1, 24, 24), (32,)]
    assert [m.encoder for m in data.modalities] == ["resnet18", "mlp"]
    assert data.classes.tolist() == list(range(10))
    sizes = {split: len(rows) for split, rows in data.modalities[0].splits.items()}
    assert sizes == {"train": 1259, "valid": 179, "test": 359}  # stratified 70/10/20 of 1,797 digits
    image = np.load(tmp_path / "IMAGE_data_normalized.npy")
    assert abs(float(image.mean())) < 0.05 and 1.0 < float(image.std()) < 1.3  # standardised, plus noise


def test_example_is_reproducible_and_never_overwrites(tmp_path):
    make_digits_example(str(tmp_path / "a"))
    make_digits_example(str(tmp_path / "b"))
    for name in ("IMAGE_data_normalized", "PROJ_data_normalized", "labels", "train_idx"):
        assert np.array_equal(np.load(tmp_path / "a" / f"{name}.npy"), np.load(tmp_path / "b" / f"{name}.npy"))
    with pytest.raises(DataError, match="exists"):
        make_digits_example(str(tmp_path / "a"))


def test_make_example_help_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        make_example.main(["--help"])
    assert exit_info.value.code == 0 and "--overwrite" in capsys.readouterr().out
    assert os.listdir(tmp_path) == []


def test_make_example_refuses_a_folder_with_files_and_an_impossible_folder(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("x")
    for folder, expected in ((tmp_path / "full", "--overwrite"), (tmp_path / "file" / "sub", "not a folder"),
                             (tmp_path / "file", "not a folder"), ("/proc/example", "/proc")):
        before = folder_snapshot(tmp_path)
        refused(make_example.main([str(folder)]), capsys, before, folder_snapshot(tmp_path), expected)


def test_make_example_overwrite_keeps_other_files(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert make_example.main([str(tmp_path), "--overwrite"]) == 0
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "labels.npy").is_file()
