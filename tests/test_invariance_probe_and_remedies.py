"""The invariant part's modality probe and cross-modal transfer in every DisCoM-KD run, and the remedies for a
fooled discriminator (reversal schedules, an MLP discriminator, a faster discriminator), all off by default."""
import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from toy import TOY_SETTINGS, logged_lines, read_results, write_toy_folder

from discomkd.analysis.inspection import load_run
from discomkd.commands import compare
from discomkd.comparison import runner as comparison
from discomkd.evaluation.probes import INVARIANCE_MEANING, TRANSFER_MEANING, modality_probe, probe_rows, transfer_lines
from discomkd.models import methods
from discomkd.models.discomkd import PART_DIM, DisCoMKD, gradient_reverse, grl_coefficient_at
from discomkd.training import run as training_run
from discomkd.training.config import Config, check_config
from discomkd.training.inference import feature_parts
from discomkd.utils.errors import OptionError

PREFIXES = ("IMG", "VEC")
# the paper's learning rate, as in the recorded history below
TOY = {**TOY_SETTINGS, "learning_rate": Config.learning_rate, "verbose": 0}

# Loss history of a 2-epoch toy run with the default options (lenet + mlp, toy folder n=120, seed 0),
# recorded with the code before the remedies (main at 833f401; torch 2.13.0, 2-core AMD EPYC CPU).
BEFORE_THE_REMEDIES = [
    {"adv": 0.7199241518974304, "aux": 1.944800853729248, "cl": 0.9965729713439941, "mod": 0.7425656318664551,
     "perp": 0.6736539006233215, "total": 5.077517986297607},
    {"adv": 0.737011194229126, "aux": 1.5337692499160767, "cl": 0.7720596790313721, "mod": 0.7037481665611267,
     "perp": 0.6633923649787903, "total": 4.409980773925781}]


def toy_results(folder, name="run", **overrides):
    """results.json of a 2-epoch toy run in folder/name."""
    output = os.path.join(folder, name)
    training_run.run(Config(output=output, **{**TOY, **overrides}), folder, *PREFIXES)
    return read_results(output)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_toy_folder(tmp_path_factory.mktemp("invariance") / "data", PREFIXES)


# ----------------------------------------------------------------------------- schedules
def at(schedule, progress, coefficient=2.0, warmup=0.25):
    value = grl_coefficient_at(schedule, coefficient, torch.tensor(progress), warmup)
    return float(value)


def test_dann_schedule_ramps_from_zero_to_lambda():
    assert at("dann", 0.0) == 0.0
    assert at("dann", 1.0) == pytest.approx(2.0 * 0.99991, rel=1e-5)  # 2 / (1 + e^-10) - 1 = 0.999909
    assert at("dann", 0.1) == pytest.approx(2.0 * (2 / (1 + math.exp(-1)) - 1), rel=1e-6)  # 0.924
    assert at("dann", 0.5) == pytest.approx(2.0 * (2 / (1 + math.exp(-5)) - 1), rel=1e-6)
    values = [at("dann", p / 10) for p in range(11)]
    assert values == sorted(values)


def test_linear_schedule_warms_up_then_stays():
    assert at("linear", 0.0) == 0.0
    assert at("linear", 0.1) == pytest.approx(2.0 * 0.1 / 0.25)
    assert at("linear", 0.25) == pytest.approx(2.0)
    assert at("linear", 0.9) == pytest.approx(2.0)


def test_constant_schedule_is_the_number_itself():
    # the paper's setting passes the very float it always passed: no new arithmetic on the default path
    assert grl_coefficient_at("constant", 0.3, None) == 0.3
    assert type(grl_coefficient_at("constant", 0.3, torch.tensor(0.5))) is float


def test_tensor_coefficient_reverses_exactly_as_the_float():
    x = torch.randn(5, PART_DIM, requires_grad=True)
    weights = torch.randn(5, PART_DIM)
    for value in (1.0, 0.3, 0.7071):
        grads = [torch.autograd.grad((gradient_reverse(x, c) * weights).sum(), x)[0]
                 for c in (value, torch.tensor(value))]
        assert torch.equal(grads[0], grads[1])


