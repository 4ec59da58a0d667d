"""Every command line of README.md and docs/*.md run as a user types it, in a process of its own, at toy scale: the
lines of each ```bash block, and the `$ ` lines of a transcript, whose printed lines must have the form the doc
shows. A line the docs mark `# [not run: REASON]` (a block, by its first line) is counted as skipped for that
reason, as is a line that needs Ray where Ray is not installed; `# [slow]` lines run with DISCOMKD_SLOW_TESTS=1.

The convention that scales a line down (docs/testing.md says it to readers): DIR, FIRST, SECOND (FIRST_PREFIX,
SECOND_PREFIX) name a toy data folder of 120 rows with modalities IMAGE (1x12x12) and PROJ (6 values), RUN a finished
one-epoch run on it (in a folder of its own), OUTDIR and OUTPUT a new folder, NAME1=FOLDER1 and NAME2=FOLDER2 two image folders, settings.json
a settings file, new_images.npy some IMAGE samples, samples.csv a manifest; the EuroSAT-like folders are written by
data.md's own script. Every number after --epochs, --runs or --trials becomes 1, a command that trains and names no
--epochs gets --epochs 1, and optional parts in brackets ([--runs 5]) are left out. The lines of a ```bash block are
alternatives, each run in a fresh copy of the fixtures; a transcript's lines run as written, in order, in one.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from command_table import DOORS, ROOT, SCRIPTS
from toy import write_sample_folders, write_toy_folder

from discomkd.training.config import Config
from discomkd.training.run import run

PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*(\w*)")
NOT_RUN = re.compile(r"#\s*\[not run:\s*([^\]]+)\]\s*$")
SLOW = re.compile(r"#\s*\[slow\]\s*$")
TRAINS = re.compile(r"(?:^|\s)(?:\S*main_DisCoM-KD\.py|discomkd-train|\S*compare\.py|discomkd-compare|\S*tune\.py|"
                    r"discomkd-tune)\s")
NEEDS_RAY = re.compile(r"tune\.py|discomkd-tune|--executor ray|\bray start\b")
RAY_INSTALLED = importlib.util.find_spec("ray") is not None
SLOW_TESTS = bool(os.environ.get("DISCOMKD_SLOW_TESTS"))
PREFIXES = ("IMAGE", "PROJ")  # the toy folder's modalities, as the docs' examples name the embedded example's
PLACEHOLDERS = {"DIR": "toy", "FIRST": "IMAGE", "SECOND": "PROJ", "FIRST_PREFIX": "IMAGE", "SECOND_PREFIX": "PROJ",
                "RUN": "run", "OUTDIR": "out", "OUTPUT": "out", "NAME1": "A", "NAME2": "B",
                "FOLDER1": "images_a", "FOLDER2": "images_b"}
SETTINGS = {"learning_rate": 0.001, "batch_size": 16}


@dataclasses.dataclass
class Line:
    """One documented command line: where it is, what it says, and what the doc shows it printing."""

    page: str
    number: int  # its line in the page
    block: int  # its block's first line: a transcript's lines share a folder
    text: str
    transcript: bool
    shown: list[str] = dataclasses.field(default_factory=list)  # a transcript's printed lines ("..." any)
    skip: str | None = None
    slow: bool = False

    @property
    def name(self) -> str:
        return f"{self.page}:{self.number}"


def documented_lines() -> list[Line]:
    """Every command line of the pages: bash blocks' lines (a backslash continues one), transcripts' `$ ` lines."""
    found = []
    for page in PAGES:
        lines = open(os.path.join(ROOT, page)).read().split("\n")
        i = 0
        while i < len(lines):
            fence = FENCE.match(lines[i])
            if not fence:
                i += 1
                continue
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(fence.group(1)[:3])),
                       len(lines))
            body = lines[i + 1:end]
            if fence.group(2) in ("bash", "sh"):
                found += bash_lines(page, i + 2, body)
            elif not fence.group(2) and any(line.startswith("$ ") for line in body):
                found += transcript_lines(page, i + 2, body)
            i = end + 1
    return found


def bash_lines(page: str, first: int, body: list[str]) -> list[Line]:
    block_skip = NOT_RUN.match(body[0].strip()) if body else None
    lines, text, start = [], "", first
    for number, line in enumerate(body, first):
        start = number if not text else start
        text += line[:-1] + " " if line.endswith("\\") else line
        if line.endswith("\\"):
            continue
        if text.strip() and not text.strip().startswith("#"):
            skip = NOT_RUN.search(text)
            lines.append(Line(page, start, first, text, False, skip=(block_skip or skip) and
                              (block_skip or skip).group(1).strip(), slow=bool(SLOW.search(text))))
        text = ""
    if any(re.match(r"\s*(for|while|do|done)\b", line.text) for line in lines):  # a loop: the block is one script
        lines = [dataclasses.replace(lines[0], text="\n".join(line.text for line in lines))]
    return lines


def transcript_lines(page: str, first: int, body: list[str]) -> list[Line]:
    lines = []
    for number, line in enumerate(body, first):
        if line.startswith("$ "):
            lines.append(Line(page, number, first, line[2:], True))
        elif lines:
            lines[-1].shown.append(line)
    return lines


LINES = documented_lines()


def scaled(line: Line) -> str:
    """The line as the tests run it (the module's docstring says how); a transcript's as written: it shows what it
    printed."""
    text = re.sub(r"\s+#.*$", "", line.text, flags=re.M)  # comments: said, not run
    if line.transcript:
        return text
    text = re.sub(r"\s*\[[^\]]*\]", "", text)  # optional parts
    text = re.sub(r"(--epochs|--runs|--trials)(\s+)\d+", r"\1\g<2>1", text)
    unsplit = re.search(r"make_splits\.py|discomkd-splits", text)  # make_splits writes the splits a folder lacks
    for placeholder, value in PLACEHOLDERS.items():
        value = "toy_unsplit" if placeholder == "DIR" and unsplit else value
        text = re.sub(rf"(?<![\w/.-]){placeholder}(?![\w.-])", value, text)
    if TRAINS.search(text + " ") and "--epochs" not in text and "--resume" not in text:
        text += " --epochs 1"
    return text


# Lines skipped by what they are, without a mark: they install, or run the suite itself (which is running).
INSTALLS = re.compile(r"^\s*(make (demo|test)|pip install|python3? -m venv|\S*python -m pip)\b|&& pip install")
THE_SUITE = re.compile(r"-m pytest\b")


def skip_reason(line: Line) -> str | None:
    if line.skip:
        return line.skip
    if THE_SUITE.search(line.text) or re.match(r"\s*make test\b", line.text):
        return "the test suite itself"
    if INSTALLS.search(line.text):
        return "installs (make demo's training is checked by the quick-start table's test)"
    if NEEDS_RAY.search(line.text) and not RAY_INSTALLED:
        return "needs Ray, not installed here"
    if NEEDS_RAY.search(line.text) and not os.environ.get("DISCOMKD_RAY_SLOW"):
        return "a Ray line: runs with DISCOMKD_RAY_SLOW=1"
    if line.slow and not SLOW_TESTS:
        return "slow: runs with DISCOMKD_SLOW_TESTS=1"
    return None


# ----------------------------------------------------------------------------- the fixtures every line reads
def eurosat_script() -> str:
    """data.md's script that writes the EuroSAT-like folders (eurosat_ms, eurosat_sar)."""
    text = open(os.path.join(ROOT, "docs", "data.md")).read()
    return next(block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "eurosat_ms" in block)


def write_fixtures(base) -> None:
    folder = write_toy_folder(base / "toy", PREFIXES)
    run(Config(epochs=1, batch_size=16, learning_rate=1e-3, encoder_first="lenet", device="cpu", verbose=0,
               output=str(base / "run")), folder, *PREFIXES)
    shutil.copytree(folder, base / "toy_unsplit", ignore=shutil.ignore_patterns("*_idx*.npy"))
    np.save(base / "new_images.npy", np.load(base / "toy" / "IMAGE_data_normalized.npy")[:10])
    folders = write_sample_folders(base, names=("images_a", "images_b"))
    with open(base / "samples.csv", "w") as handle:  # the two image folders as a manifest
        handle.write("id,label,A,B\n")
        for path in sorted(glob.glob(os.path.join(folders["images_a"], "*", "*.npy"))):
            relative = os.path.relpath(path, folders["images_a"])
            handle.write(f"{relative},{relative.split(os.sep)[0]},images_a/{relative},images_b/{relative}\n")
    (base / "settings.json").write_text(json.dumps(SETTINGS))
    subprocess.run([sys.executable, "-c", eurosat_script()], cwd=base, check=True, timeout=120)
    # what a checkout's root holds, beside the fixtures: the package, the top-level doors, tools/
    for name in ("discomkd", "tools", *DOORS):
        os.symlink(os.path.join(ROOT, name), base / name)


def run_lines(lines: list[Line], base, folder) -> dict[str, subprocess.CompletedProcess]:
    """The lines, in order, in a fresh copy of the fixtures."""
    shutil.copytree(base, folder, symlinks=True)
    environment = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
                   "OMP_NUM_THREADS": "1"}
    return {line.name: subprocess.run(["bash", "-c", scaled(line)], cwd=folder, env=environment, capture_output=True,
                                      text=True, timeout=600) for line in lines}


