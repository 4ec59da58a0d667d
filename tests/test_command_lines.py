"""Every command run as a user types it, in a process of its own with its real argv, from a folder outside
the checkout: each installed script (discomkd-train, ...) refusing a bad command line in one line, each
top-level door (main_DisCoM-KD.py, ...) showing its help, and the two commands that take --settings FILE
training with one through both spellings (`python main_DisCoM-KD.py DIR A B --settings FILE` once ended in a
traceback that the tests, calling main([...]), never saw). The package as `pip install .` builds it: the
package alone, and one console script per command.

The processes start together, two at a time (each spends ~2 s importing torch and scikit-learn), in a
module fixture; the tests read their results.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from command_table import DOORS, ROOT, SCRIPT_OF, SCRIPTS
from toy import PREFIXES, write_toy_folder

BIN = os.path.dirname(sys.executable)  # where pip puts a virtual environment's console scripts
INSTALLED = all(os.path.exists(os.path.join(BIN, name)) for name in SCRIPTS)
NOT_INSTALLED = "the package's commands are not installed here (pip install -e . puts them beside the interpreter)"
TRAIN, COMPARE = "discomkd.commands.train", "discomkd.commands.compare"
DOOR_OF = {module: door for door, module in DOORS.items()}
SETTINGS = {"epochs": 1, "batch_size": 16, "encoder_first": "lenet", "device": "cpu", "learning_rate": 0.001}
SETTINGS_OUTPUT = {"main_DisCoM-KD.py": "run_door/results.json", "discomkd-train": "run_script/results.json",
                   "compare.py": "cmp_door/comparison.json", "discomkd-compare": "cmp_script/comparison.json"}


def script(name: str) -> list[str]:
    return [os.path.join(BIN, name)]


def door(module: str) -> list[str]:
    return [sys.executable, os.path.join(ROOT, DOOR_OF[module])]


@pytest.fixture(scope="module")
def typed(tmp_path_factory):
    """{case: CompletedProcess} of every command line below, each run in a folder outside the checkout."""
    work = tmp_path_factory.mktemp("typed")
    data = write_toy_folder(work / "data", PREFIXES)
    settings = work / "settings.json"
    settings.write_text(json.dumps(SETTINGS))
    unknown = work / "unknown.json"
    unknown.write_text(json.dumps({"learning_rat": 0.1}))
    lines = {("help", door_file): door(module) + ["--help"] for door_file, module in DOORS.items()}
    if INSTALLED:
        lines.update({("bad option", name): script(name) + ["--no-such-option"] for name in SCRIPTS})
        lines[("settings", "discomkd-train")] = script("discomkd-train") + [
            data, *PREFIXES, "--settings", str(settings), "--quiet", "--output", str(work / "run_script")]
        lines[("settings", "discomkd-compare")] = script("discomkd-compare") + [
            data, *PREFIXES, "--settings", str(settings), "--methods", "mono", "--output", str(work / "cmp_script")]
    lines[("settings", "main_DisCoM-KD.py")] = door(TRAIN) + [
        data, *PREFIXES, "--settings", str(settings), "--quiet", "--output", str(work / "run_door")]
    lines[("settings", "compare.py")] = door(COMPARE) + [
        data, *PREFIXES, "--settings", str(settings), "--methods", "mono", "--output", str(work / "cmp_door")]
    lines[("bad settings", "main_DisCoM-KD.py")] = door(TRAIN) + [
        data, *PREFIXES, "--settings", str(unknown), "--output", str(work / "never")]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes at a time on a small machine

    def run(argv):
        return subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=300, env=environment)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(lines, pool.map(run, lines.values())))
    return work, results


@pytest.mark.parametrize("door_file", sorted(DOORS))
def test_every_door_runs_from_another_folder(typed, door_file):
    process = typed[1][("help", door_file)]
    assert process.returncode == 0, process.stderr
    assert process.stdout.startswith("usage: ") and process.stderr == ""


@pytest.mark.skipif(not INSTALLED, reason=NOT_INSTALLED)
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_installed_command_refuses_a_bad_command_line_in_one_line(typed, name):
    """Without its arguments, or with an option it lacks, each command ends as argparse ends it: its usage and
    one error line naming the command as typed, exit 2."""
    process = typed[1][("bad option", name)]
    assert process.returncode == 2, process.stderr
    assert process.stderr.splitlines()[-1].startswith(f"{name}: error: ")
    assert "Traceback" not in process.stderr and process.stdout == ""


def finished_with_settings(typed, spelling: str) -> tuple[subprocess.CompletedProcess, dict]:
    """The process of `spelling` given the settings file, which must have finished, and the JSON it wrote."""
    work, results = typed
    if ("settings", spelling) not in results:
        pytest.skip(NOT_INSTALLED)
    process = results[("settings", spelling)]
    assert process.returncode == 0, process.stderr
    with open(os.path.join(work, SETTINGS_OUTPUT[spelling])) as handle:
        return process, json.load(handle)


@pytest.mark.parametrize("spelling", ["main_DisCoM-KD.py", "discomkd-train"])
def test_training_takes_a_settings_file_as_typed(typed, spelling):
    process, results = finished_with_settings(typed, spelling)
    assert {name: results["config"][name] for name in SETTINGS} == SETTINGS  # every value of the file
    assert "test wF1" in process.stdout  # --quiet: the final table


@pytest.mark.parametrize("spelling", ["compare.py", "discomkd-compare"])
def test_the_comparison_takes_a_settings_file_as_typed(typed, spelling):
    _, comparison = finished_with_settings(typed, spelling)
    assert comparison["status"] == "finished" and comparison["config"]["epochs"] == 1


def test_a_bad_settings_file_is_one_line_and_writes_nothing(typed):
    work, results = typed
    process = results[("bad settings", "main_DisCoM-KD.py")]
    assert process.returncode == 2
    assert process.stderr.startswith("error: --settings ") and len(process.stderr.splitlines()) == 1
    assert "'learning_rat' is not a setting" in process.stderr
    assert not os.path.exists(os.path.join(work, "never"))


def test_the_built_package_holds_the_package_alone_and_a_script_per_command(tmp_path):
    """`pip install .` installs what the wheel holds: the package `discomkd` (no generic top-level module such
    as `functions`) and one console script per command module."""
    pytest.importorskip("setuptools")
    source = tmp_path / "source"  # a copy, so that the build writes nothing into the checkout
    shutil.copytree(os.path.join(ROOT, "discomkd"), source / "discomkd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w",
                    str(tmp_path / "wheel"), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "wheel").iterdir()
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert {name.split("/")[0] for name in names} == {"discomkd", wheel.name.split("-")[0] + "-"
                                                      + wheel.name.split("-")[1] + ".dist-info"}
    scripts = dict(line.split(" = ") for line in entry_points.splitlines() if " = " in line)
    assert scripts == {name: f"{module}:main" for module, name in SCRIPT_OF.items()}
