"""The comparison's classical baselines: svm and logreg, scikit-learn pipelines on one modality's
flattened rows, the regularisation C chosen on validation weighted F1. scikit-learn is imported where a
model is built (about a second to import, which a comparison refused before it starts need not pay)."""
from __future__ import annotations

import time
import warnings

import numpy as np

from discomkd.data.folder import DataFolder
from discomkd.evaluation.metrics import classification_metrics

# Regularisation grids, a factor 10 apart; the C with the best validation weighted F1 is kept.
LOGREG_MAX_ITER = 5000  # lbfgs on standardised features converges well within this on typical data
CLASSICAL = {"svm": (0.1, 1.0, 10.0, 100.0), "logreg": (0.01, 0.1, 1.0, 10.0, 100.0)}  # method: its C grid


def classical_pipeline(method: str, c: float):
    """StandardScaler then the method's model with regularisation C (an unfitted scikit-learn pipeline)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    model = SVC(C=c, kernel="rbf") if method == "svm" else LogisticRegression(C=c, max_iter=LOGREG_MAX_ITER)
    return Pipeline([("scale", StandardScaler()), ("model", model)])


def fit_classical(data: DataFolder, modality: int, method: str) -> dict:
    """`method` (svm or logreg) on the flattened rows of one modality, C chosen on validation weighted F1.

    A modality whose training rows hold a single class gets a constant prediction (scikit-learn's
    models need two classes), said in the result's "note".

    Returns:
        {"C", "valid": metrics, "test": metrics (of the chosen C), "train_rows", "grid": [{"C", "valid",
        "converged"}], "seconds"}: the modality's column of the method's result
    """
    from sklearn.dummy import DummyClassifier
    from sklearn.exceptions import ConvergenceWarning

    started = time.time()
    spec = data.modalities[modality]
    features = {split: np.asarray(spec.array[rows], dtype=np.float64).reshape(len(rows), -1)
                for split, rows in spec.splits.items()}
    labels = {split: data.labels[rows] for split, rows in spec.splits.items()}
    if len(np.unique(labels["train"])) < 2:
        model = DummyClassifier(strategy="most_frequent").fit(features["train"], labels["train"])
        valid = classification_metrics(labels["valid"], model.predict(features["valid"]))
        test = classification_metrics(labels["test"], model.predict(features["test"]))
        return {"C": None, "valid": valid, "test": test, "train_rows": int(len(labels["train"])), "grid": [],
                "seconds": time.time() - started,
                "note": f"{spec.prefix}'s training rows hold a single class: constant prediction"}
    grid, best_c, best_model, best_valid = [], None, None, {"weighted_f1": -1.0}
    for c in CLASSICAL[method]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model = classical_pipeline(method, c).fit(features["train"], labels["train"])
        valid = classification_metrics(labels["valid"], model.predict(features["valid"]))
        grid.append({"C": c, "valid": valid,
                     "converged": not any(issubclass(w.category, ConvergenceWarning) for w in caught)})
        if valid["weighted_f1"] > best_valid["weighted_f1"]:
            best_c, best_model, best_valid = c, model, valid
    test = classification_metrics(labels["test"], best_model.predict(features["test"]))
    return {"C": best_c, "valid": best_valid, "test": test, "train_rows": int(len(labels["train"])), "grid": grid,
            "seconds": time.time() - started}


def classical_result(data: DataFolder, method: str) -> dict:
    """`fit_classical` of `method` on each modality: the result of a classical job,
    {"seconds": summed over the columns, "columns": {prefix: fit_classical's result}}."""
    columns = {m.prefix: fit_classical(data, index, method) for index, m in enumerate(data.modalities)}
    return {"seconds": sum(c["seconds"] for c in columns.values()), "columns": columns}
