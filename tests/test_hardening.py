"""Issue 12: unchecked options and inputs found by a hostile new user. Each bad input must give one
`error:` line, exit status 2 and write nothing; each accepted unusual input must work correctly."""
import io
import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from toy import PREFIXES, ROOT, folder_snapshot, read_results, write_toy_folder

import benchmark
import compare
import inspect_run
import make_example
import make_splits
import predict
from discomkd import console
from discomkd import run_files as outputs
from discomkd.batches import RowSource
from discomkd.config import MAX_SEED, Config, check_config
from discomkd.data import array_path, load_data_folder, load_npy
from discomkd.engine import build_sources
from discomkd.errors import DataError, Interrupted
from functions import resume, run

ROWS = 30
FAST = ["--epochs", "1", "--batch-size", "8", "--encoder-first", "lenet", "--device", "cpu", "--quiet"]
FAST_CONFIG = Config(epochs=1, batch_size=8, encoder_first="lenet", device="cpu", verbose=0)


def refused(status: int, capsys, before: dict, after: dict, *expected: str) -> str:
    """Asserts the project's bad-input rule and returns the error line: exit 2, one `error:` line on
    stderr (warning lines aside) holding each of `expected`, nothing on stdout, no file written."""
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert status == 2, (status, err)
    assert len(errors) == 1 and errors[0].startswith("error: "), err
    assert all(text in errors[0] for text in expected), (errors[0], expected)
    assert out == "" and after == before, "something was written"
    return errors[0]


@pytest.fixture
def folder(tmp_path):
    return write_toy_folder(tmp_path / "data", PREFIXES, n=ROWS)


@pytest.fixture
def finished_run(toy_run):
    """conftest's shared finished run: (data folder, run folder)."""
    return toy_run


# ----------------------------------------------------------------------------- 2. options
@pytest.mark.parametrize("options, named", [
    (["--weight-decay", "-1"], "--weight-decay"), (["--weight-decay", "nan"], "--weight-decay"),
    (["--seed", "-1"], "--seed"), (["--seed", "99999999999"], "--seed"), (["--seed", str(2**32)], "--seed"),
    (["--device", "meta"], "--device meta"), (["--device", "mps"], "--device mps"), (["--device", "xla"], "--device"),
    (["--device", "cuda:-1"], "--device"), (["--device", ""], "--device"),
    (["--grl-coefficient", "nan"], "--grl-coefficient"), (["--grl-coefficient", "inf"], "--grl-coefficient"),
    (["--weight-cl", "0", "--weight-aux", "0", "--weight-mod", "0", "--weight-adv", "0", "--weight-perp", "0"],
     "all 0"),
    (["--output", "/proc/discomkd-run"], "/proc"), (["--output", "/sys/discomkd-run"], "/sys"),
    (["--output", "{data}/labels.npy/run"], "not a folder"),
    (["--augment-first", "shift"], "--augment-first shift"),
])
def test_main_refuses_bad_options_before_writing(cli_main, folder, capsys, options, named):
    options = [o.replace("{data}", folder) for o in options]
    before = folder_snapshot(os.path.dirname(folder))
    status = cli_main([folder, *PREFIXES, *FAST, *options])
    refused(status, capsys, before, folder_snapshot(os.path.dirname(folder)), named)
    assert not os.path.exists(os.path.join(folder, "DisCoM-KD_IMG_VEC"))


def test_seed_range_ends_are_accepted():
    for seed in (0, MAX_SEED):
        check_config(Config(seed=seed, device="cpu"))
    with pytest.raises(DataError, match="--seed"):
        check_config(Config(seed=MAX_SEED + 1, device="cpu"))


def test_one_positive_loss_weight_is_enough():
    check_config(Config(weight_cl=0, weight_aux=0, weight_mod=0, weight_adv=0, weight_perp=0.5, device="cpu"))


