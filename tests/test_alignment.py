"""Non-adversarial alignment of the invariant parts (--align mmd|coral, --align-per-class): each term on cases
computed by hand, the per-class averaging and its skipped classes, the options, training through the engine
and its compiled step, and the paper's default path left exactly as it was."""
import dataclasses
import math
import os

import pytest
import torch
from toy import PREFIXES, TOY_SETTINGS, read_results, write_toy_folder

from discomkd.commands import compare
from discomkd.data.folder import load_data_folder
from discomkd.models import methods
from discomkd.models.alignment import BANDWIDTH_SCALES, alignment_term, coral, coral_per_class, mmd, mmd_per_class
from discomkd.models.discomkd import LOSS_TERMS
from discomkd.training import compiling
from discomkd.training import run as training_run
from discomkd.training.config import Config, check_config
from discomkd.training.epoch import compile_report, train_one_epoch
from discomkd.training.setup import build_setup
from discomkd.utils.errors import OptionError
from discomkd.utils.seeds import seed_everything

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOY = {**TOY_SETTINGS, "verbose": 0}
TERMS = {"mmd": mmd, "coral": coral}
PER_CLASS = {"mmd": mmd_per_class, "coral": coral_per_class}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_toy_folder(tmp_path_factory.mktemp("alignment") / "data")


def rows(n, d=4, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- the terms
@pytest.mark.parametrize("kind", TERMS)
def test_a_term_is_zero_for_identical_samples_whatever_their_order(kind):
    source = rows(12)
    assert float(TERMS[kind](source, source.clone())) == pytest.approx(0.0, abs=1e-6)
    assert float(TERMS[kind](source, source.flip(0))) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kind", TERMS)
def test_a_term_is_positive_for_shifted_samples_and_falls_as_they_are_pulled_together(kind):
    source, target = rows(12), rows(9, seed=1)  # unpaired: the two sides differ in size
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0])
    values = [float(TERMS[kind](source, target + t * shift)) for t in (2.0, 1.0, 0.5, 0.25)]
    assert all(v > 0 for v in values) and values == sorted(values, reverse=True), values
    # and gradient steps on one side lower it at every step
    moving = (target + 2 * shift).requires_grad_()
    # rates for a clear fall in 5 steps: the MMD's gradient is small, its bandwidth following the distances
    optimizer = torch.optim.SGD([moving], lr=30.0 if kind == "mmd" else 10.0)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = TERMS[kind](source, moving)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.5 * losses[0], losses


def test_mmd_by_hand():
    """One row each side at distance 1: the bandwidth (mean squared distance of distinct pooled rows) is 1, and
    the biased MMD^2 = k(x,x) + k(y,y) - 2 k(x,y) = 2 - 2 k(1), k the mean of the Gaussian kernels."""
    def k(squared_distance, bandwidth):
        return sum(math.exp(-squared_distance / (s * bandwidth)) for s in BANDWIDTH_SCALES) / len(BANDWIDTH_SCALES)

    assert float(mmd(torch.tensor([[0.0]]), torch.tensor([[1.0]]))) == pytest.approx(2 - 2 * k(1, 1), rel=1e-6)
    # two rows at 0 against one at 1: squared distances 0 once and 1 twice among the 3 pairs, bandwidth 2/3;
    # the source's kernel mean is k(0) = 1 for both of its rows, so again 1 + 1 - 2 k(1)
    value = float(mmd(torch.tensor([[0.0], [0.0]]), torch.tensor([[1.0]])))
    assert value == pytest.approx(2 - 2 * k(1, 2 / 3), rel=1e-6)
    # the same 2-d points give the same value: only distances count
    value = float(mmd(torch.tensor([[3.0, 4.0]]), torch.tensor([[3.0, 5.0]])))
    assert value == pytest.approx(2 - 2 * k(1, 1), rel=1e-6)


