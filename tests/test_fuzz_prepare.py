"""prepare_data.py fuzzed like the other commands (tests/test_fuzz_options.py): every option's valid values run
(exit 0, the data folder written and loadable), every invalid one is refused with exit 2, one `error:` line naming
the option or the value, nothing on stdout and nothing written; random combinations of options, and input folders
with a random corruption, end in exit 0 or 2, never a traceback."""
from __future__ import annotations

import contextlib
import io
import os
import shutil

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis (a test-only dependency) is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from toy import PlaceholderFolder, folder_snapshot, write_sample_folders  # noqa: E402

from discomkd.commands import prepare as prepare_data  # noqa: E402
from discomkd.data.folder import load_data_folder  # noqa: E402

POSITIONAL = "(positional)"
BASE_FRACTIONS = ("--fractions", "0.5", "0.25", "0.25")  # 6 paired samples a class: 2 each in valid and test
COMBINATIONS = 12  # random combinations of options drawn by the property (~0.2 s each)
CORRUPTED_FOLDERS = 24  # random corruptions of the input folders


class Example(PlaceholderFolder):
    """One example's temporary folder; a placeholder in a value ({inputs}, {prepared}, ...) names a file or
    folder made there on first use."""

    def __init__(self):
        super().__init__("fuzz-prepare-")

    def make_inputs(self):  # two modalities' sample folders, A (2, 8, 8) and B (1, 8, 8)
        write_sample_folders(self.here("inputs"))
        return self.here("inputs")

    def make_file(self):
        with open(self.here("file.txt"), "w") as handle:
            handle.write("a user's file")
        return self.here("file.txt")

    def make_full(self):  # a folder holding a user's file
        os.makedirs(self.here("full"))
        with open(self.here("full/notes.txt"), "w") as handle:
            handle.write("a user's notes")
        return self.here("full")

    def make_prepared(self):  # an earlier prepared folder: --overwrite replaces it
        assert prepare_data.main(argv(self, [self.here("prepared")], [])) == 0
        return self.here("prepared")

    def make_trained(self):  # a prepared folder with a run inside: --overwrite refuses it
        folder = self.path("prepared")
        os.makedirs(os.path.join(folder, "DisCoM-KD_A_B"))
        with open(os.path.join(folder, "DisCoM-KD_A_B", "results.json"), "w") as handle:
            handle.write("{}")
        return folder

    def make_link(self):  # a symbolic link to an empty folder: written through
        os.makedirs(self.here("target"))
        os.symlink(self.here("target"), self.here("link"))
        return self.here("link")

    def make_manifest(self):
        inputs = self.path("inputs")
        lines = ["id,label,A,B"] + [f"id{i},c{i % 3},{inputs}/a/c{i % 3}/s{i // 3}.npy,{inputs}/b/c{i % 3}/s{i // 3}.npy"
                                    for i in range(18)]
        with open(self.here("samples.csv"), "w") as handle:
            handle.write("\n".join(lines) + "\n")
        return self.here("samples.csv")


def argv(example: Example, positional, arguments: list[str]) -> list[str]:
    """The output (or `positional`), the two modalities unless the arguments give the source, the base fractions
    unless they give them, then the arguments."""
    source = [] if {"--modality", "--manifest"} & set(arguments) else \
        ["--modality", f"A={example.path('inputs')}/a", "--modality", f"B={example.path('inputs')}/b"]
    fractions = [] if "--fractions" in arguments else list(BASE_FRACTIONS)
    return [*(positional if positional is not None else [example.here("out")]), *source, *fractions, *arguments]


def values(*items) -> tuple:
    """Pool items as argument tuples: a string is one value, a tuple several, None none (a flag)."""
    return tuple(() if item is None else (item,) if isinstance(item, str) else tuple(item) for item in items)


