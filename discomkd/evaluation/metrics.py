"""The classification metrics every score in this project is: weighted F1 (the paper's), macro F1 and
accuracy, computed once over a whole split."""
from __future__ import annotations

import numpy as np


def classification_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """{"weighted_f1", "macro_f1", "accuracy"} of `predictions` against `labels` (classes 0..K-1, (n,) each)."""
    # imported here: scikit-learn takes about a second to import, which a command that stops before scoring
    # anything (--help, a refused input) need not pay
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "weighted_f1": float(f1_score(labels, predictions, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(labels, predictions)),
    }