@pytest.fixture(scope="module")
def documented(tmp_path_factory):
    """{line name: CompletedProcess} of every line that runs here, two groups at a time."""
    base = tmp_path_factory.mktemp("documented") / "base"
    base.mkdir()
    write_fixtures(base)
    groups = {}
    for line in LINES:
        if skip_reason(line) is None:  # a transcript's lines one group; a bash block's, one group each
            groups.setdefault((line.block, line.page) if line.transcript else line.name, []).append(line)
    work = tmp_path_factory.mktemp("lines")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        done = pool.map(lambda item: run_lines(item[1], base, work / f"g{item[0]}"), enumerate(groups.values()))
        return {name: process for result in done for name, process in result.items()}


# ----------------------------------------------------------------------------- the checks
def line_pattern(shown: str) -> re.Pattern:
    """A printed line of the form `shown`: the same words, any numbers; the hint of an installed command also
    as it prints where the command is not installed (`python -m discomkd.commands.X`)."""
    pattern = re.escape(shown)
    pattern = re.sub(r"\d+(?:\\\.\d+)?", r"[-+]?\\d+(?:\\.\\d+)?(?:e[-+]?\\d+)?", pattern)
    pattern = re.sub(r"discomkd\\-(\w+)", r"(?:discomkd-\1|\\S*python\\S* -m discomkd\\.commands\\.\\w+)", pattern)
    return re.compile(pattern + "$")


