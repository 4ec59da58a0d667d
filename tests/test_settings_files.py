"""--settings files: their values set the defaults the command line overrides, they go through the command's own
checks, and a bad value is refused as its option would be (every command line run as typed: test_command_lines.py)."""
import json
import os

import pytest
from toy import PREFIXES, QUICK_OPTIONS, folder_snapshot, one_error_line, toy_options, write_toy_folder

from discomkd.commands import compare
from discomkd.training import settings_file as settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_settings_file_sets_defaults_and_the_command_line_wins(tmp_path, cli_main, capsys):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"learning_rate": 0.003, "weight_adv": 0.5, "epochs": 7, "augment_first": "flip"}))
    parser = compare.build_parser()
    args = vars(settings.parse_with_settings(parser, ["D", "A", "B", "--settings", str(path), "--epochs", "2"]))
    assert (args["learning_rate"], args["weight_adv"], args["epochs"], args["augment_first"]) == (0.003, 0.5, 2, "flip")
    assert settings.command_line({"learning_rate": 0.003, "overwrite": True, "epochs": 7}) == \
        ["--epochs", "7", "--learning-rate", "0.003", "--overwrite"]
    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    output = str(tmp_path / "run")
    path.write_text(json.dumps({"epochs": 1, "learning_rate": 0.002, "weight_perp": 0.0}))
    assert cli_main([folder, *PREFIXES, "--settings", str(path), "--batch-size", "16", "--encoder-first", "lenet",
                     "--device", "cpu", "--quiet", "--output", output]) == 0
    config = json.load(open(os.path.join(output, "results.json")))["config"]
    assert (config["epochs"], config["learning_rate"], config["weight_perp"]) == (1, 0.002, 0.0)
    capsys.readouterr()
    for content, expected in (("{", "not JSON"), ('{"learning_rate": "fast"}', "a number is expected"),
                              ('{"method": "mono"}', "'method' is not a setting"), ("[1]", "JSON object")):
        path.write_text(content)
        before = folder_snapshot(tmp_path)
        assert cli_main([folder, *PREFIXES, "--settings", str(path)]) == 2
        assert expected in one_error_line(capsys.readouterr().err)
        assert folder_snapshot(tmp_path) == before


def test_a_settings_file_goes_through_the_checks_of_the_command_line(tmp_path, cli_main, capsys):
    """compare.py has no --legacy-modality-targets (its discomkd-legacy row trains them): a settings file
    cannot slip it into the discomkd row (it used to, as a default the parser never checked), while
    main_DisCoM-KD.py, which has the option, takes it from a file as from its command line."""
    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    path = tmp_path / "legacy.json"
    path.write_text(json.dumps({"legacy_modality_targets": True}))
    output = str(tmp_path / "cmp")
    argv = [folder, *PREFIXES, "--methods", "discomkd", *toy_options(epochs=1), "--output", output]
    before = folder_snapshot(tmp_path)
    with pytest.raises(SystemExit):  # argparse's refusal of the option typed
        compare.main([*argv, "--legacy-modality-targets"])
    capsys.readouterr()
    assert compare.main([*argv, "--settings", str(path)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(path) in line and "'legacy_modality_targets' is not an option of this command" in line
    assert folder_snapshot(tmp_path) == before
    run = str(tmp_path / "run")
    assert cli_main([folder, *PREFIXES, *toy_options(epochs=1), "--quiet", "--output", run,
                     "--settings", str(path)]) == 0
    assert json.load(open(os.path.join(run, "results.json")))["config"]["legacy_modality_targets"] is True


@pytest.mark.parametrize("content, expected", [
    ('{"weight_decay": 1' + "0" * 400 + "}", "--weight-decay inf"),  # read as a float, as typed: was a traceback
    ('{"grl_warmup": NaN}', "--grl-warmup nan"),
    ('{"epochs": ' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply"),  # was a RecursionError
    ('{"epochs": 1, "epochs": 0}', "'epochs' given more than once"),  # was the last one, silently
    ('{"device": null}', "device null: a string is expected"),
    # where a run writes and what it may destroy are the command line's: a file once switched --overwrite on
    ('{"overwrite": true}', "'overwrite': a settings file describes training"),
    ('{"output": "elsewhere"}', "'output': a settings file describes training"),
    ('{"epochs": {"epochs": 1}}', "an integer is expected"),
])
def test_a_settings_value_is_refused_as_its_option_would_be(tmp_path, cli_main, capsys, content, expected):
    folder = write_toy_folder(tmp_path / "data")
    path = tmp_path / "settings.json"
    path.write_text(content)
    before = folder_snapshot(tmp_path)
    assert cli_main([folder, *PREFIXES, *QUICK_OPTIONS, "--settings", str(path)]) == 2
    assert expected in one_error_line(capsys.readouterr().err)
    assert folder_snapshot(tmp_path) == before