def test_coral_by_hand():
    # 1-d: source {0, 2}: mean 1, variance 2 (unbiased); target {0, 4}: mean 2, variance 8
    # (2 - 8)^2 / (4 * 1^2) + (1 - 2)^2 / (4 * 1) = 9 + 0.25
    assert float(coral(torch.tensor([[0.0], [2.0]]), torch.tensor([[0.0], [4.0]]))) == pytest.approx(9.25)
    # 2-d, 2 rows against 3: source (0,0), (2,2): mean (1,1), covariance [[2,2],[2,2]]; target (1,1), (1,-1),
    # (1,0): mean (1,0), covariance [[0,0],[0,1]]. ||dC||^2 = 4+4+4+1 = 13, / (4 * 2^2); ||dmu||^2 = 1, / (4 * 2)
    source = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    target = torch.tensor([[1.0, 1.0], [1.0, -1.0], [1.0, 0.0]])
    assert float(coral(source, target)) == pytest.approx(13 / 16 + 1 / 8)
    assert float(coral(target, source)) == pytest.approx(13 / 16 + 1 / 8)  # symmetric


@pytest.mark.parametrize("kind", TERMS)
def test_the_per_class_term_is_the_mean_of_the_classes_terms(kind):
    source, target = rows(15), rows(11, seed=1) + 0.5
    source_labels, target_labels = torch.arange(15) % 3, torch.arange(11) % 3
    by_class = [TERMS[kind](source[source_labels == c], target[target_labels == c]) for c in range(3)]
    # num_classes 4: a class no row has is skipped as well
    value = PER_CLASS[kind](source, target, source_labels, target_labels, 4)
    assert float(value) == pytest.approx(float(sum(by_class) / 3), rel=1e-5)
    # identical samples, class by class: zero
    assert float(PER_CLASS[kind](source, source, source_labels, source_labels, 3)) == pytest.approx(0.0, abs=1e-6)
    # the whole-batch term is not the per-class one: the classes' means differ, the batch's do not
    shuffled = target_labels[torch.randperm(11, generator=torch.Generator().manual_seed(0))]
    assert float(PER_CLASS[kind](source, source[:11], source_labels, shuffled, 3)) > 0


@pytest.mark.parametrize("kind", TERMS)
def test_a_class_missing_from_one_side_is_skipped_and_gives_no_nan(kind):
    source, target = rows(12), rows(8, seed=1) + 1.0
    source_labels = torch.arange(12) % 3  # classes 0, 1, 2, four rows each
    target_labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])  # no class 2
    value = PER_CLASS[kind](source, target, source_labels, target_labels, 3)
    expected = sum(TERMS[kind](source[source_labels == c], target[target_labels == c]) for c in (0, 1)) / 2
    assert float(value) == pytest.approx(float(expected), rel=1e-5)
    # one row of class 1 on one side: MMD uses it, CORAL (a covariance needs two rows) skips the class
    one = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1])
    classes = (0, 1) if kind == "mmd" else (0,)
    expected = sum(TERMS[kind](source[source_labels == c], target[one == c]) for c in classes) / len(classes)
    assert float(PER_CLASS[kind](source, target, source_labels, one, 3)) == pytest.approx(float(expected), rel=1e-5)
    # no class on both sides: 0, and finite gradients (a skipped class's values never reach the sum)
    source.requires_grad_()
    zeros, ones = torch.zeros(12, dtype=torch.int64), torch.ones(8, dtype=torch.int64)
    none_shared = PER_CLASS[kind](source, target, zeros, ones, 3)
    value = PER_CLASS[kind](source, target, source_labels, target_labels, 3)
    (gradient,) = torch.autograd.grad(none_shared + value, source)
    assert float(none_shared.detach()) == 0.0 and torch.isfinite(gradient).all() and gradient.abs().sum() > 0


def test_the_term_is_computed_in_float32_under_autocast():
    source, target = rows(10, d=8), rows(10, d=8, seed=1) + 0.3
    labels = torch.arange(10) % 2
    for kind in TERMS:
        for per_class in (False, True):
            plain = alignment_term(kind, per_class, source, target, labels, labels, 2)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                autocast = alignment_term(kind, per_class, source.bfloat16(), target.bfloat16(), labels, labels, 2)
            assert autocast.dtype == torch.float32
            # only the inputs' rounding to bf16 differs (8 bits of mantissa), not the computation
            assert float(autocast) == pytest.approx(float(plain), rel=0.05), (kind, per_class)


