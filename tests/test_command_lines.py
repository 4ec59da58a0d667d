"""Every command run as a user types it, in a process of its own with its real argv, from a folder outside
the checkout: each installed script (discomkd-train, ...) refusing a bad command line in one line, the top-level
doors that no documented line runs here showing their help (the others run in test_documented_lines.py), the two
commands that take --settings FILE training with one through both spellings (`python main_DisCoM-KD.py DIR A B
--settings FILE` once ended in a traceback that the tests, calling main([...]), never saw), and the command lines
a careless or hostile user types. The package as `pip install .` builds it: the package alone, and one console
script per command.

The processes start together, two at a time (each spends ~1.5 s importing torch), in module fixtures; the tests
read their results.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from command_table import DOORS, ROOT, SCRIPT_OF, SCRIPTS
from doc_lines import UNDOCUMENTED_HERE
from toy import PREFIXES, read_results, write_toy_folder

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
    lines = {("help", door_file): door(module) + ["--help"] for door_file, module in DOORS.items()
             if module in UNDOCUMENTED_HERE}  # the other doors run in documented lines (test_documented_lines.py)
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


@pytest.mark.parametrize("door_file", sorted(door for door, module in DOORS.items() if module in UNDOCUMENTED_HERE))
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


# ----------------------------------------------------------------------------- what a careless or hostile user types
@pytest.fixture(scope="module")
def careless(toy_run, tmp_path_factory):
    """{case: [CompletedProcess, ...]} of command lines that once did the wrong thing with exit 0 (or left
    something behind), each case's lines run in order, the cases two at a time."""
    data, run = toy_run
    work = tmp_path_factory.mktemp("careless")

    def settings(name, content):
        (work / name).write_text(json.dumps(content))
        return str(work / name)

    shutil.copytree(run, work / "finished")  # a finished run a settings file must not replace
    np.save(work / "four_d.npy", np.zeros((2, 1, 2, 3), dtype=np.float32))
    unseen = write_toy_folder(work / "unseen", PREFIXES)  # class 2 in validation and test only
    labels, train = np.load(os.path.join(unseen, "labels.npy")), np.load(os.path.join(unseen, "train_idx.npy"))
    np.save(os.path.join(unseen, "train_idx.npy"), train[labels[train] != 2])
    (work / "real_cmp").mkdir()
    os.symlink(work / "real_cmp", work / "link_cmp")
    quick = ["--epochs", "1", "--batch-size", "8", "--device", "cpu", "--encoder-first", "lenet"]
    compare_logreg = door(COMPARE) + [data, *PREFIXES, "--methods", "logreg", "--device", "cpu"]
    hide_ray = ("import sys; sys.modules['ray'] = None; sys.argv[0] = 'tune.py'; "
                "from discomkd.commands.tune import main; raise SystemExit(main())")
    cases = {
        "settings overwrite": [door(TRAIN) + [data, *PREFIXES, *quick, "--output", str(work / "finished"),
                                              "--settings", settings("overwrite.json", {"overwrite": True})]],
        "settings-for encoder": [door(COMPARE) + [data, *PREFIXES, *quick, "--methods", "discomkd", "--output",
                                                  str(work / "cmp_encoder"), "--settings-for",
                                                  "discomkd=" + settings("encoder.json", {"encoder_second": "lenet"})]],
        "settings-for augmentation": [door(COMPARE) + [
            data, *PREFIXES, *quick, "--methods", "discomkd", "--output", str(work / "cmp_augment"), "--settings-for",
            "discomkd=" + settings("augment.json", {"augment_second": "flip"})]],
        "teacher settings": [[sys.executable, "-c", hide_ray, data, *PREFIXES, *quick, "--method", "kd",
                              "--teacher-settings", settings("tuned.json", {"weight_aux": 3.0, "grl_coefficient": 0.3,
                                                                            "learning_rate": 0.001})]],
        "tune without ray": [[sys.executable, "-c", hide_ray.replace("tune", "compare"), data, *PREFIXES, *quick,
                              "--tune", "2", "--output", str(work / "never_tuned")]],
        "four-d input": [door("discomkd.commands.predict") + [os.path.join(run, "best_VEC.pt"), str(work / "four_d.npy"),
                                                              "--output", str(work / "never")]],
        "unseen class": [door(TRAIN) + [unseen, *PREFIXES, *quick, "--quiet"]],
        "symlinked output": [compare_logreg + ["--output", str(work / "link_cmp"), "--overwrite"]] * 3,
    }
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run_lines(lines):
        return [subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=300, env=environment)
                for argv in lines]

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return work, dict(zip(cases, pool.map(run_lines, cases.values())))


