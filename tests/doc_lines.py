"""The command lines of README.md and docs/*.md as the tests run them: each ```bash block's lines (a backslash
continues one) and each transcript's `$ ` lines with the output they show, the docs' marks (`# [not run: REASON]`,
`# [slow]`), and the one convention that scales a line down to toy size (docs/testing.md says it to readers):
DIR, FIRST, SECOND (FIRST_PREFIX, SECOND_PREFIX) name a toy data folder of 120 rows with modalities IMAGE (1x12x12)
and PROJ (6 values), RUN a finished one-epoch run on it (in a folder of its own), OUTDIR and OUTPUT a new folder,
NAME1=FOLDER1 and NAME2=FOLDER2 two image folders, settings.json a settings file, new_images.npy some IMAGE samples,
samples.csv a manifest; the EuroSAT-like folders are written by data.md's own script. Every number after --epochs,
--runs or --trials becomes 1, a command that trains and names no --epochs gets --epochs 1, and optional parts in
brackets ([--runs 5]) are left out. The lines of a ```bash block are alternatives, each run in a fresh copy of the
fixtures; a transcript's lines run as written, in order, in one.
"""
from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
import re

from command_table import ROOT

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


# The commands no documented line runs here: every line naming them needs a GPU, Ray or hours (their doors run from
# another folder in test_command_lines.py instead).
UNDOCUMENTED_HERE = {"discomkd.commands.tune", "discomkd.commands.benchmark", "discomkd.commands.make_example",
                     "discomkd.commands.gpu_check"}


def runs_here(line: Line) -> bool:
    return skip_reason(line) is None


def documented_modules(spellings: dict[str, str]) -> set[str]:
    """The command modules that some documented line running here names, by any of `spellings` ({name: module})."""
    return {module for line in LINES if runs_here(line) for name, module in spellings.items()
            if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", line.text)}
