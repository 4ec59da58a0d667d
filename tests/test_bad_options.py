"""Bad options and arguments of every command, one by one: each gives one `error:` line, exit status 2
and writes nothing (tests/test_fuzz_options.py fuzzes every option's values); --resume with any other
argument; the options' accepted edges."""
import os

import pytest
from toy import PREFIXES, QUICK_OPTIONS, folder_snapshot, refused, write_toy_folder

from discomkd.commands import benchmark, compare, inspect_run, predict
from discomkd.data.folder import array_path
from discomkd.training.config import Config, check_config
from discomkd.utils.errors import OptionError
from discomkd.utils.seeds import MAX_SEED

ROWS = 30


@pytest.fixture
def folder(tmp_path):
    return write_toy_folder(tmp_path / "data", PREFIXES, n=ROWS)


# ----------------------------------------------------------------------------- options
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
    status = cli_main([folder, *PREFIXES, *QUICK_OPTIONS, *options])
    refused(status, capsys, before, folder_snapshot(os.path.dirname(folder)), named)
    assert not os.path.exists(os.path.join(folder, "DisCoM-KD_IMG_VEC"))


def test_seed_range_ends_are_accepted():
    for seed in (0, MAX_SEED):
        check_config(Config(seed=seed, device="cpu"))
    with pytest.raises(OptionError, match="--seed"):
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
def test_predict_and_inspect_refuse_devices_this_code_does_not_run_on(toy_run, capsys, script, device):
    data, output = toy_run
    argv = ([os.path.join(output, "best_VEC.pt"), array_path(data, "VEC"), "--output", os.path.join(data, "p")]
            if script is predict else [output])
    before = folder_snapshot(data)
    refused(script.main([*argv, "--device", device]), capsys, before, folder_snapshot(data), "--device")


# ----------------------------------------------------------------------------- --resume
@pytest.mark.parametrize("others", [["--epochs", "3"], ["--device", "cpu"], ["--epochs", "-5"], ["--no-fast"],
                                    ["--overwrite"], ["{data}", "IMG", "VEC"], ["--seed", "0"],
                                    ["--quiet", "--epochs", "3"]])  # --quiet and --verbose alone may come with it
def test_resume_refuses_any_other_argument(cli_main, folder, capsys, others):
    others = [o.replace("{data}", folder) for o in others]
    before = folder_snapshot(folder)
    line = refused(cli_main(["--resume", folder, *others]), capsys, before, folder_snapshot(folder), "--resume")
    flags = [o for o in others if o.startswith("--")] or ["DIR", "FIRST_PREFIX", "SECOND_PREFIX"]
    assert all(flag in line for flag in flags), line


def test_resume_says_why_a_folder_cannot_be_resumed(cli_main, toy_run, tmp_path, capsys):
    _, output = toy_run
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    for folder, expected in ((tmp_path / "nowhere", "run folder not found"), (tmp_path / "file", "not a folder"),
                             (tmp_path / "empty", "holds no resumable state"), (output, "holds a finished run")):
        before = folder_snapshot(tmp_path)
        line = refused(cli_main(["--resume", str(folder)]), capsys, before, folder_snapshot(tmp_path), expected)
        assert "finished" not in line or expected == "holds a finished run", line


# ----------------------------------------------------------------------------- benchmark
@pytest.mark.parametrize("options, named", [
    (["--precision", "bf17"], "--precision"), (["--batch-size", "1"], "--batch-size"),
    (["--compile", "maybe"], "--compile"), (["--data-on-device", "always"], "--data-on-device"),
    (["--epochs", "0"], "--epochs"), (["--classes", "1"], "--classes"), (["--samples", "5"], "--samples"),
    (["--first-shape", "0", "4", "4"], "--first-shape"), (["--second-shape", "1", "2", "3", "4"], "--second-shape"),
    (["--first-shape", "1", "3", "3"], "too small"), (["--device", "meta"], "--device"),
    (["--samples", "10000000000000"], "GiB"),
    # --methods is checked with or without --end-to-end (an unknown one used to be ignored without it)
    (["--methods", "bogus"], "--methods bogus"), (["--methods", "mono,bogus", "--end-to-end"], "--methods mono,bogus"),
    (["--methods", ","], "--methods ,"), (["--methods", "mono"], "with --end-to-end only"),
])
def test_benchmark_refuses_bad_options(tmp_path, capsys, options, named):
    before = folder_snapshot(tmp_path)
    status = benchmark.main(["--shape", "tiny", "--output", str(tmp_path / "out"), *options])
    refused(status, capsys, before, folder_snapshot(tmp_path), named)
    assert not (tmp_path / "out").exists()