# option -> (valid values, invalid values)
OPTIONS = {
    "--modality": (values(("A={inputs}/a", "--modality", "B={inputs}/b"), ("X-1={inputs}/a", "--modality", "y_2={inputs}/b")),
                   values(("A={inputs}/a",), ("A={inputs}/a", "--modality", "A={inputs}/b"),
                          ("A={inputs}/a", "--modality", "B={inputs}/b", "--modality", "C={inputs}/b"),
                          ("A={inputs}/a", "--modality", "B={tmp}/nowhere"), ("A={inputs}/a", "--modality", "B="),
                          ("A={inputs}/a", "--modality", "=x"), ("A={inputs}/a", "--modality", "a b={inputs}/b"),
                          ("A={inputs}/a", "--modality", "label={inputs}/b"),
                          ("A={inputs}/a", "--modality", "B={file}"))),
    "--manifest": (values("{manifest}"), values("{file}", "{tmp}/nowhere.csv", "", "{inputs}")),
    "--resize": (values("A=12x12", "B=8x16", ("A=9x9", "--resize", "B=8x8")),
                 values("C=4x4", "A=0x4", "A=100000x100000", "A=4", "A=x", "", "A=-4x4", "=4x4", "A=4x4x4")),
    "--seed": (values("0", "4294967295"), values("-1", "4294967296", "x", "1.5", "")),
    "--fractions": (values(("0.5", "0.25", "0.25"), ("0.34", "0.33", "0.33")),
                    values(("1", "0", "0"), ("nan", "nan", "nan"), ("inf", "0", "0"), ("0.3", "0.3", "0.3"),
                           ("-0.2", "0.6", "0.6"), ("x", "y", "z"), ("0.7", "0.1"), ("1e308", "1e308", "1e308"))),
    "--skip-bad": (values(None), ()),
    "--overwrite": (values(None), ()),
    POSITIONAL: (values("{tmp}/out", "{tmp}/a/b/c", ("{prepared}", "--overwrite"), "{link}"),
                 values("{file}", "{file}/sub", "{full}", ("{full}", "--overwrite"), ("{trained}", "--overwrite"),
                        "{prepared}", "{inputs}/a/inside", "{inputs}", "/proc/fuzz-out", "", "{tmp}/" + "n" * 300)),
}


def run(example: Example, arguments: list[str]):
    """(exit status, stdout, stderr, files written or changed) of prepare_data.py with `arguments`."""
    before = folder_snapshot(example.tmp)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = prepare_data.main(arguments)
        except SystemExit as exit_request:  # argparse
            status = exit_request.code
    after = folder_snapshot(example.tmp)
    return status, stdout.getvalue(), stderr.getvalue(), sorted(p for p in after if after[p] != before.get(p))


def full_argv(example: Example, option: str, value: tuple) -> list[str]:
    filled = [example.fill(text) for text in value]
    return argv(example, filled, []) if option == POSITIONAL else argv(example, None, [option, *filled])


def assert_refused(status, out, err, written, named=()) -> None:
    assert "Traceback" not in err and status == 2, (status, err)
    lines = err.splitlines()
    if lines and lines[0].startswith("usage:"):  # argparse: its usage, then one `prog: error:` line
        assert len([line for line in lines if ": error: " in line]) == 1 and ": error: " in lines[-1], err
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), err
    if named:
        assert any(text in lines[-1] for text in named), f"{lines[-1]!r} names none of {named}"
    assert out == "" and written == [], (out, written)


def assert_prepared(status, out, err, output: str) -> None:
    assert status == 0 and "Traceback" not in err and "error" not in err, (status, err)
    assert "wrote " in out
    names = sorted(os.listdir(output))
    modalities = [name[:-len("_data_normalized.npy")] for name in names if name.endswith("_data_normalized.npy")]
    assert len(modalities) == 2 and {"labels.npy", "rows.csv", "normalization.json"} <= set(names), names
    assert load_data_folder(output, *modalities).warnings == []


def cases(index: int) -> list:
    return [pytest.param(option, value, id=f"{option} {' '.join(value)[:50]}".rstrip())
            for option, pools in OPTIONS.items() for value in pools[index]]


@pytest.mark.parametrize("option, value", cases(0))
def test_a_valid_value_runs(option, value):
    example = Example()
    try:
        arguments = full_argv(example, option, value)
        status, out, err, _ = run(example, arguments)
        output = example.fill(value[0]) if option == POSITIONAL else example.here("out")
        assert_prepared(status, out, err, output)
    finally:
        shutil.rmtree(example.tmp, ignore_errors=True)


@pytest.mark.parametrize("option, value", cases(1))
def test_an_invalid_value_is_refused_in_one_line(option, value):
    example = Example()
    try:
        arguments = full_argv(example, option, value)
        named = [] if option == POSITIONAL else [option, "''", *(part for text in value
                                                                 for part in example.fill(text).split("=") if part)]
        assert_refused(*run(example, arguments), named=named)
    finally:
        shutil.rmtree(example.tmp, ignore_errors=True)


