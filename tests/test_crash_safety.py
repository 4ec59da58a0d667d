"""Nothing lost: SIGKILL at any moment leaves only complete files, a NaN loss is caught and named,
checkpoints load without running pickled code, and training stays within a memory bound far below
the data's size."""
import dataclasses
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from numpy.lib.format import open_memmap
from toy import PREFIXES, ROOT, TOY_SETTINGS, one_error_line, read_results, toy_arrays, toy_options, write_toy_folder

from discomkd.data.folder import array_path
from discomkd.data.splits import stratified_split
from discomkd.models.discomkd import LOSS_TERMS, ModalityBranch
from discomkd.models.methods import ModelShape, classifier_description
from discomkd.runs import outputs
from discomkd.runs.outputs import CHECKPOINT_FORMAT, STATE_FILE, checkpoint_payload, load_classifier, load_state
from discomkd.runs.ownership import LOCK_FILE, holder
from discomkd.training import epoch
from discomkd.training.config import Config
from discomkd.training.run import run
from discomkd.utils.errors import DataError, TrainingError
from discomkd.utils.files import write_payload


# ----------------------------------------------------------------------------- SIGKILL at random moments
def check_every_file_is_complete(output: str) -> list[str]:
    """Loads every file of a run folder the way its readers do; returns the final names found.

    Temporary `.tmp-*` files of an interrupted atomic write may remain, and the lock file (no longer
    held); no final name may be partial.
    """
    names = sorted(os.listdir(output)) if os.path.isdir(output) else []
    final = [name for name in names if not name.startswith(".tmp-")]
    for name in final:
        path = os.path.join(output, name)
        if name == "results.json":
            results = read_results(output)
            assert results["status"] in ("running", "finished"), results["status"]
        elif name == STATE_FILE:
            assert load_state(output)["epoch"] >= 2
        elif name.startswith("best_") and name.endswith(".pt"):
            branch, checkpoint = load_classifier(path)
            assert checkpoint["prefix"] == name[len("best_"):-len(".pt")]
        elif name.startswith("test_predictions_") and name.endswith(".npy"):
            assert np.load(path, allow_pickle=False).ndim == 1
        elif name == LOCK_FILE:  # left by the killed process, whose lock the kernel released
            assert holder(output) is None
        else:
            raise AssertionError(f"{path}: unexpected file in a run folder")
    return final


# Runs the CLI's main() in processes forked from one that has imported everything; each killed child
# SIGKILLs itself inside its k-th file replacement (every file a run writes goes through
# outputs.atomic_write, which ends in os.replace): just before the rename, or with the temporary file
# cut to half its size (a kill in the middle of writing it). No handler runs, as with a real kill -9.
# Prints one JSON line per run: {"kill_at", "mode", "exit", "replacements"}.
KILLER = r"""
import json, os, signal, sys
from discomkd.commands import train as cli
arguments, runs = json.loads(sys.argv[1])
real_replace = os.replace


def child(output, kill_at, mode):
    count = [0]

    def replace(source, destination):
        count[0] += 1
        if count[0] == kill_at:
            if mode == "mid-write":
                os.truncate(source, os.path.getsize(source) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(source, destination)

    os.replace = replace
    silent = os.open(os.devnull, os.O_WRONLY)
    os.dup2(silent, 1)
    os.dup2(silent, 2)
    status = cli.main(arguments + ["--output", output])
    with open(output + ".replacements", "w") as handle:  # how many a whole run makes
        handle.write(str(count[0]))
    os._exit(status)


for output, kill_at, mode in runs:
    pid = os.fork()
    if pid == 0:  # the parent only imported modules: no thread pool exists yet for the fork to break
        child(output, kill_at, mode)
    _, status = os.waitpid(pid, 0)
    replacements = open(output + ".replacements").read() if os.path.exists(output + ".replacements") else None
    print(json.dumps({"kill_at": kill_at, "mode": mode, "exit": os.waitstatus_to_exitcode(status),
                      "replacements": replacements}), flush=True)
"""
# (k-th replacement, how): the first ones fall on epoch 1's checkpoints and results (before any
# state.pt), later ones on the checkpoints, results and state files of later epochs.
KILLS = [(1, "before-rename"), (3, "mid-write"), (6, "before-rename"), (10, "mid-write"), (15, "before-rename")]


