"""prepare_data.py's output folder: --overwrite replaces prepare's own files only, a symbolic link is written
through, a full disk is one line and leaves nothing, the folder gets a plain mkdir's permissions."""
import errno
import os
import re

import numpy as np
import pytest
from toy import folder_snapshot, refused, write_sample_folders

from discomkd.commands.prepare import main as prepare_main
from discomkd.data.folder import load_data_folder
from discomkd.preparing import output as prepared_output


def prepare(tmp_path, output, *options):
    """prepare_data.py on the sample folders under tmp_path/inputs (written on first use)."""
    if not (tmp_path / "inputs").exists():
        write_sample_folders(tmp_path / "inputs")
    inputs = tmp_path / "inputs"
    return prepare_main([str(output), "--modality", f"A={inputs / 'a'}", "--modality", f"B={inputs / 'b'}", *options])


def hidden_entries(folder) -> list[str]:
    """Hidden files or folders anywhere under `folder` (a temporary folder left behind)."""
    return [os.path.join(root, name) for root, folders, names in os.walk(folder)
            for name in folders + names if name.startswith(".")]


def test_overwrite_refuses_while_the_folder_holds_a_trained_run(tmp_path, capsys):
    """Training writes into the data folder by default: --overwrite must never delete those runs."""
    out = tmp_path / "out"
    assert prepare(tmp_path, out) == 0
    run = out / "DisCoM-KD_A_B"
    run.mkdir()
    (run / "results.json").write_text("{}")
    (run / "best_A.pt").write_bytes(b"weights")
    capsys.readouterr()
    before = folder_snapshot(tmp_path)
    line = refused(prepare(tmp_path, out, "--overwrite", "--seed", "3"), capsys, before, folder_snapshot(tmp_path),
                   str(run), "did not write")
    assert "move them out" in line
    # prepare's own files alone are replaced, leftovers of a crashed write included
    run.joinpath("results.json").unlink()
    run.joinpath("best_A.pt").unlink()
    run.rmdir()
    (out / ".tmp-abc-labels.npy").write_bytes(b"")
    assert prepare(tmp_path, out, "--overwrite", "--seed", "3") == 0
    assert not (out / ".tmp-abc-labels.npy").exists() and hidden_entries(tmp_path) == []


def test_an_output_given_as_a_symbolic_link_is_written_through(tmp_path, capsys):
    target = tmp_path / "real"
    link = tmp_path / "link"
    assert prepare(tmp_path, target) == 0
    first = np.load(target / "train_idx.npy")
    link.symlink_to(target, target_is_directory=True)
    assert prepare(tmp_path, link, "--overwrite", "--seed", "5") == 0
    assert link.is_symlink() and os.readlink(link) == str(target)  # the link kept, its target replaced
    assert not np.array_equal(np.load(target / "train_idx.npy"), first)
    assert load_data_folder(str(link), "A", "B").warnings == []
    assert hidden_entries(tmp_path) == []  # no .old-prepare-* nor .tmp-prepare-* left
    capsys.readouterr()
    (tmp_path / "links").mkdir()
    broken = tmp_path / "links" / "broken"
    broken.symlink_to(tmp_path / "nowhere")
    before = folder_snapshot(tmp_path / "inputs")  # (a snapshot cannot stat the broken link)
    refused(prepare(tmp_path, broken, "--overwrite"), capsys, before, folder_snapshot(tmp_path / "inputs"),
            str(broken), "does not exist")
    assert os.listdir(tmp_path / "links") == ["broken"] and not (tmp_path / "nowhere").exists()


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    """The arrays' space is reserved (posix_fallocate) before they are written through memory maps: a full disk
    is an error there, not a SIGBUS while writing, and the folder being built is removed."""
    write_sample_folders(tmp_path / "inputs")

    def full(descriptor, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    before = folder_snapshot(tmp_path)
    line = refused(prepare(tmp_path, tmp_path / "out"), capsys, before, folder_snapshot(tmp_path),
                   "no space left on device: needs ")
    assert line.startswith(f"error: {tmp_path / 'out'}: ") and re.search(r"needs [1-9][0-9.]* (bytes|KiB|MiB)$", line)
    assert not (tmp_path / "out").exists() and hidden_entries(tmp_path) == []


def test_too_little_free_space_is_refused_before_writing(tmp_path, capsys, monkeypatch):
    write_sample_folders(tmp_path / "inputs")
    usage = prepared_output.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(prepared_output.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    before = folder_snapshot(tmp_path)
    line = refused(prepare(tmp_path, tmp_path / "out"), capsys, before, folder_snapshot(tmp_path),
                   "no space left on device: needs ", ", 1000 bytes free")
    # a few KiB are said as such: neither needed nor free space rounds to 0 (it once read "needs 1 MB, 0 MB free")
    assert re.search(r"needs [1-9][0-9.]* KiB, 1000 bytes free$", line), line


def test_where_space_cannot_be_allocated_zeros_are_written(tmp_path, monkeypatch):
    """A file system without fallocate (EOPNOTSUPP) gets the same reservation by writing zeros: same data."""
    assert prepare(tmp_path, tmp_path / "plain") == 0
    calls = []

    def unsupported(descriptor, offset, length):
        calls.append(length)
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    assert prepare(tmp_path, tmp_path / "zeros") == 0
    assert len(calls) == 2
    for name in os.listdir(tmp_path / "plain"):
        assert (tmp_path / "zeros" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_the_folder_gets_the_permissions_of_a_plain_mkdir(tmp_path, mask):
    previous = os.umask(mask)
    try:
        assert prepare(tmp_path, tmp_path / "out") == 0
    finally:
        os.umask(previous)
    assert os.stat(tmp_path / "out").st_mode & 0o777 == 0o777 & ~mask


def test_an_output_inside_an_input_folder_is_refused(tmp_path, capsys):
    """It would be read as a class folder by the next prepare."""
    write_sample_folders(tmp_path / "inputs")
    before = folder_snapshot(tmp_path)
    inside = tmp_path / "inputs" / "a" / "prepared"
    refused(prepare(tmp_path, inside), capsys, before, folder_snapshot(tmp_path), "inside the input folder")
    assert not inside.exists()
