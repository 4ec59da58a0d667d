"""What a run's classifiers score: each classifier's metrics on a whole split (`evaluate`, the model
selection's input), and at the end of a run the measures of the invariant parts that each modality's
best checkpoint gives (`invariance_measures`: the modality probe and the cross-modal transfer)."""
from __future__ import annotations

import os

import numpy as np
import torch

from discomkd.data.batches import RowSource
from discomkd.data.folder import DataFolder
from discomkd.evaluation.metrics import classification_metrics
from discomkd.evaluation.probes import cross_modal_transfer, modality_probe, probe_rows
from discomkd.runs.outputs import checkpoint_path, load_classifier
from discomkd.training.inference import class_probabilities, run_in_batches, source_batches
from discomkd.training.setup import Classifier, TrainingSetup


def classify_rows(classifier: Classifier, sources: dict[int, RowSource], rows: np.ndarray, batch_size: int,
            precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (n, K) and predicted classes (0..K-1) of the user's rows `rows`.

    The probabilities may hold NaN when the model does; callers check (`evaluate` does).
    """
    probabilities = run_in_batches(classifier.module, source_batches(sources, classifier.input_modalities, rows, batch_size),
                                   class_probabilities, precision)["probabilities"]
    return probabilities, probabilities.argmax(axis=1)


def evaluation_rows(data: DataFolder, classifier: Classifier, split: str) -> np.ndarray:
    """Valid and test rows are shared by both modalities (data/folder.py reads one file of each)."""
    return data.modalities[0 if classifier.modality is None else classifier.modality].splits[split]


def evaluate(setup: TrainingSetup, data: DataFolder, splits=("valid", "test"), classifiers=None) -> dict[str, dict]:
    """Metrics of each classifier (all, or those in `classifiers`) on each split, over the whole split.

    Returns:
        {column: {split: {"weighted_f1", "macro_f1", "accuracy"}, "predictions": {split: (n,) classes}}};
        a classifier whose outputs are not finite gets {"finite": False} instead.
    """
    results = {}  # each classifier is evaluated in eval mode, its training mode restored (run_in_batches)
    for classifier in classifiers or setup.classifiers:
        result = {"predictions": {}}
        for split in splits:
            rows = evaluation_rows(data, classifier, split)
            probabilities, predicted = classify_rows(classifier, setup.sources, rows, setup.config.eval_batch_size,
                                               setup.precision)
            if not np.isfinite(probabilities).all():
                result = {"finite": False}
                break
            result[split] = classification_metrics(data.labels[rows], predicted)
            result["predictions"][split] = predicted
        results[classifier.column] = result
    return results


@torch.inference_mode()
def invariance_measures(setup: TrainingSetup, data: DataFolder, output: str) -> dict:
    """The end-of-run measures of the invariant parts that each modality's best checkpoint gives:
    {"invariance_probe": how well a logistic regression tells the modality from them on the validation
    rows (both modalities pooled; probes.modality_probe), "cross_modal_transfer": how well a logistic
    regression fitted on one modality's training rows classifies the other's validation rows, both ways
    (probes.cross_modal_transfer)}; both None when a checkpoint is missing. At most
    probes.PROBE_ROWS_PER_MODALITY rows of each split and modality, drawn with the run's seed; each
    checkpoint is read once."""
    paths = [checkpoint_path(output, c.column) for c in setup.classifiers]
    if not all(os.path.isfile(path) for path in paths):
        return {"invariance_probe": None, "cross_modal_transfer": None}
    seed = setup.config.seed
    valid_rows = probe_rows(evaluation_rows(data, setup.classifiers[0], "valid"), seed)
    valid, train = [], []  # per modality, (invariant part (n, 256), classes (n,)) of its rows
    for classifier, path in zip(setup.classifiers, paths):
        branch, _ = load_classifier(path, setup.device)
        train_rows = probe_rows(data.modalities[classifier.modality].splits["train"], seed)
        for parts, rows in ((valid, valid_rows), (train, train_rows)):
            parts.append((_invariant_part(setup, classifier, branch, rows), data.labels[rows]))
    prefixes = [data.modalities[c.modality].prefix for c in setup.classifiers]
    where = {"part": "invariant", "checkpoints": "each modality's best epoch"}
    return {"invariance_probe": {"split": "valid", **where, **modality_probe([p for p, _ in valid], seed)},
            "cross_modal_transfer": {"split": {"fitted": "train", "scored": "valid"}, **where,
                                     **cross_modal_transfer(train, valid, prefixes, seed)}}


def _invariant_part(setup: TrainingSetup, classifier: Classifier, branch: torch.nn.Module,
                    rows: np.ndarray) -> np.ndarray:
    """The invariant part (n, 256) that `branch`, a checkpoint of `classifier`, gives of the user's rows `rows`."""
    batches = source_batches(setup.sources, classifier.input_modalities, rows, setup.config.eval_batch_size)
    return run_in_batches(branch, batches, lambda output: {"invariant": output.invariant.float()},
                          setup.precision)["invariant"]