def test_sigkill_inside_file_replacements_leaves_only_complete_files_and_resumes_exactly(tmp_path, cli_main,
                                                                                           capsys):
    folder = write_toy_folder(tmp_path / "data", n=60)
    arguments = [folder, *PREFIXES, *toy_options(epochs=6, learning_rate=2e-3), "--save-every", "1", "--quiet"]
    reference = str(tmp_path / "reference")
    runs = [[reference, 0, "none"]] + [[str(tmp_path / f"killed{k}-{mode}"), k, mode] for k, mode in KILLS]
    completed = subprocess.run([sys.executable, "-c", KILLER, json.dumps([arguments, runs])],
                               cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    full, *killed = [json.loads(line) for line in completed.stdout.splitlines()]
    assert full["exit"] == 0 and int(full["replacements"]) > max(k for k, _ in KILLS)
    assert all(kill["exit"] == -9 for kill in killed), killed
    expected = read_results(reference)

    outcomes = []
    for (output, kill_at, mode), kill in zip(runs[1:], killed):
        names = check_every_file_is_complete(output)
        temporaries = len(os.listdir(output)) - len(names)
        epochs_done = len(read_results(output)["history"]) if "results.json" in names else 0
        if STATE_FILE in names:
            assert cli_main(["--resume", output]) == 0
            capsys.readouterr()
            results = read_results(output)
            assert results["status"] == "finished"
            assert [h["loss"] for h in results["history"]] == [h["loss"] for h in expected["history"]]
            assert results["final"] == expected["final"], "the resumed run must end where the uninterrupted one did"
            assert check_every_file_is_complete(output) and not os.path.exists(os.path.join(output, STATE_FILE))
            assert not any(name.startswith(".tmp-") for name in os.listdir(output)), "resume removes temporaries"
            outcome = "resumed to the uninterrupted run's exact results"
        else:
            # killed before the first state.pt: resuming is refused with one line; a fresh run is needed
            assert cli_main(["--resume", output]) == 2
            assert STATE_FILE in one_error_line(capsys.readouterr().err)
            outcome = "killed before the first state.pt (resume refused, exit 2)"
        outcomes.append(f"killed in replacement {kill_at} ({mode}): {epochs_done} epoch(s) recorded, files {names}, "
                        f"{temporaries} temporary file(s) left: {outcome}")
    print("\n" + "\n".join(outcomes))
    assert sum("resumed" in o for o in outcomes) >= 3 and "refused" in outcomes[0], outcomes


# ----------------------------------------------------------------------------- NaN in a batch
EPOCHS_NAN = 3
CONFIG = Config(**{**TOY_SETTINGS, "epochs": EPOCHS_NAN, "learning_rate": 2e-3}, augment_first="none", verbose=0)
ROWS = 72  # 51 training rows: 4 steps per epoch
STEPS_PER_EPOCH = 4


@pytest.fixture
def nan_in_epoch_2(monkeypatch):
    """Puts one NaN into the first modality's batch at the second step of epoch 2."""
    calls = [0]
    augment = epoch.augment
    poisoned = 2 * (STEPS_PER_EPOCH + 1)  # augment runs twice per step, first modality first

    def poisoning(x, mode, generator=None):
        calls[0] += 1
        x = augment(x, mode, generator)
        if calls[0] == poisoned + 1:
            x = x.clone()
            x[0].view(-1)[5] = float("nan")
        return x

    monkeypatch.setattr(epoch, "augment", poisoning)
    return calls


def test_nan_in_a_batch_stops_training_naming_the_term_and_epoch(tmp_path, nan_in_epoch_2):
    folder = write_toy_folder(tmp_path / "data", n=ROWS)
    output = str(tmp_path / "run")
    with pytest.raises(TrainingError) as failed:
        run(dataclasses.replace(CONFIG, output=output, save_every=1), folder, *PREFIXES)
    message = str(failed.value)
    assert "at epoch 2" in message and "\n" not in message
    assert any(f"loss term {term} is nan" in message for term in LOSS_TERMS + ("total",)), message
    assert nan_in_epoch_2[0] == 2 * 2 * STEPS_PER_EPOCH, "the whole epoch ran; the check is once per epoch"
    results = read_results(output)
    assert results["status"] == "failed" and [h["epoch"] for h in results["history"]] == [1]
    for prefix in PREFIXES:
        branch, checkpoint = load_classifier(os.path.join(output, f"best_{prefix}.pt"))
        assert checkpoint["epoch"] == 1
        assert all(torch.isfinite(p).all() for p in branch.state_dict().values() if p.is_floating_point())
    state = load_state(output)  # the state written after epoch 1, before the NaN reached the weights
    assert state["epoch"] == 2
    assert all(torch.isfinite(p).all() for p in state["model"].values() if p.is_floating_point())


def test_nan_through_the_cli_exits_3_with_one_error_line(tmp_path, nan_in_epoch_2, cli_main, capsys):
    folder = write_toy_folder(tmp_path / "data", n=ROWS)
    output = str(tmp_path / "run")
    status = cli_main([folder, *PREFIXES, *toy_options(epochs=EPOCHS_NAN, learning_rate=2e-3, augment_first="none"),
                       "--output", output, "--quiet"])
    line = one_error_line(capsys.readouterr().err)
    assert status == 3
    assert "epoch 2" in line and output in line
    assert read_results(output)["status"] == "failed"


# ----------------------------------------------------------------------------- safe loading
class Payload:
    """Unpickling this object creates the marker file: code that must never run on load."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_weights_only_loading_refuses_a_crafted_pickle(tmp_path):
    marker = str(tmp_path / "marker")
    checkpoint = str(tmp_path / "best_IMG.pt")
    torch.save({"format": CHECKPOINT_FORMAT, "state_dict": Payload(marker)}, checkpoint)
    run_folder = tmp_path / "run"
    run_folder.mkdir()
    torch.save({"format": outputs.STATE_FORMAT, "model": Payload(marker)}, str(run_folder / STATE_FILE))
    raw = str(tmp_path / "raw.pt")
    with open(raw, "wb") as handle:
        pickle.dump(Payload(marker), handle, protocol=2)

    # the payloads are live: an unsafe load runs them
    torch.load(checkpoint, weights_only=False)
    assert os.path.exists(marker)
    os.remove(marker)

    for path in (checkpoint, raw):
        with pytest.raises(DataError, match="not a loadable DisCoM-KD checkpoint") as refused:
            load_classifier(path)
        assert str(refused.value).startswith(path)
    with pytest.raises(DataError, match="not a loadable DisCoM-KD state"):
        load_state(str(run_folder))
    assert not os.path.exists(marker), "unpickling ran code"


@pytest.fixture
def checkpoint_file(tmp_path):
    """A genuine single-modality checkpoint: image (1, 12, 12), LeNet, 3 classes."""
    branch = ModalityBranch((1, 12, 12), 3, "lenet")
    path = str(tmp_path / "best_IMG.pt")
    description = classifier_description(branch, ModelShape(((1, 12, 12), (6,)), ("lenet", "mlp"), 3), 0)
    write_payload(path, checkpoint_payload(branch, description, {"prefix": "IMG", "position": 0, "classes": [0, 1, 2],
                                                                 "config": dataclasses.asdict(Config()), "epoch": 1,
                                                                 "metrics": {}}))
    return path


def edited(path: str, **changes) -> str:
    """Changes fields of the checkpoint's classifier description (what rebuilds it), or of the
    checkpoint itself for `format`, `classes` and `state_dict`."""
    checkpoint = torch.load(path, weights_only=True)
    for key, value in changes.items():
        (checkpoint if key in ("format", "classes", "state_dict") else checkpoint["classifier"])[key] = value
    torch.save(checkpoint, path)
    return path


def test_checkpoint_loads_and_classifies(checkpoint_file):
    branch, checkpoint = load_classifier(checkpoint_file)
    assert checkpoint["prefix"] == "IMG" and not branch.training
    assert branch(torch.zeros(2, 1, 12, 12)).logits.shape == (2, 3)


@pytest.mark.parametrize("changes, expected", [
    ({"format": "discomkd-modality/0"}, "format discomkd-modality/1 expected"),
    ({"encoder": "mlp"}, "do not fit"),  # weights of another architecture
    ({"input_shape": [1, 16, 16]}, "do not fit"),  # LeNet's fully connected layer has another size
    ({"classes": [0, 1, 2, 3]}, "4 classes"),
    ({"num_classes": 4}, "classifier has 4"),
    ({"encoder": "transformer"}, "do not fit"),  # an encoder this code does not know
    ({"kind": "transformer"}, "unknown classifier kind"),
    ({"state_dict": {}}, "do not fit"),
])
def test_mismatched_checkpoint_gives_one_line_naming_the_file(checkpoint_file, changes, expected):
    edited(checkpoint_file, **changes)
    with pytest.raises(DataError) as refused:
        load_classifier(checkpoint_file)
    message = str(refused.value)
    assert message.startswith(checkpoint_file) and expected in message and "\n" not in message


def test_checkpoint_missing_a_field_gives_one_line(checkpoint_file):
    checkpoint = torch.load(checkpoint_file, weights_only=True)
    del checkpoint["classifier"]["input_shape"]
    torch.save(checkpoint, checkpoint_file)
    with pytest.raises(DataError) as refused:
        load_classifier(checkpoint_file)
    assert str(refused.value).startswith(checkpoint_file) and "input_shape" in str(refused.value)


# ----------------------------------------------------------------------------- memory bound
# RLIMIT_DATA counts anonymous (heap) memory, not read-only file mappings: a memory-mapped array
# costs nothing against it, a copy in memory costs its size. torch and scikit-learn import in ~400 MB.
DATA_LIMIT = 800 << 20
ARRAY_BYTES = 4 << 30  # five times the limit
SAMPLE_SHAPE = (4, 16, 16)  # 4 KiB per row: ~1M rows, so labels.npy stays small (8 MiB)
USED_ROWS = 300


def limited(limit: int):
    """A preexec_fn limiting the child process's data segment to `limit` bytes."""
    def apply():
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    return apply


@pytest.fixture(scope="module")
def sparse_folder(tmp_path_factory):
    """A 4 GiB image array of zeros (a sparse file: no disk used) with a few hundred real rows at
    scattered positions, labels for every row, and splits over the real rows only."""
    folder = tmp_path_factory.mktemp("sparse")
    rows = ARRAY_BYTES // (4 * int(np.prod(SAMPLE_SHAPE)))
    images = open_memmap(array_path(str(folder), "IMG"), mode="w+", dtype=np.float32, shape=(rows, *SAMPLE_SHAPE))
    vectors = open_memmap(array_path(str(folder), "VEC"), mode="w+", dtype=np.float32, shape=(rows, 6))
    (real_images, real_vectors), real_labels = toy_arrays(USED_ROWS, (SAMPLE_SHAPE, (6,)))
    used = np.sort(np.random.default_rng(0).choice(rows, USED_ROWS, replace=False))
    images[used], vectors[used] = real_images, real_vectors
    images.flush()
    vectors.flush()
    del images, vectors
    labels = np.zeros(rows, dtype=np.int64)
    labels[used] = real_labels
    np.save(folder / "labels.npy", labels)
    for split, positions in stratified_split(real_labels, 0).items():
        np.save(folder / f"{split}_idx.npy", used[positions])
    allocated = os.stat(array_path(str(folder), "IMG")).st_blocks * 512
    if allocated > ARRAY_BYTES // 10:
        shutil.rmtree(folder)
        pytest.skip(f"the file system of {folder} does not keep sparse files ({allocated} bytes allocated)")
    yield str(folder)
    shutil.rmtree(folder)  # a 4 GiB file, even sparse, should not outlive the test


def test_reading_the_array_into_memory_fails_under_the_limit(sparse_folder):
    """The control: the limit is real, so the training runs below prove the array is never loaded."""
    script = f"import numpy as np; np.load({array_path(sparse_folder, 'IMG')!r})"
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                               preexec_fn=limited(DATA_LIMIT))
    assert completed.returncode != 0 and "MemoryError" in completed.stderr, completed.stderr[-500:]


@pytest.mark.parametrize("on_device", ["no", "auto"])
def test_training_on_an_array_larger_than_the_memory_limit(sparse_folder, tmp_path, on_device):
    output = str(tmp_path / "run")
    completed = subprocess.run([sys.executable, "main_DisCoM-KD.py", sparse_folder, *PREFIXES,
                                *toy_options(epochs=1, learning_rate=2e-3), "--data-on-device", on_device,
                                "--output", output],
                               cwd=ROOT, capture_output=True, text=True, timeout=300, preexec_fn=limited(DATA_LIMIT))
    assert completed.returncode == 0, completed.stderr[-2000:]
    results = read_results(output)
    assert results["status"] == "finished"
    assert results["environment"]["data_on_device"] == {p: on_device == "auto" for p in PREFIXES}
    assert results["data"]["modalities"][0]["rows"] == {s: len(np.load(os.path.join(sparse_folder, f"{s}_idx.npy")))
                                                        for s in ("train", "valid", "test")}

