"""make_splits.py: a stratified split written whole or not at all, and its refusals."""
import os

import numpy as np
import pytest
from toy import PREFIXES, folder_snapshot, refused, write_toy_folder

from discomkd.commands import make_splits
from discomkd.utils.errors import NoSpaceError


@pytest.fixture
def folder(tmp_path):
    return write_toy_folder(tmp_path / "data", PREFIXES, n=30)


def test_make_splits_writes_stratified_disjoint_splits_and_refuses_to_overwrite(tmp_path, capsys):
    folder = str(tmp_path)
    labels = np.repeat([3, 7, 9], [50, 30, 20])
    np.save(os.path.join(folder, "labels.npy"), labels)
    assert make_splits.main([folder, "--seed", "4"]) == 0
    split = {s: np.load(os.path.join(folder, f"{s}_idx.npy")) for s in ("train", "valid", "test")}
    assert np.array_equal(np.sort(np.concatenate(list(split.values()))), np.arange(len(labels)))
    counts = {s: [int((labels[rows] == v).sum()) for v in (3, 7, 9)] for s, rows in split.items()}
    assert counts == {"train": [35, 21, 14], "valid": [5, 3, 2], "test": [10, 6, 4]}
    capsys.readouterr()

    before = {s: open(os.path.join(folder, f"{s}_idx.npy"), "rb").read() for s in split}
    assert make_splits.main([folder, "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--overwrite" in err
    assert {s: open(os.path.join(folder, f"{s}_idx.npy"), "rb").read() for s in split} == before

    assert make_splits.main([folder, "--seed", "5", "--fractions", "0.6", "0.2", "0.2", "--overwrite"]) == 0
    train = np.load(os.path.join(folder, "train_idx.npy"))
    assert [int((labels[train] == v).sum()) for v in (3, 7, 9)] == [30, 18, 12]


def test_make_splits_bad_input(tmp_path, capsys):
    np.save(tmp_path / "labels.npy", np.arange(10.0))
    assert make_splits.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'labels.npy'}: labels must be")
    np.save(tmp_path / "labels.npy", np.arange(10))
    assert make_splits.main([str(tmp_path), "--fractions", "0.5", "0.5", "0.5"]) == 2
    assert "--fractions" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["labels.npy"]


@pytest.mark.parametrize("fractions", [["nan", "0.5", "0.5"], ["inf", "0", "0"], ["0.5", "0.5", "0"],
                                       ["0.7", "0.1", "0.1"], ["-0.2", "0.6", "0.6"], ["1e308", "1e308", "1e308"]])
def test_make_splits_validates_fractions(folder, capsys, fractions):
    for name in ("train_idx.npy", "valid_idx.npy", "test_idx.npy"):
        os.remove(os.path.join(folder, name))
    before = folder_snapshot(folder)
    refused(make_splits.main([folder, "--fractions", *fractions]), capsys, before, folder_snapshot(folder),
            "--fractions")


def test_make_splits_checks_every_target_before_replacing_any(folder, capsys):
    valid = os.path.join(folder, "valid_idx.npy")
    os.remove(valid)
    os.mkdir(valid)
    before = {name: open(os.path.join(folder, name), "rb").read() for name in ("train_idx.npy", "test_idx.npy")}
    snapshot = folder_snapshot(folder)
    refused(make_splits.main([folder, "--overwrite", "--seed", "5"]), capsys, snapshot, folder_snapshot(folder),
            valid, "folder")
    assert {name: open(os.path.join(folder, name), "rb").read() for name in before} == before


def test_make_splits_refuses_seeds_numpy_cannot_use(folder, capsys):
    before = folder_snapshot(folder)
    refused(make_splits.main([folder, "--overwrite", "--seed", "-1"]), capsys, before, folder_snapshot(folder),
            "--seed")


def test_make_splits_writes_all_three_or_none(folder, monkeypatch):
    """A write that fails midway (disk full on the last file) leaves the previous split whole."""
    before = folder_snapshot(folder)
    names = ("train_idx.npy", "valid_idx.npy", "test_idx.npy")
    contents = {n: open(os.path.join(folder, n), "rb").read() for n in names}
    saves = [0]
    real_save = np.save

    def failing_save(handle, values):
        saves[0] += 1
        if saves[0] == 3:
            raise OSError(28, "No space left on device")
        real_save(handle, values)

    monkeypatch.setattr(make_splits.np, "save", failing_save)
    with pytest.raises((OSError, NoSpaceError)):  # atomic_write says which file the full disk stopped
        make_splits.make_splits(folder, seed=3, overwrite=True)
    assert folder_snapshot(folder) == before
    assert {n: open(os.path.join(folder, n), "rb").read() for n in contents} == contents
