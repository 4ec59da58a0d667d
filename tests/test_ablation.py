"""The paper's loss ablation as methods: each differs from DisCoM-KD in one weight or in the task features only,
and its rows in a comparison have checkpoints that load back."""
import json
import os

import pytest
import torch
from toy import PREFIXES, toy_options, write_toy_folder

from discomkd.commands import compare
from discomkd.comparison import runner as comparison
from discomkd.models.discomkd import PART_DIM
from discomkd.models.methods import ABLATIONS, METHODS, ModelShape, build_model
from discomkd.runs.outputs import checkpoint_path, load_classifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_ablations_differ_from_the_full_model_in_one_weight_or_the_task_features_only():
    full = METHODS["discomkd"]
    assert set(ABLATIONS) == {"discomkd-no-adv", "discomkd-no-mod", "discomkd-no-aux", "discomkd-no-perp",
                              "discomkd-invariant-only"}
    for name, spec in ABLATIONS.items():
        assert (spec.terms, spec.losses, spec.weights, spec.classifiers) == \
            (full.terms, full.losses, full.weights, full.classifiers), name
        assert (spec.per_modality, spec.reads_both, spec.paired, spec.needs_teacher) == \
            (full.per_modality, full.reads_both, full.paired, full.needs_teacher), name
        if name == "discomkd-invariant-only":
            assert spec.overrides == {} and spec.build is not full.build
        else:
            term = name.rsplit("-", 1)[1]
            assert spec.overrides == {f"weight_{term}": 0.0} and spec.build is full.build
    shape = ModelShape(((1, 12, 12), (6,)), ("lenet", "mlp"), 3)
    torch.manual_seed(0)
    reference = build_model("discomkd", shape)
    torch.manual_seed(0)
    invariant = build_model("discomkd-invariant-only", shape)
    different = {k for k, v in reference.state_dict().items()
                 if k not in invariant.state_dict() or invariant.state_dict()[k].shape != v.shape}
    assert different == {f"branches.{m}.task_classifier.weight" for m in (0, 1)}
    assert invariant.branches[0].task_classifier.in_features == PART_DIM
    assert reference.branches[0].task_classifier.in_features == 2 * PART_DIM


def test_ablation_rows_in_the_comparison_and_their_checkpoints_reload(tmp_path, capsys):
    folder = write_toy_folder(tmp_path / "data", separation=3.0)
    output = str(tmp_path / "out")
    argv = [folder, *PREFIXES, "--methods", "discomkd", "--ablation", *toy_options(epochs=1), "--output", output]
    assert compare.main(argv) == 0
    capsys.readouterr()
    saved = json.load(open(os.path.join(output, comparison.RESULTS_FILE)))
    assert saved["methods"] == ["discomkd", *ABLATIONS]
    table = open(os.path.join(output, comparison.TABLE_FILE)).read()
    main = table.split("\n\n")[0]  # the paired table (discomkd minus each ablation row) follows
    rows = [line.split("|")[1].strip() for line in main.splitlines() if line.startswith("| ")][1:]
    assert rows == ["discomkd", *ABLATIONS]
    run = os.path.join(output, "run_0")
    full = json.load(open(os.path.join(run, "discomkd", "results.json")))["config"]
    for name in ABLATIONS:
        config = json.load(open(os.path.join(run, name, "results.json")))["config"]
        differing = {k for k in full if full[k] != config[k]}
        expected = {"method", "output"} | set(ABLATIONS[name].overrides)
        assert differing == expected, name
        module, checkpoint = load_classifier(checkpoint_path(os.path.join(run, name), "IMG"))
        if name == "discomkd-invariant-only":
            assert checkpoint["classifier"]["task_features"] == "invariant"
            assert module.task_classifier.in_features == PART_DIM
