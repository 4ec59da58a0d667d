"""The remedies for a fooled discriminator, all off by default: schedules of the reversal coefficient, a one-hidden-layer
discriminator, a faster discriminator; as options, as methods of the comparison, through the compiled step; and the paper's
setting giving the results it gave before they existed."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from toy import logged_lines, paper_rate_results, write_toy_folder

from discomkd.commands import compare
from discomkd.comparison import inputs as comparison_inputs
from discomkd.models import methods
from discomkd.models.discomkd import PART_DIM, DisCoMKD, gradient_reverse, grl_coefficient_at
from discomkd.training.config import Config, check_config
from discomkd.utils.errors import OptionError

# Loss history of a 2-epoch toy run with the default options (lenet + mlp, toy folder n=120, seed 0),
# recorded with the code before the remedies (main at 833f401; torch 2.13.0, 2-core AMD EPYC CPU).
BEFORE_THE_REMEDIES = [
    {"adv": 0.7199241518974304, "aux": 1.944800853729248, "cl": 0.9965729713439941, "mod": 0.7425656318664551,
     "perp": 0.6736539006233215, "total": 5.077517986297607},
    {"adv": 0.737011194229126, "aux": 1.5337692499160767, "cl": 0.7720596790313721, "mod": 0.7037481665611267,
     "perp": 0.6633923649787903, "total": 4.409980773925781}]


# ----------------------------------------------------------------------------- schedules
def at(schedule, progress, coefficient=2.0, warmup=0.25):
    value = grl_coefficient_at(schedule, coefficient, torch.tensor(progress), warmup)
    return float(value)

PREFIXES = ("IMG", "VEC")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_toy_folder(tmp_path_factory.mktemp("remedies") / "data", PREFIXES)


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


def test_remedy_methods_are_not_in_the_default_comparison():
    assert "discomkd" in comparison_inputs.DEFAULT_METHODS and "discomkd-legacy" in comparison_inputs.DEFAULT_METHODS
    for name in ("discomkd-dann", "discomkd-mlp-disc", "discomkd-fast-disc", "discomkd-remedies"):
        assert name in comparison_inputs.ALL_METHODS and name not in comparison_inputs.DEFAULT_METHODS
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
    now = paper_rate_results(folder, "now")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(methods.METHODS, "discomkd", old_spec)  # the engine's METHODS is this dict
        before = paper_rate_results(folder, "before")
    assert [h["loss"] for h in now["history"]] == [h["loss"] for h in before["history"]]
    assert now["final"] == before["final"]
    # and the values recorded before the change, up to the last bits a different CPU may change
    for epoch, recorded in zip(now["history"], BEFORE_THE_REMEDIES):
        assert epoch["loss"] == pytest.approx(recorded, rel=1e-4)


def test_schedules_change_training_and_the_constant_one_does_not(folder):
    default = paper_rate_results(folder, "default")
    for name, overrides in (("dann", {"grl_schedule": "dann"}), ("mlp", {"discriminator": "mlp"}),
                            ("fast", {"discriminator_lr_scale": 10.0})):
        results = paper_rate_results(folder, name, **overrides)
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
    eager = paper_rate_results(folder, "eager", grl_schedule="dann", discriminator="mlp", compile="no")
    torch._dynamo.reset()
    graphs_after_epoch = []

    def log(line):
        if line.startswith("epoch"):
            graphs_after_epoch.append(len(compiled_graphs))

    with logged_lines(log):
        compiled = paper_rate_results(folder, "compiled", verbose=1, grl_schedule="dann", discriminator="mlp", compile="yes")
    assert [h["loss"] for h in compiled["history"]] == [h["loss"] for h in eager["history"]]
    # epoch 1 compiles (its last, smaller batch may add a graph); epoch 2's new coefficients add none
    assert len(graphs_after_epoch) == 2 and graphs_after_epoch[0] >= 1
    assert graphs_after_epoch[1] == graphs_after_epoch[0]