# ----------------------------------------------------------------------------- discriminator
def test_mlp_discriminator_shapes_and_reversed_gradient():
    torch.manual_seed(0)
    model = DisCoMKD([(1, 12, 12), (6,)], 3, ("lenet", "mlp"), discriminator="mlp")
    layers = list(model.discriminator)
    assert [type(layer) for layer in layers] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    assert (layers[0].in_features, layers[0].out_features, layers[2].out_features) == (PART_DIM, PART_DIM, 2)
    invariant = torch.randn(7, PART_DIM, requires_grad=True)
    targets = torch.full((7,), 1, dtype=torch.int64)
    assert model.discriminator(invariant).shape == (7, 2)
    for coefficient in (1.0, torch.tensor(0.4)):
        plain = torch.autograd.grad(F.cross_entropy(model.discriminator(invariant), targets), invariant)[0]
        loss = F.cross_entropy(model.discriminator(gradient_reverse(invariant, coefficient)), targets)
        reversed_grad, head_grad = torch.autograd.grad(loss, [invariant, layers[0].weight])
        assert plain.abs().sum() > 0
        torch.testing.assert_close(reversed_grad, -float(coefficient) * plain)
        # the discriminator itself still descends its loss: its own gradient is not reversed
        head_plain = torch.autograd.grad(F.cross_entropy(model.discriminator(invariant), targets), layers[0].weight)[0]
        torch.testing.assert_close(head_grad, head_plain)
    out = model.branch_output(torch.randn(4, 1, 12, 12), 0, torch.tensor(0.5))
    assert out.discriminator.shape == (4, 2)


def test_linear_discriminator_is_the_default():
    model = DisCoMKD([(1, 12, 12), (6,)], 3, ("lenet", "mlp"))
    assert isinstance(model.discriminator, torch.nn.Linear) and model.discriminator.out_features == 2


def test_discriminator_learning_rate_group():
    shape = methods.ModelShape(((1, 12, 12), (6,)), ("lenet", "mlp"), 3, "mlp")
    model = methods.build_model("discomkd", shape)
    spec = methods.METHODS["discomkd"]
    (single,) = spec.parameter_groups(model, Config())
    assert len(single["params"]) == len(list(model.parameters())) and "lr" not in single
    rest, discriminator = spec.parameter_groups(model, Config(learning_rate=1e-4, discriminator_lr_scale=10))
    assert discriminator["lr"] == pytest.approx(1e-3)
    assert {id(p) for p in discriminator["params"]} == {id(p) for p in model.discriminator.parameters()}
    assert len(rest["params"]) + len(discriminator["params"]) == len(list(model.parameters()))
    optimizer = torch.optim.Adam(spec.parameter_groups(model, Config(discriminator_lr_scale=10)), lr=1e-4)
    assert [g["lr"] for g in optimizer.param_groups] == [pytest.approx(1e-4), pytest.approx(1e-3)]


@pytest.mark.parametrize("option, value", [
    ("grl_schedule", "cosine"), ("grl_schedule", ""), ("grl_warmup", 0.0), ("grl_warmup", 1.5),
    ("grl_warmup", math.nan), ("discriminator", "MLP"), ("discriminator_lr_scale", 0.0),
    ("discriminator_lr_scale", -1.0), ("discriminator_lr_scale", math.inf), ("discriminator_lr_scale", math.nan)])
def test_bad_remedy_options_are_refused_in_one_line(option, value):
    with pytest.raises(OptionError, match="--" + option.replace("_", "-")):
        check_config(Config(device="cpu", **{option: value}))


