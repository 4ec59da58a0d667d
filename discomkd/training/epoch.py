"""One epoch of training (`train_one_epoch`): the epoch's shuffles and where it stands (`EpochProgress`,
saved in the resumable state), batches gathered on the device, augmentation, the possibly compiled step
with its guarded fall-back to eager, and the loss sums read from the device once per epoch."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from discomkd.data.augment import augment
from discomkd.data.batches import Prefetcher, epoch_positions
from discomkd.training import compiling
from discomkd.training.setup import TrainingSetup

logger = logging.getLogger(__name__)


@dataclass
class EpochProgress:
    """Where an epoch stands: its shuffles, the next step to run, and the loss sums so far (on the
    device). Saved in the resumable state, so an interrupted epoch resumes at its next step."""

    bounds: list[tuple[int, int]]
    positions: list[torch.Tensor]  # per modality read, (n,) positions into its training rows
    step: int
    sums: torch.Tensor  # (len(terms) + 1,) raw terms then the weighted total

    @property
    def finished(self) -> bool:
        return self.step >= len(self.bounds)


def start_epoch(setup: TrainingSetup) -> EpochProgress:
    """The epoch's shuffles: one per modality read, or one shared when the method reads paired rows."""
    shared = setup.spec.paired or len(setup.step_modalities) == 1
    sizes = (len(setup.train_positions[setup.step_modalities[0]]),) if shared else \
        tuple(len(setup.train_positions[m]) for m in setup.step_modalities)
    bounds, positions = epoch_positions(sizes, setup.config.batch_size, setup.generator)
    if shared:
        positions = positions * len(setup.step_modalities)
    # one copy per epoch: a pageable host-to-device copy per step would synchronise every step
    positions = [p.to(setup.sources[m].index_device) for p, m in zip(positions, setup.step_modalities)]
    return EpochProgress(bounds, positions, 0, torch.zeros(len(setup.spec.terms) + 1, device=setup.device))


def train_one_epoch(setup: TrainingSetup, epoch: int, progress: EpochProgress | None = None,
                    should_stop=None, on_step=None) -> dict[str, float] | None:
    """Trains epoch `epoch` (1-based) over the training rows once, from `progress.step` on.

    Returns the epoch's mean raw loss terms, the weighted total and `finite_weights` (1.0 or 0.0),
    read from the device once, at the end; or None when `should_stop()` turned true, after finishing
    the step in flight (`progress` then says where to resume). `on_step(step, steps)`, if given, is
    called after each step (it must not read the device).
    """
    model, optimizer, step_modalities = setup.model, setup.optimizer, setup.step_modalities
    model.train()
    progress = progress or start_epoch(setup)
    bounds, first_step = progress.bounds, progress.step
    weights = setup.spec.weights(setup.config, epoch)
    weights = torch.tensor([weights[k] for k in setup.spec.terms], dtype=torch.float32)  # (T,)
    # non_blocking: the copy from host memory does not wait for the work already queued on the device
    weights = weights.to(setup.device, non_blocking=True)
    # each read modality's stored rows and their labels in this epoch's order, gathered once per epoch, so
    # that a step's batch is one index_select of the data (its labels are a slice)
    stored = [setup.train_positions[m][p] for m, p in zip(step_modalities, progress.positions)]
    epoch_labels = [setup.labels[m][rows] for m, rows in zip(step_modalities, stored)]

    def fetch(i):
        """The i-th batch of the steps left, [(x, y)] per read modality (no randomness, so it may run in
        the prefetch thread)."""
        start, end = bounds[first_step + i]
        return [(setup.sources[m].gather(rows[start:end]), y[start:end].to(setup.device, non_blocking=True))
                for m, rows, y in zip(step_modalities, stored, epoch_labels)]

    streamed = not all(setup.sources[m].resident for m in step_modalities)
    # a tensor updated in place, so that a compiled step reads each new value without a new trace
    training_progress = torch.zeros((), device=setup.device)
    for batch in Prefetcher(fetch, len(bounds) - first_step, enabled=streamed):
        # augmentation draws random numbers, so it runs here, in order, never in the prefetch thread
        inputs = {m: augment(x, setup.augmentations[m]) for m, (x, _) in zip(step_modalities, batch)}
        labels = {m: y for m, (_, y) in zip(step_modalities, batch)}
        training_progress.fill_((epoch - 1 + progress.step / len(bounds)) / setup.config.epochs)
        record = forward_backward(setup, inputs, labels, weights, training_progress)
        optimizer.step()
        progress.sums += record
        progress.step += 1
        if on_step is not None:
            on_step(progress.step, len(bounds))
        if should_stop is not None and should_stop() and not progress.finished:
            return None
    values = torch.cat([progress.sums / len(bounds), setup.finite_weights().float().view(1)])
    values = values.tolist()  # the epoch's one host-device synchronisation
    return dict(zip(setup.spec.terms + ("total", "finite_weights"), values))


