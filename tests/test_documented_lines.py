"""Every command line of README.md and docs/*.md run as a user types it, in a process of its own, at toy scale
(tests/doc_lines.py reads them and says the convention that scales them down): the lines of each ```bash block, and
the `$ ` lines of a transcript, whose printed lines must have the form the doc shows. A line the docs mark
`# [not run: REASON]` (a block, by its first line) is counted as skipped for that reason, as is a line that needs Ray
where Ray is not installed; `# [slow]` lines run with DISCOMKD_SLOW_TESTS=1.
"""
from __future__ import annotations

import concurrent.futures
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from command_table import DOORS, ROOT, SCRIPTS
from doc_lines import LINES, PREFIXES, UNDOCUMENTED_HERE, Line, documented_modules, scaled, skip_reason
from toy import write_sample_folders, write_toy_folder

from discomkd.training.config import Config
from discomkd.training.run import run

SETTINGS = {"learning_rate": 0.001, "batch_size": 16}


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
            found = printed[position] if position < len(printed) else "nothing"
            return f"expected a line like {expected!r}, printed {found!r}"
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


def test_every_command_runs_as_typed_somewhere():
    """Each command runs as a real process in a documented line here, or, where every line that names it needs
    what this machine lacks (a GPU, Ray, hours), its door from another folder (test_command_lines.py)."""
    documented = documented_modules({**SCRIPTS, **DOORS})
    assert set(SCRIPTS.values()) - documented == UNDOCUMENTED_HERE
    assert {module for module in DOORS.values() if module not in documented} <= UNDOCUMENTED_HERE


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
