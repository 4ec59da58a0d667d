"""Linear probes of learned features: what a standardised logistic regression can read from them.

`probe_accuracy` is the one probe (cross-validated accuracy); `modality_probe` asks it whether the
invariant parts of two modalities still tell the modalities apart. The training loop
(`training.fit`) runs `modality_probe` at the end of every DisCoM-KD run; inspect_run.py runs
`disentanglement_probes` (modality and class, every part) on a finished run. Knows numpy and
scikit-learn only.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

PARTS = ("invariant", "informative", "irrelevant")  # the feature parts of a modality branch (model_pytorch)
PROBE_FOLDS = 5
# Rows per modality the end-of-run probe reads at most: its accuracy is then known to about
# +-0.01 (binomial standard error at 4000 rows), in seconds even for 256-d features.
PROBE_ROWS_PER_MODALITY = 2000
INVARIANCE_MEANING = ("invariant modality probe: how often a logistic regression tells the modality from the "
                      "invariant part; 0.5 is modality-free (the method's aim), 1.0 fully separable")


def probe_accuracy(features: np.ndarray, targets: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Cross-validated accuracy of a standardised logistic regression predicting `targets` from `features`.

    Stratified 5-fold (fewer when the smallest class has fewer than 5 rows), shuffled with `seed`.
    Args: features (n, d), targets (n,) integer classes. Returns (mean, std) over the folds, or
    (nan, nan) when a class has a single row (no stratified split exists).
    """
    folds = min(PROBE_FOLDS, int(np.unique(targets, return_counts=True)[1].min()))
    if folds < 2:
        return math.nan, math.nan
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    with warnings.catch_warnings():
        # a fold that does not fully converge still gives an accuracy; a probe need not be optimal
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_score(model, features, targets, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return float(scores.mean()), float(scores.std())


def probe_rows(rows: np.ndarray, seed: int, limit: int = PROBE_ROWS_PER_MODALITY) -> np.ndarray:
    """`rows`, or `limit` of them drawn without replacement with `seed` (in their order) when there are more."""
    if len(rows) <= limit:
        return rows
    return rows[np.sort(np.random.default_rng(seed).choice(len(rows), limit, replace=False))]


def modality_probe(parts: list[np.ndarray], seed: int = 0) -> dict:
    """How well the modality can be told from features of two modalities pooled (chance 0.5).

    Args: parts, one (n, d) array per modality, the same n (equal classes, so chance is 0.5).
    Returns: {"modality_accuracy", "std" (over the folds; None when no probe is possible), "chance",
    "rows_per_modality", "folds", "seed"}.
    """
    assert len({len(p) for p in parts}) == 1, f"the same rows per modality expected, got {[len(p) for p in parts]}"
    features = np.concatenate(parts).astype(np.float64)  # (M * n, d)
    targets = np.repeat(np.arange(len(parts)), len(parts[0]))
    if not np.isfinite(features).all():  # a probe of non-finite features says nothing
        mean, std = math.nan, math.nan
    else:
        mean, std = probe_accuracy(features, targets, seed)
    return {"modality_accuracy": None if math.isnan(mean) else mean, "std": None if math.isnan(std) else std,
            "chance": 1 / len(parts), "rows_per_modality": int(len(parts[0])), "folds": PROBE_FOLDS, "seed": seed}


def disentanglement_probes(features: dict[str, dict[str, np.ndarray]], seed: int = 0) -> dict:
    """Modality and class probes for each feature part (see `probe_accuracy`).

    Args: features as returned by `inference.feature_parts` (two modalities).
    Returns: {"modality": {part: {"mean", "std"}}, "class": {prefix: {part: {"mean", "std"}}},
    "chance": {"modality": 0.5, "class": {prefix: majority-class share}}, "rows": {...}}.
    """
    prefixes = list(features)
    # the same number of rows per modality, so that chance is exactly 0.5
    per_modality = min(len(features[p]["labels"]) for p in prefixes)
    rng = np.random.default_rng(seed)
    chosen = {p: np.sort(rng.choice(len(features[p]["labels"]), per_modality, replace=False)) for p in prefixes}
    modality_targets = np.repeat(np.arange(len(prefixes)), per_modality)

    def summary(mean_std):
        return {"mean": None if math.isnan(mean_std[0]) else mean_std[0],
                "std": None if math.isnan(mean_std[1]) else mean_std[1]}

    probes = {"modality": {}, "class": {p: {} for p in prefixes}}
    for part in PARTS:
        pooled = np.concatenate([features[p][part][chosen[p]] for p in prefixes])
        probes["modality"][part] = summary(probe_accuracy(pooled, modality_targets, seed))
        for p in prefixes:
            probes["class"][p][part] = summary(probe_accuracy(features[p][part], features[p]["labels"], seed))
    probes["chance"] = {"modality": 1 / len(prefixes),
                        "class": {p: float(np.bincount(features[p]["labels"]).max() / len(features[p]["labels"]))
                                  for p in prefixes}}
    probes["rows"] = {"modality": int(len(modality_targets)), **{p: int(len(features[p]["labels"])) for p in prefixes}}
    probes["method"] = (f"test rows; StandardScaler + LogisticRegression, StratifiedKFold({PROBE_FOLDS}, "
                        f"shuffle, seed {seed}); mean and std of the fold accuracies")
    return probes


def probe_table(probes: dict) -> str:
    """The probes as a small text table: one row per part, one column per probe, chance last."""
    prefixes = list(probes["class"])
    headers = ["modality"] + [f"class {p}" for p in prefixes]
    width = max(15, *(len(h) + 2 for h in headers))

    def cell(result):
        return "n/a" if result["mean"] is None else f"{result['mean']:.3f} ± {result['std']:.3f}"

    lines = [f"probe accuracy on the test rows ({PROBE_FOLDS}-fold logistic regression, mean ± std)",
             f"{'part':<12}" + "".join(f"{h:>{width}}" for h in headers)]
    for part in PARTS:
        cells = [probes["modality"][part]] + [probes["class"][p][part] for p in prefixes]
        lines.append(f"{part:<12}" + "".join(f"{cell(c):>{width}}" for c in cells))
    chance = [probes["chance"]["modality"]] + [probes["chance"]["class"][p] for p in prefixes]
    lines.append(f"{'chance':<12}" + "".join(f"{c:>{width}.3f}" for c in chance))
    return "\n".join(lines)
