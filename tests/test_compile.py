"""The compiled training step (compiling.py, engine.forward_backward): one static graph per batch shape,
no recompile after the first epoch, no graph break in any method's step, and no silent eager fallback
when many trainers compile in one process. Captured with torch.compile's `aot_eager` backend (the graph
run with eager kernels) or its `eager` backend (dynamo's capture alone), in seconds on a CPU."""
import dataclasses
import json
import os

import pytest
import torch
from toy import PREFIXES, TOY_SETTINGS, write_toy_folder

from discomkd.comparison import runner as comparison
from discomkd.data.folder import load_data_folder
from discomkd.models.methods import METHODS
from discomkd.training import compiling
from discomkd.training import epoch as training_epoch
from discomkd.training.config import Config
from discomkd.training.epoch import compile_report, train_one_epoch
from discomkd.training.run import run
from discomkd.training.setup import build_setup
from discomkd.utils.seeds import seed_everything

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 90 rows: 63 training rows, three batches of 16 and a last one of 15, so a run has two batch shapes
TOY = {**TOY_SETTINGS, "learning_rate": 2e-3, "verbose": 0, "compile": "yes"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_toy_folder(tmp_path_factory.mktemp("compile") / "data", n=90)


class CountingBackend:
    """A torch.compile backend that records each graph it is given (with its example inputs' shapes)
    and runs it with `aot_eager`."""

    def __init__(self, backend: str = "aot_eager"):
        self.backend = torch._dynamo.lookup_backend(backend)
        self.shapes = []  # per graph compiled, its tensor inputs' shapes

    def __call__(self, graph, example_inputs):
        self.shapes.append([tuple(x.shape) for x in example_inputs if isinstance(x, torch.Tensor)])
        return self.backend(graph, example_inputs)


def test_a_run_compiles_one_static_graph_per_batch_shape_and_nothing_after_its_first_epoch(folder, monkeypatch):
    backend = CountingBackend()
    monkeypatch.setattr(compiling, "BACKEND", backend)
    config = Config(**TOY)
    data = load_data_folder(folder, *PREFIXES, (config.encoder_first, config.encoder_second))
    seed_everything(config.seed)
    setup = build_setup(config, data, torch.device("cpu"))
    graphs_after_epoch = []
    for epoch in range(1, config.epochs + 1):
        train_one_epoch(setup, epoch)
        graphs_after_epoch.append(len(backend.shapes))
    # the full batches' graph and the last batch's, both in epoch 1; epoch 2 reuses them
    assert graphs_after_epoch == [2, 2]
    batch_rows = [{shape[0] for shape in shapes if shape[1:] == (1, 12, 12)} for shapes in backend.shapes]  # images
    assert batch_rows == [{16}, {15}]
    # static graphs: every input size is a plain number (a dynamic graph would hold symbolic sizes)
    assert all(isinstance(size, int) for shapes in backend.shapes for shape in shapes for size in shape)
    report = compile_report(setup)
    assert report["compiled"] is True and "compile_error" not in report
    assert report["compile"] == {"graphs": 2, "graph_breaks": 0, "recompiles": 0, "cudagraph_skips": 0,
                                 "batch_rows": [16, 15]}


# The steps that trace code of their own besides the default comparison's methods (mono, teacher, kd, dkd,
# discomkd, discomkd-legacy: below): the other methods differ from these in weights (a tensor input of
# the step) or learning rates only, or combine them (discomkd-remedies: the dann schedule and the mlp).
OWN_STEPS = ("discomkd-dann", "discomkd-mlp-disc", "discomkd-invariant-only")


@pytest.mark.parametrize("method", OWN_STEPS)
def test_no_method_breaks_its_step_into_several_graphs(folder, monkeypatch, method):
    """fullgraph=True makes a graph break an error, which the engine turns into its eager fallback: a
    method whose step broke would train eager with `compile_error` set. dynamo's `eager` backend: the
    capture alone (graph breaks are the capture's)."""
    monkeypatch.setattr(compiling, "BACKEND", "eager")
    spec = METHODS[method]
    config = dataclasses.replace(Config(**{**TOY, "epochs": 1, "batch_size": 64}, method=method,
                                        modality=PREFIXES[0] if spec.per_modality else None), **spec.overrides)
    data = load_data_folder(folder, *PREFIXES, (config.encoder_first, config.encoder_second))
    setup = build_setup(config, data, torch.device("cpu"))
    losses = train_one_epoch(setup, 1)
    report = compile_report(setup)
    assert report["compiled"] is True and "compile_error" not in report, report
    assert report["compile"]["graphs"] == 1 and report["compile"]["graph_breaks"] == 0, report
    assert losses["finite_weights"] == 1.0


def test_every_method_of_a_default_comparison_trains_compiled_in_one_process(folder, tmp_path, monkeypatch):
    """Nine trainers compile the same code object (TrainingSetup.step_losses), two graphs each: past dynamo's
    recompile limit (8) without a reset per setup, where training went on eager unreported. The limit
    and graph breaks are dynamo's: its `eager` backend (the capture alone) shows them in a third of the
    time of `aot_eager`."""
    monkeypatch.setattr(compiling, "BACKEND", "eager")
    output = str(tmp_path / "comparison")
    results = comparison.compare(Config(**{**TOY, "epochs": 1}, output=output), folder, *PREFIXES, runs=1)
    (only_run,) = results["results"]
    neural = [m for m in only_run["methods"] if m in METHODS]
    assert neural == [m for m in METHODS if METHODS[m].compared_by_default]
    for method in neural:
        assert only_run["methods"][method]["compiled"] is True, method
        for part in only_run["methods"][method]["outputs"]:
            with open(os.path.join(part, "results.json")) as handle:
                environment = json.load(handle)["environment"]
            assert "compile_error" not in environment, (part, environment)
            assert environment["compile"]["graphs"] == 2 and environment["compile"]["recompiles"] == 0, part


def test_the_recompile_limit_falls_back_to_eager_and_says_so(folder, tmp_path, monkeypatch, capsys):
    """Dynamo's recompile limit reached at a call of the compiled step that is not guarded (here: no call
    guarded, and a limit of one graph per code object, reached by the last batch's shape): the run goes
    on eager, reports `compiled: false` with the reason, and its results are those of an eager run."""
    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")
    monkeypatch.setattr(compiling, "GUARDED_CALLS", 0)
    monkeypatch.setattr(training_epoch, "_step_state", lambda setup: pytest.fail("a guarded call of the compiled step"))
    config = Config(**TOY, output=str(tmp_path / "limited"))
    with torch._dynamo.config.patch(recompile_limit=1):  # dynamo's own patching: restored exactly after
        limited = run(config, folder, *PREFIXES)
    err = capsys.readouterr().err
    assert "warning: torch.compile failed (FailOnRecompileLimitHit" in err, err
    assert limited["environment"]["compiled"] is False
    assert limited["environment"]["compile_error"].startswith("FailOnRecompileLimitHit")
    eager = run(dataclasses.replace(config, output=str(tmp_path / "eager"), compile="no"), folder, *PREFIXES)
    assert [h["loss"] for h in limited["history"]] == [h["loss"] for h in eager["history"]]