def only_error(process: subprocess.CompletedProcess) -> str:
    assert process.returncode == 2, process.stderr
    lines = process.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), process.stderr
    return lines[0]


def test_a_settings_file_cannot_switch_overwrite_on(careless):
    """A settings file once switched --overwrite on silently: it describes training, never what may be replaced."""
    work, results = careless
    (process,) = results["settings overwrite"]
    assert "'overwrite': a settings file describes training" in only_error(process)
    assert read_results(str(work / "finished"))["config"]["epochs"] == 2  # the finished run untouched


def test_a_method_s_settings_file_cannot_record_an_encoder_it_did_not_use(careless):
    """--settings-for once recorded {"encoder_second": "lenet"} in results.json and trained the MLP: refused, with
    what to do instead, before anything is written."""
    work, results = careless
    (process,) = results["settings-for encoder"]
    line = only_error(process)
    assert "encoder_second lenet" in line and "--encoder-second lenet" in line
    assert not (work / "cmp_encoder").exists()


def test_a_method_s_bad_settings_leave_no_folder_behind(careless):
    """An augmentation the vectors cannot take, given through --settings-for, once left an empty run_0/<method>/
    that refused the next command: refused before anything is written."""
    work, results = careless
    (process,) = results["settings-for augmentation"]
    assert "--augment-second flip" in only_error(process)
    assert not (work / "cmp_augment").exists()


def test_a_teacher_told_settings_it_does_not_use_says_so(careless):
    """tune.py --method kd --teacher-settings FILE once took a DisCoM-KD-tuned file without a word."""
    _, results = careless
    (process,) = results["teacher settings"]
    first, *rest = process.stderr.splitlines()
    assert first.startswith("warning: --teacher-settings ") and "weight_aux, grl_coefficient (discomkd's)" in first
    assert "teacher does not use them" in first
    assert process.returncode == 2 and "Ray is not installed" in rest[-1]  # hidden here: nothing runs


def test_the_fair_table_without_ray_is_one_line(careless):
    """compare.py --tune searches with Ray Tune: without Ray, one error line saying how to install it, nothing written."""
    work, results = careless
    (process,) = results["tune without ray"]
    assert "Ray is not installed" in only_error(process) and not (work / "never_tuned").exists()


def test_an_input_of_the_wrong_rank_is_named_as_such(careless):
    """A 4-D .npy for a checkpoint of vectors was once taken for one raw sample (\"no normalisation recorded\")."""
    _, results = careless
    (process,) = results["four-d input"]
    assert "samples of shape (1, 2, 3)" in only_error(process) and "expects samples of shape (6,)" in process.stderr


def test_a_class_never_trained_on_is_said_truly(careless):
    """A class in validation and test only: the warning once said it "cannot be predicted"; its classifier has an
    output for it (it is predicted, untrained)."""
    _, results = careless
    (process,) = results["unseen class"]
    assert process.returncode == 0, process.stderr
    warnings = [line for line in process.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings and all("cannot be predicted" not in line for line in warnings)
    assert any("has an output for them but no example to learn it from" in line for line in warnings)


def test_overwrite_through_a_link_keeps_the_link(careless):
    """An output given as a link to a folder: --overwrite once renamed the link, left the earlier comparison
    behind it and refused the next --overwrite; now the folder behind the link is replaced, every time."""
    work, results = careless
    assert [process.returncode for process in results["symlinked output"]] == [0, 0, 0], \
        [process.stderr for process in results["symlinked output"]]
    assert os.path.islink(work / "link_cmp") and os.path.isfile(work / "real_cmp" / "comparison.json")
    assert not [name for name in os.listdir(work) if ".previous" in name or ".interrupted" in name]