def forward_backward(setup: TrainingSetup, inputs: dict, labels: dict, weights: torch.Tensor,
                     training_progress: torch.Tensor) -> torch.Tensor:
    """One step up to the optimizer: zeroes the gradients, computes the loss terms and their weighted
    total (`TrainingSetup.step_losses`, compiled when compiling), and back-propagates. Returns the step's
    detached (len(terms) + 1,) record: the raw terms, then the total.

    The first `compiling.GUARDED_CALLS` calls of the compiled step for each batch shape (torch.compile
    traces at the first, CUDA graphs warm up and record at the next two) are guarded: on an error the
    step is undone (batch-norm statistics, random states) and run eager, and the run stays eager, with
    one warning and the reason recorded (`compile_error`); the results are those of --compile no. At any
    later call, dynamo's recompile limit (raised before the step runs anything) falls back the same way;
    any other error propagates.
    """
    if setup.compiled_step is None:
        return _forward_backward(setup, setup.step_losses, inputs, labels, weights, training_progress)
    shapes = tuple(tuple(x.shape) for x in inputs.values())
    calls = setup.compiled_calls.get(shapes, 0)
    setup.compiled_calls[shapes] = calls + 1
    saved = _step_state(setup) if calls < compiling.GUARDED_CALLS else None
    try:
        return _forward_backward(setup, setup.compiled_step, inputs, labels, weights, training_progress)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as error:  # noqa: BLE001 (dynamo, inductor, triton and CUDA graph errors share no base class)
        if saved is None and not compiling.is_recompile_limit(error):
            raise
        if saved is not None:
            _restore_step_state(setup, saved)
        reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:300]}".rstrip(": ")
        setup.compiled_step, setup.compile_error = None, reason
        logger.warning(f"torch.compile failed ({reason}); training goes on eager, as with --compile no")
        return _forward_backward(setup, setup.step_losses, inputs, labels, weights, training_progress)


def _forward_backward(setup: TrainingSetup, step_losses, inputs: dict, labels: dict, weights: torch.Tensor,
                      training_progress: torch.Tensor) -> torch.Tensor:
    setup.optimizer.zero_grad(set_to_none=True)
    total, record = step_losses(inputs, labels, training_progress, weights)
    total.backward()
    return record


def compile_report(setup: TrainingSetup) -> dict:
    """What a run's results say of its compiled step: {"compiled": whether the step is (still) compiled,
    "compile_error": why it fell back to eager (only when it did), "compile": what the compiler did for
    this setup (only when it compiled): graphs, graph breaks, recompiles (graphs beyond one per batch
    shape), graphs left out of CUDA graphs, and the batch shapes (rows per step) of the compiled calls}."""
    report = {"compiled": setup.compiled_step is not None}
    if setup.compile_error:
        report["compile_error"] = setup.compile_error
    if setup.compiler_counts:
        now = compiling.compiler_counts()
        counts = {k: now[k] - setup.compiler_counts[k] for k in now}
        report["compile"] = {"graphs": counts["graphs"], "graph_breaks": counts["graph_breaks"],
                             "recompiles": max(0, counts["graphs"] - len(setup.compiled_calls)),
                             "cudagraph_skips": counts["cudagraph_skips"],
                             "batch_rows": sorted({shapes[0][0] for shapes in setup.compiled_calls}, reverse=True)}
    return report


def _step_state(setup: TrainingSetup) -> dict:
    """What a forward pass changes besides the gradients: the model's buffers and the random states."""
    return {"buffers": [b.clone() for b in setup.model.buffers()], "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(setup.device) if setup.device.type == "cuda" else None}


def _restore_step_state(setup: TrainingSetup, saved: dict) -> None:
    with torch.no_grad():
        for buffer, value in zip(setup.model.buffers(), saved["buffers"]):
            buffer.copy_(value)
    torch.set_rng_state(saved["rng"])
    if saved["cuda_rng"] is not None:
        torch.cuda.set_rng_state(saved["cuda_rng"], setup.device)