def printed_as_shown(printed: list[str], shown: list[str]) -> str | None:
    """None when the printed lines have the form of the shown ones ("..." stands for any lines), else why not."""
    position = 0
    for index, expected in enumerate(shown):
        if expected.strip() == "...":
            continue
        pattern = line_pattern(expected)
        anywhere = index > 0 and shown[index - 1].strip() == "..."
        while position < len(printed) and anywhere and not pattern.match(printed[position]):
            position += 1
        if position >= len(printed) or not pattern.match(printed[position]):
            return f"expected a line like {expected!r}, printed {printed[position] if position < len(printed) else 'nothing'!r}"
        position += 1
    if shown and shown[-1].strip() != "..." and position < len(printed):
        return f"printed more than the doc shows: {printed[position]!r}"
    return None


@pytest.mark.parametrize("line", LINES, ids=[line.name for line in LINES])
def test_a_documented_line_runs_as_the_doc_says(documented, line):
    reason = skip_reason(line)
    if reason:
        pytest.skip(reason)
    process = documented[line.name]
    assert process.returncode == 0, f"{line.name}: {scaled(line)}\n{process.stderr[-3000:]}"
    if line.shown:
        problem = printed_as_shown(process.stdout.splitlines(), line.shown)
        assert problem is None, f"{line.name}: {problem}"


def test_every_command_is_documented_and_run():
    """Each command appears in a documented line that runs here (an installed script or its checkout door)."""
    commands = set(SCRIPTS.values())
    spelled = {**SCRIPTS, **DOORS}
    ran = {module for line in LINES if skip_reason(line) is None or "Ray" in (skip_reason(line) or "")
           for name, module in spelled.items() if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", line.text)}
    assert commands - ran - {"discomkd.commands.gpu_check", "discomkd.commands.benchmark",
                             "discomkd.commands.make_example"} == set(), commands - ran


def test_the_convention_scales_lines_down():
    line = Line("x.md", 1, 1, "python compare.py DIR FIRST SECOND [--runs 5] --runs 5 --epochs 30  # a comment", False)
    assert scaled(line) == "python compare.py toy IMAGE PROJ --runs 1 --epochs 1"
    assert scaled(Line("x.md", 1, 1, "discomkd-train DIR FIRST_PREFIX SECOND_PREFIX", False)).endswith("--epochs 1")
    assert scaled(Line("x.md", 1, 1, "python make_splits.py DIR", False)) == "python make_splits.py toy_unsplit"
    assert printed_as_shown(["a 12 b", "x", "y", "wrote out; train with: python -m discomkd.commands.train out A B"],
                            ["a 3 b", "...", "wrote out; train with: discomkd-train out A B"]) is None
    assert printed_as_shown(["a b"], ["a 3 b"]) is not None


def summary() -> str:
    """How many documented lines ran, and how many were skipped, by reason (printed after the tests)."""
    reasons = {}
    for line in LINES:
        reason = skip_reason(line)
        reasons[reason] = reasons.get(reason, 0) + 1
    ran = reasons.pop(None, 0)
    return (f"documented command lines: {ran} run, {sum(reasons.values())} skipped" +
            "".join(f"\n  {count} skipped: {reason}" for reason, count in sorted(reasons.items(), key=lambda r: -r[1])))