@pytest.mark.parametrize("options, named", [
    (["--weight-decay", "nan"], "--weight-decay"), (["--seed", "-1"], "--seed"),
    (["--grl-coefficient", "inf"], "--grl-coefficient"), (["--device", "meta"], "--device"),
    (["--seed", str(MAX_SEED), "--runs", "2"], "--runs 2"), (["--runs", "0"], "--runs"),
    (["--runs", "1000000000"], "--runs"), (["--output", "{data}/labels.npy/cmp"], "not a folder"),
])
def test_compare_checks_every_option_before_making_its_folder(folder, capsys, options, named):
    options = [o.replace("{data}", folder) for o in options]
    before = folder_snapshot(os.path.dirname(folder))
    status = compare.main([folder, *PREFIXES, "--methods", "logreg", "--device", "cpu", *options])
    refused(status, capsys, before, folder_snapshot(os.path.dirname(folder)), named)


@pytest.mark.parametrize("script", [predict, inspect_run])
@pytest.mark.parametrize("device", ["meta", "mps", "xla", "cuda:x"])
def test_predict_and_inspect_refuse_devices_this_code_does_not_run_on(finished_run, capsys, script, device):
    data, output = finished_run
    argv = ([os.path.join(output, "best_VEC.pt"), array_path(data, "VEC"), "--output", os.path.join(data, "p")]
            if script is predict else [output])
    before = folder_snapshot(data)
    refused(script.main([*argv, "--device", device]), capsys, before, folder_snapshot(data), "--device")


# ----------------------------------------------------------------------------- 3, 4. dtypes and values
def _rewrite(folder, name, change):
    path = os.path.join(folder, name)
    np.save(path, change(np.load(path)))
    return path


def test_big_endian_and_narrow_dtypes_are_read_as_their_values(folder):
    reference = np.load(array_path(folder, "IMG"))
    for dtype in (">f4", ">f8", "<f2", ">i2", "u1"):
        array = reference.astype(dtype)
        rows = np.arange(ROWS)
        for resident in (True, False):
            source = RowSource(array, rows, torch.device("cpu"), resident)
            batch = source.gather(torch.arange(ROWS))
            assert batch.dtype == torch.float32
            np.testing.assert_array_equal(batch.numpy(), array.astype(np.float32))


def test_a_big_endian_folder_trains(cli_main, folder, capsys):
    _rewrite(folder, "IMG_data_normalized.npy", lambda a: a.astype(">f4"))
    _rewrite(folder, "labels.npy", lambda a: a.astype(">i8"))
    assert cli_main([folder, *PREFIXES, *FAST]) == 0, capsys.readouterr().err
    assert read_results(os.path.join(folder, "DisCoM-KD_IMG_VEC"))["status"] == "finished"


@pytest.mark.parametrize("name, change, expected", [
    ("IMG_data_normalized.npy", lambda a: a.astype(np.longdouble), "not supported"),
    ("IMG_data_normalized.npy", lambda a: a.astype("m8[s]"), "not numeric"),
    ("labels.npy", lambda a: a.astype("m8[D]"), "integer"),
    ("test_idx.npy", lambda a: a.astype("m8[ns]"), "integer"),
    ("labels.npy", lambda a: a.astype(np.uint64) + np.uint64(2**63), "exceeds"),
    ("train_idx.npy", lambda a: np.append(a.astype(np.uint64), np.uint64(2**64 - 1)), "exceeds"),
])
def test_unsupported_dtypes_and_values_are_refused(cli_main, folder, capsys, name, change, expected):
    if name == "IMG_data_normalized.npy" and np.dtype(np.longdouble).itemsize <= 8:
        pytest.skip("no extended precision on this platform")
    path = _rewrite(folder, name, change)
    before = folder_snapshot(folder)
    refused(cli_main([folder, *PREFIXES, *FAST]), capsys, before, folder_snapshot(folder), path, expected)


def test_uint64_labels_within_int64_keep_their_values(folder):
    _rewrite(folder, "labels.npy", lambda a: a.astype(np.uint64) + np.uint64(2**62))
    data = load_data_folder(folder, *PREFIXES)
    assert data.classes.tolist() == [2**62, 2**62 + 1, 2**62 + 2]