def test_remedy_options_are_on_the_command_lines(cli_main, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setitem(cli_main.__globals__, "run", lambda config, *args, **kwargs: seen.setdefault("config", config))
    assert cli_main([str(tmp_path), "A", "B", "--grl-schedule", "linear", "--grl-warmup", "0.5", "--discriminator",
                     "mlp", "--discriminator-lr-scale", "3"]) == 0
    config = seen["config"]
    assert (config.grl_schedule, config.grl_warmup, config.discriminator, config.discriminator_lr_scale) == \
        ("linear", 0.5, "mlp", 3.0)
    defaults = Config()
    assert (defaults.grl_schedule, defaults.discriminator, defaults.discriminator_lr_scale) == ("constant", "linear", 1)
    options = compare.build_parser().parse_args(["D", "A", "B", "--grl-schedule", "dann"])
    assert options.grl_schedule == "dann"


# ----------------------------------------------------------------------------- the probe
def test_probe_is_at_chance_for_identical_distributions_and_finds_a_shift():
    rng = np.random.default_rng(0)
    same = modality_probe([rng.standard_normal((300, 16)), rng.standard_normal((300, 16))])
    assert abs(same["modality_accuracy"] - 0.5) < 0.1 and same["chance"] == 0.5
    assert same["rows_per_modality"] == 300
    shifted = modality_probe([rng.standard_normal((300, 16)), rng.standard_normal((300, 16)) + 2.0])
    assert shifted["modality_accuracy"] > 0.97
    assert modality_probe([np.full((20, 4), np.nan), np.zeros((20, 4))])["modality_accuracy"] is None


def test_probe_rows_are_capped_reproducibly():
    rows = np.arange(100, 5100)
    capped = probe_rows(rows, seed=3, limit=2000)
    assert len(capped) == 2000 and len(np.unique(capped)) == 2000 and np.all(np.diff(capped) > 0)
    assert np.array_equal(capped, probe_rows(rows, seed=3, limit=2000))
    assert np.array_equal(probe_rows(rows[:50], seed=3, limit=2000), rows[:50])


def test_run_writes_and_prints_the_invariance_probe_of_its_best_checkpoints(folder, tmp_path):
    with logged_lines() as lines:
        results = toy_results(folder, "probed")
    probe = results["invariance_probe"]
    valid_rows = len(np.load(os.path.join(folder, "valid_idx.npy")))
    assert probe["split"] == "valid" and probe["chance"] == 0.5 and probe["rows_per_modality"] == valid_rows
    assert 0.0 <= probe["modality_accuracy"] <= 1.0 and probe["std"] >= 0.0
    # the same probe recomputed from the checkpoints the way inspect_run.py reads them
    output = os.path.join(folder, "probed")
    _, data = load_run(output)
    features = feature_parts(output, data, split="valid")
    again = modality_probe([features[p]["invariant"] for p in PREFIXES], seed=0)
    assert again["modality_accuracy"] == probe["modality_accuracy"] and again["std"] == probe["std"]
    printed = "\n".join(lines)
    assert f"invariant modality probe on the validation rows: {probe['modality_accuracy']:.3f}" in printed
    assert INVARIANCE_MEANING in printed
    # the cross-modal transfer beside it: one line per direction, right under the probe's two lines
    transfer = results["cross_modal_transfer"]
    at = next(i for i, line in enumerate(lines) if line.startswith("invariant modality probe on the validation rows"))
    assert lines[at + 2:at + 5] == [*transfer_lines(transfer), f"({TRANSFER_MEANING})"]
    first = transfer["first->second"]
    across, within = first["transfer"], first["within"]
    assert lines[at + 2].startswith(f"cross-modal transfer IMG->VEC on the validation rows: accuracy "
                                    f"{across['accuracy']:.3f}, weighted F1 {across['weighted_f1']:.3f} "
                                    f"(within IMG {within['accuracy']:.3f}")
    assert lines[at + 3].startswith("cross-modal transfer VEC->IMG on the validation rows: accuracy ")


def test_methods_without_invariant_parts_have_no_probe(folder):
    results = toy_results(folder, "mono", method="mono", modality="VEC")
    assert "invariance_probe" not in results and "cross_modal_transfer" not in results


def test_comparison_shows_the_probe_for_discomkd_rows_only(folder, tmp_path):
    output = str(tmp_path / "cmp")
    results = comparison.compare(Config(**{**TOY, "epochs": 1}, output=output), folder, *PREFIXES, runs=2,
                                 methods="mono,discomkd-dann", resplit=True)
    aggregated = results["aggregated"]
    values = [run["methods"]["discomkd-dann"]["invariance_probe"]["modality_accuracy"] for run in results["results"]]
    assert aggregated["discomkd-dann"]["invariance_probe"]["values"] == values
    assert "invariance_probe" not in aggregated["mono"]
    table = open(os.path.join(output, comparison.TABLE_FILE)).read()
    rows = {line.split("|")[1].strip(): line.split("|") for line in table.split("\n\n")[0].splitlines()
            if line.startswith("| ")}
    assert "invariant modality probe [i]" in rows["method"][4]
    assert rows["discomkd-dann"][4].strip() == f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"
    assert rows["mono"][4].strip() == "-" and "[i] Validation rows" in table
    # the cross-modal transfer beside it, per direction: transfer / within accuracy over the runs
    transfers = [run["methods"]["discomkd-dann"]["cross_modal_transfer"] for run in results["results"]]
    assert all(run["methods"]["mono"]["cross_modal_transfer"] is None for run in results["results"])
    assert "cross_modal_transfer" not in aggregated["mono"]
    for column, (name, direction) in ((5, ("first->second", "IMG->VEC")), (6, ("second->first", "VEC->IMG"))):
        assert rows["method"][column].strip() == f"transfer {direction} / within [x]"
        across, within = ([t[name][where]["accuracy"] for t in transfers] for where in ("transfer", "within"))
        assert aggregated["discomkd-dann"]["cross_modal_transfer"][name]["transfer"]["accuracy"]["values"] == across
        assert rows["discomkd-dann"][column].strip() == (f"{np.mean(across):.3f} ± {np.std(across, ddof=1):.3f} / "
                                                         f"{np.mean(within):.3f} ± {np.std(within, ddof=1):.3f}")
        assert rows["mono"][column].strip() == "-"
    assert "[x] Cross-modal transfer" in table
    saved = json.load(open(os.path.join(output, "run_0", "discomkd-dann", "results.json")))
    assert saved["config"]["grl_schedule"] == "dann"  # the method's overrides reach the run
    # inspect_run.py reads such a run with the split it was trained on (saved beside it), not the folder's
    _, data = load_run(os.path.join(output, "run_1", "discomkd-dann"))
    drawn = np.load(os.path.join(output, "run_1", "split", "test_idx.npy"))
    assert np.array_equal(data.modalities[0].splits["test"], drawn)
    assert not np.array_equal(drawn, np.load(os.path.join(folder, "test_idx.npy")))


def test_remedy_methods_are_not_in_the_default_comparison():
    assert "discomkd" in comparison.DEFAULT_METHODS and "discomkd-legacy" in comparison.DEFAULT_METHODS
    for name in ("discomkd-dann", "discomkd-mlp-disc", "discomkd-fast-disc", "discomkd-remedies"):
        assert name in comparison.ALL_METHODS and name not in comparison.DEFAULT_METHODS
        assert methods.METHODS[name].invariant_parts


# ----------------------------------------------------------------------------- the paper's setting unchanged
def test_default_options_give_the_results_of_before(folder):
    """The code before the remedies (a float coefficient, one parameter list), rebuilt here, and the default path
    now: bit-identical trajectories and results."""
    def old_losses(model, inputs, labels, config, progress=None):
        first, second = model(inputs[0], inputs[1], config.grl_coefficient)
        return methods.discomkd_losses(first, second, labels[0], labels[1], config.legacy_modality_targets)

    old_spec = dataclasses.replace(methods.METHODS["discomkd"], losses=old_losses,
                                   parameter_groups=lambda model, config: [p for p in model.parameters()])
    now = toy_results(folder, "now")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(methods.METHODS, "discomkd", old_spec)  # the engine's METHODS is this dict
        before = toy_results(folder, "before")
    assert [h["loss"] for h in now["history"]] == [h["loss"] for h in before["history"]]
    assert now["final"] == before["final"]
    # and the values recorded before the change, up to the last bits a different CPU may change
    for epoch, recorded in zip(now["history"], BEFORE_THE_REMEDIES):
        assert epoch["loss"] == pytest.approx(recorded, rel=1e-4)


def test_schedules_change_training_and_the_constant_one_does_not(folder):
    default = toy_results(folder, "default")
    for name, overrides in (("dann", {"grl_schedule": "dann"}), ("mlp", {"discriminator": "mlp"}),
                            ("fast", {"discriminator_lr_scale": 10.0})):
        results = toy_results(folder, name, **overrides)
        assert results["history"][0]["loss"]["adv"] != default["history"][0]["loss"]["adv"], name
        assert all(math.isfinite(v) for h in results["history"] for v in h["loss"].values())


def test_a_compiled_step_reads_the_changing_coefficient_without_recompiling(folder, monkeypatch):
    """aot_eager runs torch.compile's captured step with eager kernels: with the dann schedule it must be
    the eager trajectory exactly, and a second epoch (new coefficients every step) compiles nothing new."""
    backend = torch._dynamo.lookup_backend("aot_eager")
    compiled_graphs = []

    def counting_backend(graph, example_inputs):
        compiled_graphs.append(graph)
        return backend(graph, example_inputs)

    compile_function = torch.compile
    monkeypatch.setattr(torch, "compile", lambda function, **options: compile_function(
        function, **{**options, "backend": counting_backend}))
    eager = toy_results(folder, "eager", grl_schedule="dann", discriminator="mlp", compile="no")
    torch._dynamo.reset()
    graphs_after_epoch = []

    def log(line):
        if line.startswith("epoch"):
            graphs_after_epoch.append(len(compiled_graphs))

    with logged_lines(log):
        compiled = toy_results(folder, "compiled", verbose=1, grl_schedule="dann", discriminator="mlp", compile="yes")
    assert [h["loss"] for h in compiled["history"]] == [h["loss"] for h in eager["history"]]
    # epoch 1 compiles (its last, smaller batch may add a graph); epoch 2's new coefficients add none
    assert len(graphs_after_epoch) == 2 and graphs_after_epoch[0] >= 1
    assert graphs_after_epoch[1] == graphs_after_epoch[0]
