"""Running a trained classifier over rows, batch by batch: the one loop (`run_in_batches`) behind
evaluation during training (`scores.evaluate`, the end-of-run invariance probe), prediction from a
checkpoint (`predict_array`, predict.py) and the features a finished run's checkpoints give
(`feature_parts`, inspect_run.py).

Where the batches come from is the caller's: the run's row sources (`source_batches`: resident on
the device, or streamed from the memory maps) or any array (`array_batches`, read one batch at a
time, so a memory map larger than memory can be read).
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from discomkd.data.batches import input_batches
from discomkd.data.folder import DataFolder
from discomkd.evaluation.probes import PARTS
from discomkd.runs.outputs import checkpoint_path, load_classifier
from discomkd.training.config import Config, checkpoint_precision


def autocast_context(device: torch.device, precision: str):
    """bfloat16 autocast for precision 'bf16', nothing for 'fp32'."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def run_in_batches(module: torch.nn.Module, batches, read, precision: str = "fp32",
                   host_every_batch: bool = False) -> dict[str, np.ndarray]:
    """`module(*inputs)` for each batch, in eval mode (its previous mode restored afterwards), keeping
    what `read` takes of each output.

    Args:
        batches: an iterable of lists of (B, ...) float32 tensors on the module's device.
        read: output -> {name: (B, ...) tensor}.
        precision: 'fp32' or 'bf16' (autocast), as the run trained and evaluated.
        host_every_batch: copy each batch's results to the host at once, so that device memory stays
            bounded for inputs of any length (prediction); otherwise they stay on the device and are
            read once at the end (evaluation during training: one device synchronisation).
    Returns:
        {name: (n, ...) array}, the batches' results concatenated in order.
    """
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    kept: dict[str, list] = {}
    try:
        for inputs in batches:
            with autocast_context(device, precision):
                output = module(*inputs)
            for name, value in read(output).items():
                kept.setdefault(name, []).append(value.cpu().numpy() if host_every_batch else value)
    finally:
        module.train(was_training)
    if host_every_batch:
        return {name: np.concatenate(values) for name, values in kept.items()}
    return {name: torch.cat(values).cpu().numpy() for name, values in kept.items()}


def source_batches(sources: dict, reads: tuple[int, ...], rows: np.ndarray, batch_size: int):
    """Batches of the user's rows `rows` (in their order) from the row sources (`batches.RowSource`) of
    the modalities `reads`: per batch, one (B, *sample_shape) tensor per modality read."""
    positions = [sources[m].positions(rows) for m in reads]
    for start in range(0, len(rows), batch_size):
        yield [sources[m].gather(p[start:start + batch_size]) for m, p in zip(reads, positions)]


def array_batches(array: np.ndarray, rows: np.ndarray | None, batch_size: int, device: torch.device):
    """Batches of `array` (its rows `rows` in their order, or all), one (B, *sample_shape) tensor each,
    read one batch at a time (`batches.input_batches`: raises `DataError` naming a non-finite row)."""
    for _, x in input_batches(array, rows, batch_size, device):
        yield [x]


def class_probabilities(output) -> dict[str, torch.Tensor]:
    """The `read` of a classifier's predictions: softmax of its logits, in float32, (B, K)."""
    return {"probabilities": torch.softmax(output.logits.float(), dim=1)}


def parts_and_prediction(output) -> dict[str, torch.Tensor]:
    """The `read` of a modality branch's features: its invariant, informative and irrelevant parts
    (B, 256) and its predicted class (B,)."""
    return {**{name: getattr(output, name).float() for name in PARTS}, "predicted": output.logits.argmax(dim=1)}


def predict_array(branch: torch.nn.Module, array: np.ndarray, batch_size: int = Config.eval_batch_size,
                  device: torch.device | str = "cpu", rows: np.ndarray | None = None,
                  precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities of every sample of `array` (or of its rows `rows`), batch by batch.

    Args:
        branch: a single-modality classifier (`outputs.load_classifier`); it is moved to `device`
            and evaluated in eval mode, its previous mode restored afterwards.
        array: (N, *branch.input_shape), any numeric dtype; may be a memory map (read per batch).
        rows: optional (n,) row numbers of `array` to predict, in the order given.
        precision: 'fp32' or 'bf16' (autocast), as the run evaluated (`checkpoint_precision`).

    Returns:
        probabilities (n, K) float32 and predicted class indices (n,) int64, which index the
        checkpoint's "classes" (the user's label values).
    """
    device = torch.device(device)
    branch.to(device)
    probabilities = run_in_batches(branch, array_batches(array, rows, batch_size, device), class_probabilities,
                                   precision, host_every_batch=True)["probabilities"]
    return probabilities, probabilities.argmax(axis=1).astype(np.int64)


@torch.inference_mode()
def feature_parts(run_folder: str, data: DataFolder, split: str = "test", device: torch.device | str = "cpu",
                  batch_size: int = Config.eval_batch_size) -> dict[str, dict[str, np.ndarray]]:
    """Each modality's best checkpoint (run_folder/best_<PREFIX>.pt) applied to the rows of `split`.

    Returns:
        {prefix: {"invariant", "informative", "irrelevant": (n, 256) float32, "predicted": (n,) class
        indices, "labels": (n,) class indices (0..K-1, index data.classes)}}
    """
    device = torch.device(device)
    features = {}
    for modality in data.modalities:
        branch, checkpoint = load_classifier(checkpoint_path(run_folder, modality.prefix), device)
        rows = modality.splits[split]
        features[modality.prefix] = run_in_batches(branch, array_batches(modality.array, rows, batch_size, device),
                                                   parts_and_prediction, checkpoint_precision(checkpoint, device))
        features[modality.prefix]["labels"] = data.labels[rows]
    return features