def test_float64_beyond_float32_is_refused_naming_the_row(cli_main, folder, capsys):
    rows = np.load(os.path.join(folder, "valid_idx.npy"))
    path = array_path(folder, "VEC")
    array = np.load(path).astype(np.float64)
    array[rows[0], 2] = 1e300  # finite in float64, Inf in float32
    np.save(path, array)
    before = folder_snapshot(folder)
    refused(cli_main([folder, *PREFIXES, *FAST]), capsys, before, folder_snapshot(folder), path,
            f"row {rows[0]} ", "float32")


# ----------------------------------------------------------------------------- 5. resume
def test_resume_works_from_another_working_folder(tmp_path, monkeypatch):
    write_toy_folder(tmp_path / "project" / "data", PREFIXES, n=ROWS)
    monkeypatch.chdir(tmp_path / "project")
    config = Config(**{**FAST_CONFIG.__dict__, "epochs": 2, "output": "run"})
    with pytest.raises(Interrupted):
        run(config, "data", *PREFIXES, should_stop=lambda: True)  # relative paths, as a user types them
    assert read_results("run")["data"]["directory"] == str(tmp_path / "project" / "data")
    monkeypatch.chdir(tmp_path)
    results = resume(os.path.join("project", "run"))
    assert results["status"] == "finished" and len(results["history"]) == 2


@pytest.mark.parametrize("others", [["--epochs", "3"], ["--device", "cpu"], ["--epochs", "-5"], ["--quiet"],
                                    ["--overwrite"], ["{data}", "IMG", "VEC"], ["--seed", "0"]])
def test_resume_refuses_any_other_argument(cli_main, folder, capsys, others):
    others = [o.replace("{data}", folder) for o in others]
    before = folder_snapshot(folder)
    line = refused(cli_main(["--resume", folder, *others]), capsys, before, folder_snapshot(folder), "--resume")
    flags = [o for o in others if o.startswith("--")] or ["DIR", "FIRST_PREFIX", "SECOND_PREFIX"]
    assert all(flag in line for flag in flags), line


def test_resume_says_why_a_folder_cannot_be_resumed(cli_main, finished_run, tmp_path, capsys):
    _, output = finished_run
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    for folder, expected in ((tmp_path / "nowhere", "run folder not found"), (tmp_path / "file", "not a folder"),
                             (tmp_path / "empty", "holds no resumable state"), (output, "holds a finished run")):
        before = folder_snapshot(tmp_path)
        line = refused(cli_main(["--resume", str(folder)]), capsys, before, folder_snapshot(tmp_path), expected)
        assert "finished" not in line or expected == "holds a finished run", line