# ----------------------------------------------------------------------------- options and methods
@pytest.mark.parametrize("changes, option", [
    ({"align": "MMD"}, "--align"), ({"align": ""}, "--align"),
    ({"align": "mmd", "align_weight": -1.0}, "--align-weight"),
    ({"align_weight": math.nan}, "--align-weight"), ({"align_weight": math.inf}, "--align-weight")])
def test_bad_alignment_options_are_refused_in_one_line(changes, option):
    with pytest.raises(OptionError, match=option + " ") as error:
        check_config(Config(device="cpu", **changes))
    assert "\n" not in str(error.value)


def test_alignment_options_are_on_the_command_lines(cli_main, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setitem(cli_main.__globals__, "run", lambda config, *args, **kwargs: seen.setdefault("config", config))
    assert cli_main([str(tmp_path), "A", "B", "--align", "coral", "--align-weight", "0.5", "--align-per-class"]) == 0
    assert (seen["config"].align, seen["config"].align_weight, seen["config"].align_per_class) == ("coral", 0.5, True)
    assert (Config().align, Config().align_weight, Config().align_per_class) == ("none", 1.0, False)
    options = compare.build_parser().parse_args(["D", "A", "B", "--align", "mmd"])
    assert options.align == "mmd" and options.align_per_class is False


def test_the_alignment_term_joins_the_methods_with_invariant_parts_only():
    assert methods.method_spec(Config()) is methods.METHODS["discomkd"]  # the paper's spec, untouched
    # --align-per-class says how to align, not whether: alone (as --grl-warmup without its schedule) it adds nothing
    assert methods.method_spec(Config(align_per_class=True)) is methods.METHODS["discomkd"]
    aligned = methods.method_spec(Config(align="mmd"))
    assert aligned.terms == LOSS_TERMS + ("align",)
    assert methods._discomkd_weights(Config(align="coral", align_weight=0.25), 1)["align"] == 0.25
    assert "align" not in methods._discomkd_weights(Config(), 1)
    # mono has no invariant part: the option is ignored there, as the reversal's options are
    assert methods.method_spec(Config(method="mono", align="mmd")) is methods.METHODS["mono"]
    expected = {"discomkd-mmd": {"align": "mmd"}, "discomkd-coral": {"align": "coral"},
                "discomkd-mmd-per-class": {"align": "mmd", "align_per_class": True},
                "discomkd-coral-per-class": {"align": "coral", "align_per_class": True}}
    for name, overrides in expected.items():
        spec = methods.METHODS[name]
        assert spec.overrides == overrides and spec.invariant_parts and not spec.compared_by_default, name
        config = dataclasses.replace(Config(method=name), **overrides)
        check_config(dataclasses.replace(config, device="cpu"))
        assert spec.terms == LOSS_TERMS + ("align",) and methods.method_spec(config) is spec
        assert set(spec.weights(Config(), 1)) == set(spec.terms)  # the term is the spec's, whatever the config


# ----------------------------------------------------------------------------- training through the engine
def toy_results(folder, name, **overrides):
    output = os.path.join(folder, name)
    training_run.run(Config(output=output, **{**TOY, **overrides}), folder, *PREFIXES)
    return read_results(output)


@pytest.mark.parametrize("name, overrides", [
    ("mmd", {"align": "mmd", "align_weight": 0.5}),
    ("coral", {"method": "discomkd-coral", "align_weight": 3.0}),
    ("mmd-per-class", {"method": "discomkd-mmd-per-class"}),
    ("coral-per-class", {"align": "coral", "align_per_class": True, "align_weight": 2.0})])
def test_a_run_trains_with_the_alignment_term_logged_and_weighted(folder, name, overrides):
    results = toy_results(folder, name, **overrides)
    config = results["config"]
    assert config["align"] == name.split("-")[0] and config["align_per_class"] == name.endswith("per-class")
    weights = {**{t: 1.0 for t in LOSS_TERMS}, "align": config["align_weight"]}
    for entry in results["history"]:
        loss = entry["loss"]
        assert set(loss) == set(LOSS_TERMS) | {"align", "total"}
        assert math.isfinite(loss["align"]) and loss["align"] > 0
        # the weight applied in the engine's one place: the epoch's mean total is the weighted sum of its means
        assert loss["total"] == pytest.approx(sum(w * loss[t] for t, w in weights.items()), rel=1e-5)
    assert all(math.isfinite(c["test"]["weighted_f1"]) for c in results["final"].values())
    assert results["invariance_probe"]["modality_accuracy"] is not None


@pytest.mark.parametrize("align, per_class", [("mmd", False), ("coral", False), ("mmd", True), ("coral", True)])
def test_the_aligned_step_compiles_into_one_graph_without_breaks(folder, monkeypatch, align, per_class):
    """fullgraph=True turns a graph break (a .item(), data-dependent Python control flow) into the engine's
    eager fallback with `compile_error` set; dynamo's `eager` backend is the capture alone."""
    monkeypatch.setattr(compiling, "BACKEND", "eager")
    # one batch of all 84 training rows: one batch shape, so one graph
    config = Config(**{**TOY, "epochs": 1, "batch_size": 128, "compile": "yes"}, align=align, align_per_class=per_class)
    data = load_data_folder(folder, *PREFIXES, (config.encoder_first, config.encoder_second))
    seed_everything(config.seed)
    setup = build_setup(config, data, torch.device("cpu"))
    losses = train_one_epoch(setup, 1)
    report = compile_report(setup)
    assert report["compiled"] is True and "compile_error" not in report, report
    assert report["compile"]["graphs"] == 1 and report["compile"]["graph_breaks"] == 0, report
    assert losses["finite_weights"] == 1.0 and losses["align"] > 0


# ----------------------------------------------------------------------------- the paper's setting unchanged
def test_without_align_training_is_bit_identical_to_the_code_before_it(folder):
    """The DisCoM-KD losses and weights as they were before --align, rebuilt here, and the default path now:
    bit-identical histories and results, and no "align" term anywhere."""
    def old_losses(model, inputs, labels, config, progress=None):
        coefficient = methods.grl_coefficient_at(config.grl_schedule, config.grl_coefficient, progress,
                                                 config.grl_warmup)
        first, second = model(inputs[0], inputs[1], coefficient)
        return methods.discomkd_losses(first, second, labels[0], labels[1], config.legacy_modality_targets)

    def old_weights(config, epoch):
        return {term: float(getattr(config, f"weight_{term}")) for term in LOSS_TERMS}

    old_spec = dataclasses.replace(methods.METHODS["discomkd"], losses=old_losses, weights=old_weights)
    now = toy_results(folder, "default-now")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(methods.METHODS, "discomkd", old_spec)  # the engine's METHODS is this dict
        before = toy_results(folder, "default-before")
    assert [h["loss"] for h in now["history"]] == [h["loss"] for h in before["history"]]
    assert all(set(h["loss"]) == set(LOSS_TERMS) | {"total"} for h in now["history"])
    assert now["final"] == before["final"]
    # and an aligned run is not: the test can tell the two apart
    aligned = toy_results(folder, "aligned", align="coral")
    assert [h["loss"]["cl"] for h in aligned["history"]] != [h["loss"]["cl"] for h in now["history"]]


def test_the_compiled_aligned_step_trains_as_the_eager_one(folder, monkeypatch):
    """aot_eager runs the captured forward and backward graphs with eager kernels: per-class MMD (the masks,
    autocast switched off inside the step) trains exactly as without compiling."""
    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")
    histories = {}
    for compile_step in ("yes", "no"):
        config = Config(**{**TOY, "epochs": 1, "batch_size": 128, "compile": compile_step}, align="mmd",
                        align_per_class=True)
        data = load_data_folder(folder, *PREFIXES, (config.encoder_first, config.encoder_second))
        seed_everything(config.seed)
        setup = build_setup(config, data, torch.device("cpu"))
        histories[compile_step] = [train_one_epoch(setup, epoch) for epoch in (1, 2)]
        assert compile_report(setup)["compiled"] is (compile_step == "yes")
    assert histories["yes"] == histories["no"]
    assert all(epoch["align"] > 0 for epoch in histories["yes"])