@settings(max_examples=COMBINATIONS, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(st.data())
def test_random_combinations_never_crash(data):
    """Up to three options with values from both pools, sometimes another output: exit 0 (a loadable folder) or
    2 (one error line, nothing written), never a traceback."""
    example = Example()
    try:
        options = data.draw(st.lists(st.sampled_from(sorted(set(OPTIONS) - {POSITIONAL})), min_size=1, max_size=3,
                                     unique=True))
        arguments = [example.fill(text) for option in options
                     for text in (option, *data.draw(st.sampled_from([*OPTIONS[option][0], *OPTIONS[option][1]])))]
        positional = None
        if data.draw(st.booleans()):
            positional = [example.fill(text) for text in data.draw(st.sampled_from([*OPTIONS[POSITIONAL][0],
                                                                                    *OPTIONS[POSITIONAL][1]]))]
        status, out, err, written = run(example, argv(example, positional, arguments))
        assert status in (0, 2) and "Traceback" not in err, (status, err)
        if status == 2:
            assert_refused(status, out, err, written)
    finally:
        shutil.rmtree(example.tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- corrupted input folders
def sample_files(inputs: str) -> list[str]:
    return sorted(os.path.join(root, name) for root, _, names in os.walk(inputs) for name in names)


def corrupt(inputs: str, draw) -> str:
    """One random corruption of the sample folders; returns its kind."""
    path = draw(st.sampled_from(sample_files(inputs)))
    kind = draw(st.sampled_from(["truncated", "garbage", "other size", "other channels", "nan", "overflow", "complex",
                                 "copy", "link", "stray file", "no pairs", "empty", "one class", "text"]))
    sample = np.load(path)
    if kind == "truncated":
        content = open(path, "rb").read()
        open(path, "wb").write(content[:draw(st.integers(0, len(content) - 1))])
    elif kind == "garbage":
        open(path, "wb").write(draw(st.binary(max_size=300)))
    elif kind == "other size":
        np.save(path, np.zeros((sample.shape[0], 8, draw(st.integers(1, 12).filter(lambda w: w != 8))), np.float32))
    elif kind == "other channels":
        np.save(path, np.zeros((sample.shape[0] + draw(st.integers(1, 3)), 8, 8), np.float32))
    elif kind in ("nan", "overflow"):
        sample = sample.astype(np.float64)
        sample.reshape(-1)[draw(st.integers(0, sample.size - 1))] = np.nan if kind == "nan" else \
            draw(st.sampled_from([1e300, -1.797e308, 1e200]))
        np.save(path, sample)
    elif kind == "complex":
        np.save(path, sample.astype(np.complex64))
    elif kind == "copy":  # a duplicate sample under another stem
        shutil.copy(path, os.path.join(os.path.dirname(path), "copy.npy"))
    elif kind == "link":
        os.symlink(path, os.path.join(os.path.dirname(path), "link.npy"))
    elif kind == "stray file":  # a sample outside any class folder
        shutil.copy(path, os.path.join(os.path.dirname(os.path.dirname(path)), "stray.npy"))
    elif kind == "no pairs":
        for other in sample_files(os.path.dirname(os.path.dirname(path))):
            os.rename(other, other.replace(".npy", "_d.npy"))
    elif kind == "empty":
        open(path, "wb").close()
    elif kind == "one class":  # every sample of one modality in one class
        folder = os.path.dirname(os.path.dirname(path))
        for other in sample_files(folder):
            if os.path.basename(os.path.dirname(other)) != "c0":
                os.rename(other, os.path.join(folder, "c0", os.path.basename(os.path.dirname(other)) + "_" +
                                              os.path.basename(other)))
    else:
        np.save(path, np.full(sample.shape, "a"))
    return kind


@settings(max_examples=CORRUPTED_FOLDERS, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(st.data())
def test_corrupted_inputs_are_refused_in_one_line_or_prepared(data):
    """A random corruption of one input file or folder, with or without --skip-bad: exit 2 with one line naming a
    file or folder of the inputs and nothing written, or exit 0 with a folder that loads."""
    example = Example()
    try:
        inputs = example.path("inputs")
        kind = corrupt(inputs, data.draw)
        skip_bad = ["--skip-bad"] if data.draw(st.booleans()) else []
        status, out, err, written = run(example, argv(example, None, skip_bad))
        if status == 2:
            assert_refused(status, out, err, written, named=[f"error: {inputs}"])
        else:
            assert_prepared(status, out, err, example.here("out")), kind
    finally:
        shutil.rmtree(example.tmp, ignore_errors=True)