# ----------------------------------------------------------------------------- 7. predict's labels
def test_predict_labels_are_per_input_row_and_follow_rows(finished_run, tmp_path, capsys):
    data, output = finished_run
    labels = np.load(os.path.join(data, "labels.npy"))
    rows = np.random.default_rng(0).permutation(len(labels))  # as many rows as the input: the ambiguous case
    np.save(tmp_path / "rows.npy", rows)
    assert predict.main([os.path.join(output, "best_VEC.pt"), array_path(data, "VEC"), "--rows",
                         str(tmp_path / "rows.npy"), "--labels", os.path.join(data, "labels.npy"),
                         "--output", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    predicted = np.load(tmp_path / "p_classes.npy")
    accuracy = float(np.mean(predicted == labels[rows]))
    assert f"accuracy {accuracy:.4f}" in out, out
    np.save(tmp_path / "short.npy", labels[:10])  # one per selected row is no longer a second meaning
    before = folder_snapshot(tmp_path)
    refused(predict.main([os.path.join(output, "best_VEC.pt"), array_path(data, "VEC"), "--rows",
                          str(tmp_path / "rows.npy"), "--labels", str(tmp_path / "short.npy"),
                          "--output", str(tmp_path / "q")]), capsys, before, folder_snapshot(tmp_path),
            f"expected {len(labels)} (one per row of the input")


# ----------------------------------------------------------------------------- 8. make_example, make_splits
def test_make_example_help_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        make_example.main(["--help"])
    assert exit_info.value.code == 0 and "--overwrite" in capsys.readouterr().out
    assert os.listdir(tmp_path) == []


def test_make_example_refuses_a_folder_with_files_and_an_impossible_folder(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("x")
    for folder, expected in ((tmp_path / "full", "--overwrite"), (tmp_path / "file" / "sub", "not a folder"),
                             (tmp_path / "file", "not a folder"), ("/proc/example", "/proc")):
        before = folder_snapshot(tmp_path)
        refused(make_example.main([str(folder)]), capsys, before, folder_snapshot(tmp_path), expected)


def test_make_example_overwrite_keeps_other_files(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert make_example.main([str(tmp_path), "--overwrite"]) == 0
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "labels.npy").is_file()


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
    with pytest.raises(OSError):
        make_splits.make_splits(folder, seed=3, overwrite=True)
    assert folder_snapshot(folder) == before
    assert {n: open(os.path.join(folder, n), "rb").read() for n in contents} == contents


# ----------------------------------------------------------------------------- 9. --overwrite
def test_overwrite_removes_an_earlier_runs_outputs_and_nothing_else(cli_main, folder, capsys):
    output = os.path.join(folder, "DisCoM-KD_IMG_VEC")
    os.makedirs(os.path.join(output, "figures"))
    stale = ["probes.json", "best_OLD.pt", "test_predictions_OLD.npy", "state.pt", "figures/tsne.png",
             "figures/confusion_OLD.png", "results.json"]
    for name in stale + ["notes.txt"]:
        with open(os.path.join(output, name), "w") as handle:
            handle.write("earlier")
    # a refused run removes nothing
    before = folder_snapshot(folder)
    refused(cli_main([folder, *PREFIXES, *FAST, "--overwrite", "--augment-first", "shift"]), capsys, before,
            folder_snapshot(folder), "--augment-first")
    assert cli_main([folder, *PREFIXES, *FAST, "--overwrite"]) == 0
    left = sorted(os.listdir(output))
    assert left == ["best_IMG.pt", "best_VEC.pt", "notes.txt", "results.json", "test_predictions_IMG.npy",
                    "test_predictions_VEC.npy"], left
    assert read_results(output)["status"] == "finished"


def test_clear_run_outputs_keeps_a_figures_folder_holding_other_files(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "tsne.png").write_text("x")
    (tmp_path / "figures" / "mine.png").write_text("x")
    assert outputs.clear_run_outputs(str(tmp_path)) == [str(tmp_path / "figures" / "tsne.png")]
    assert os.listdir(tmp_path / "figures") == ["mine.png"]


# ----------------------------------------------------------------------------- 10. line-buffered output
def test_stdout_redirected_to_a_file_gets_each_epoch_line_at_once(tmp_path):
    folder = write_toy_folder(tmp_path / "data", PREFIXES, n=ROWS)
    log = tmp_path / "train.log"
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, os.path.join(ROOT, "main_DisCoM-KD.py"), folder, *PREFIXES,
                                    *FAST[:-1], "--epochs", "1000"], stdout=handle, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None and "epoch    1/1000" not in log.read_text():
            time.sleep(0.1)
        assert process.poll() is None, "the run ended before its first epoch line reached the file"
        assert "epoch    1/1000" in log.read_text()
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("script", [compare, predict, inspect_run, make_splits, make_example, benchmark])
def test_every_command_makes_stdout_line_buffered(script, monkeypatch):
    calls = []
    monkeypatch.setattr(script, "configure_output", lambda: calls.append(1))
    with pytest.raises(SystemExit):
        script.main(["--help"])
    assert calls == [1]


def test_line_buffered_stdout(monkeypatch):
    stream = io.TextIOWrapper(io.BytesIO())
    monkeypatch.setattr(sys, "stdout", stream)
    console.line_buffered_stdout()
    assert stream.line_buffering
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # a test's capture: nothing to reconfigure
    console.line_buffered_stdout()


# ----------------------------------------------------------------------------- 11. smaller things
def test_load_npy_names_what_stands_where_a_file_should_be(tmp_path):
    os.mkdir(tmp_path / "folder.npy")
    os.mkfifo(tmp_path / "fifo.npy")
    os.symlink(tmp_path / "loop_b.npy", tmp_path / "loop_a.npy")
    os.symlink(tmp_path / "loop_a.npy", tmp_path / "loop_b.npy")
    os.symlink(tmp_path / "gone.npy", tmp_path / "dangling.npy")
    for name, expected in (("folder.npy", "is a folder, not a file"), ("fifo.npy", "not a regular file"),
                           ("loop_a.npy", "symbolic link loop"), ("dangling.npy", "broken symbolic link"),
                           ("missing.npy", "file not found")):
        with pytest.raises(DataError, match=expected):
            load_npy(str(tmp_path / name), "an array")


def test_predict_prints_no_numpy_warning_before_its_error(finished_run, tmp_path, capsys):
    data, output = finished_run
    array = np.load(array_path(data, "VEC")).astype(np.float64)
    array[4, 1] = 1e300  # an overflow when cast to float32: numpy warns unless told that it is expected
    np.save(tmp_path / "big.npy", array)
    before = folder_snapshot(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = predict.main([os.path.join(output, "best_VEC.pt"), str(tmp_path / "big.npy"), "--device", "cpu"])
    refused(status, capsys, before, folder_snapshot(tmp_path), "row 4 ")
    assert [str(w.message) for w in caught] == []


def test_inspect_warns_about_an_unfinished_run(finished_run, tmp_path, capsys):
    data, output = finished_run
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    results = read_results(output)
    results["status"] = "interrupted"
    (interrupted / "results.json").write_text(json.dumps(results))
    for name in ("best_IMG.pt", "best_VEC.pt"):
        os.symlink(os.path.join(output, name), interrupted / name)
    assert inspect_run.main([str(interrupted), "--no-figures", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "interrupted" in err and "not finished" in err, err


def test_inspect_with_nothing_to_do_is_an_error(finished_run, capsys):
    _, output = finished_run
    before = folder_snapshot(output)
    refused(inspect_run.main([output, "--no-figures", "--no-probes"]), capsys, before, folder_snapshot(output),
            "nothing to do")


def test_spectro_images_are_not_augmented_by_default(tmp_path):
    folder = write_toy_folder(tmp_path / "data", ("SPECTRO", "IMG"), n=ROWS, shapes=((1, 12, 12), (1, 12, 12)))
    data = load_data_folder(folder, "SPECTRO", "IMG")
    *_, augmentations = build_sources(Config(data_on_device="no"), data, torch.device("cpu"))
    assert augmentations == {0: "none", 1: "flip+rot90"}
    *_, augmentations = build_sources(Config(data_on_device="no", augment_first="flip"), data, torch.device("cpu"))
    assert augmentations == {0: "flip", 1: "flip+rot90"}  # an explicit choice still applies


# ----------------------------------------------------------------------------- benchmark
@pytest.mark.parametrize("options, named", [
    (["--precision", "bf17"], "--precision"), (["--batch-size", "1"], "--batch-size"),
    (["--compile", "maybe"], "--compile"), (["--data-on-device", "always"], "--data-on-device"),
    (["--epochs", "0"], "--epochs"), (["--classes", "1"], "--classes"), (["--samples", "5"], "--samples"),
    (["--first-shape", "0", "4", "4"], "--first-shape"), (["--second-shape", "1", "2", "3", "4"], "--second-shape"),
    (["--first-shape", "1", "3", "3"], "too small"), (["--device", "meta"], "--device"),
    (["--samples", "10000000000000"], "GiB"),
])
def test_benchmark_refuses_bad_options(tmp_path, capsys, options, named):
    before = folder_snapshot(tmp_path)
    status = benchmark.main(["--shape", "tiny", "--output", str(tmp_path / "out"), *options])
    refused(status, capsys, before, folder_snapshot(tmp_path), named)
    assert not (tmp_path / "out").exists()
