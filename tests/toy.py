"""Toy data folders for the tests, written by the same layout rules the suite reads (data.py)."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import tempfile

import numpy as np

from discomkd.data.folder import array_path
from discomkd.data.splits import stratified_split
from discomkd.training.config import Config
from discomkd.training.run import run
from discomkd.training.settings_file import command_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: the commands live here
PREFIXES = ("IMG", "VEC")  # the toy folder's modalities: (1, 12, 12) images and 6-d vectors
TOY_RUN_LABELS = (3, 7, 11)  # the label values of conftest's shared toy run
# The one toy configuration (Config fields): a fast run, LeNet on the small images, on the CPU. A test
# extends it with what it needs, e.g. Config(**{**TOY_SETTINGS, "epochs": 3}, output=...); on a command
# line it is toy_options().
TOY_SETTINGS = dict(epochs=2, batch_size=16, learning_rate=1e-3, encoder_first="lenet", device="cpu")


def toy_options(**changes) -> list[str]:
    """TOY_SETTINGS with `changes` as command-line options, e.g. toy_options(epochs=1) for main_DisCoM-KD.py."""
    return command_line({**TOY_SETTINGS, **changes})


# the cheapest command-line run, for bad inputs: one that is wrongly accepted trains quickly and exits 0
QUICK_OPTIONS = [*toy_options(epochs=1, batch_size=8), "--quiet"]


def toy_arrays(n: int = 120, shapes=((1, 12, 12), (6,)), num_classes: int = 3, separation: float = 2.0,
               seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Learnable two-modality data: each class has its own random mean pattern per modality.

    Returns ([first (n, *shapes[0]), second (n, *shapes[1])] float32, labels (n,) int64 in 0..K-1).
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    arrays = []
    for shape in shapes:
        means = separation * rng.standard_normal((num_classes,) + tuple(shape))
        arrays.append((means[labels] + rng.standard_normal((n,) + tuple(shape))).astype(np.float32))
    return arrays, labels.astype(np.int64)


def write_toy_folder(folder, prefixes=("IMG", "VEC"), n: int = 120, shapes=((1, 12, 12), (6,)),
                     num_classes: int = 3, separation: float = 2.0, seed: int = 0, label_values=None) -> str:
    """Writes a complete data folder (arrays, labels, stratified 70/10/20 split) and returns its path.

    `label_values`, if given, replaces class k by label_values[k] in labels.npy (labels need not be 0..K-1).
    """
    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    arrays, labels = toy_arrays(n, shapes, num_classes, separation, seed)
    for prefix, array in zip(prefixes, arrays):
        np.save(array_path(folder, prefix), array)
    user_labels = labels if label_values is None else np.asarray(label_values, dtype=np.int64)[labels]
    np.save(os.path.join(folder, "labels.npy"), user_labels)
    for split, rows in stratified_split(labels, seed).items():
        np.save(os.path.join(folder, f"{split}_idx.npy"), rows)
    return folder


def paper_rate_results(folder, name="run", **overrides) -> dict:
    """results.json of a run of TOY_SETTINGS at the paper's learning rate, quiet (`overrides` win), into
    folder/name: a run whose numbers tests compare with recorded ones."""
    output = os.path.join(folder, name)
    settings = {**TOY_SETTINGS, "learning_rate": Config.learning_rate, "verbose": 0, **overrides}
    run(Config(output=output, **settings), folder, *PREFIXES)
    return read_results(output)


def folder_snapshot(folder) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time: compare before/after to prove
    that nothing was written (a file rewritten with the same size included)."""
    stats = {os.path.join(root, name): os.stat(os.path.join(root, name))
             for root, _, names in os.walk(folder) for name in names}
    return {path: (stat.st_size, stat.st_mtime_ns) for path, stat in stats.items()}


def read_results(output) -> dict:
    """The results.json of a run folder."""
    with open(os.path.join(output, "results.json")) as handle:
        return json.load(handle)


def refused(status: int, capsys, before: dict, after: dict, *expected: str) -> str:
    """Asserts the project's bad-input rule and returns the error line: exit 2, one `error:` line on
    stderr (warning lines aside) holding each of `expected`, nothing on stdout, no file written
    (`before` and `after`: folder_snapshot's of the folders concerned)."""
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert status == 2, (status, err)
    assert len(errors) == 1 and errors[0].startswith("error: "), err
    assert all(text in errors[0] for text in expected), (errors[0], expected)
    assert out == "" and after == before, "something was written"
    return errors[0]


def one_error_line(err: str) -> str:
    """The single `error: ...` line a refused command prints on stderr (asserted: one line, no traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


class KillOnce:
    """An `on_epoch` hook that SIGKILLs its own process (a Ray worker) after epoch 1 of the first attempt
    (the marker file says an attempt already died), as a lost node or an out-of-memory kill would. Here,
    not in a test file: Ray's workers import this module (tests/test_ray.py ships it to them)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __call__(self, entry: dict) -> None:
        if entry["epoch"] == 1 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def logged_lines(callback=None):
    """The lines the library logs during the block (info and warnings), in the list it yields; each also
    passed to `callback(line)`, which may raise to stop the code that logged it."""
    lines = []

    class Hook(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())
            if callback is not None:
                callback(lines[-1])

    logger, hook = logging.getLogger("discomkd"), Hook()
    level = logger.level
    logger.addHandler(hook)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(hook)
        logger.setLevel(level)


def write_sample_folders(root, names=("A", "B"), classes=("c0", "c1", "c2"), per_class: int = 6,
                         shapes=((2, 8, 8), (1, 8, 8)), seed: int = 0) -> dict[str, str]:
    """Two modalities' image folders as prepare_data.py reads them, ROOT/<name>/<class>/s<i>.npy, one float32
    (C, H, W) sample per file (no image library needed), fully paired, every file distinct; the class sets
    the mean, so the classes are learnable. Returns {name: folder}."""
    rng = np.random.default_rng(seed)
    folders = {}
    for name, shape in zip(names, shapes):
        folders[name] = os.path.join(str(root), name.lower())
        for label, class_name in enumerate(classes):
            os.makedirs(os.path.join(folders[name], class_name), exist_ok=True)
            for i in range(per_class):
                sample = (label + rng.standard_normal(shape)).astype(np.float32)
                np.save(os.path.join(folders[name], class_name, f"s{i}.npy"), sample)
    return folders


class PlaceholderFolder:
    """A temporary folder for one fuzzed example: a placeholder in a value ({name}) names a file or folder
    made in it on first use by the subclass's `make_<name>()`."""

    def __init__(self, prefix: str):
        self.tmp = tempfile.mkdtemp(prefix=prefix)
        self.made = {"tmp": self.tmp}

    def fill(self, text: str) -> str:
        return re.sub(r"\{(\w+)\}", lambda match: self.path(match.group(1)), text)

    def path(self, name: str) -> str:
        if name not in self.made:
            self.made[name] = getattr(self, "make_" + name)()
        return self.made[name]

    def here(self, name: str) -> str:
        return os.path.join(self.tmp, name)
