"""Linear probes of learned features: what a standardised logistic regression can read from them.

`probe_accuracy` is the one probe (cross-validated accuracy); `modality_probe` asks it whether the
invariant parts of two modalities still tell the modalities apart, and `cross_modal_transfer` whether a
classifier of one modality's invariant part classifies the other's. The training loop (`loop.fit`)
runs both at the end of every DisCoM-KD run; inspect_run.py runs `disentanglement_probes` (modality and
class, every part) on a finished run. Knows numpy and scikit-learn only; scikit-learn is imported inside
the functions that use it (about a second to import, which a command that stops before probing need not pay).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from discomkd.evaluation.metrics import classification_metrics

PARTS = ("invariant", "informative", "irrelevant")  # the feature parts of a modality branch (models/discomkd.py)
PROBE_FOLDS = 5
# Rows per modality the end-of-run probe reads at most: its accuracy is then known to about
# +-0.01 (binomial standard error at 4000 rows), in seconds even for 256-d features.
PROBE_ROWS_PER_MODALITY = 2000
INVARIANCE_MEANING = ("invariant modality probe: how often a logistic regression tells the modality from the "
                      "invariant part; 0.5 is modality-free (the method's aim), 1.0 fully separable")
# the two directions of cross_modal_transfer: (name, modality fitted, modality scored)
TRANSFER_DIRECTIONS = (("first->second", 0, 1), ("second->first", 1, 0))
TRANSFER_MEANING = ("cross-modal transfer: a logistic regression fitted on one modality's invariant part (training "
                    "rows) classifies the other's (validation rows); as good as within its own modality, the "
                    "invariant part is shared (the method's aim); near chance, it is not")


def linear_probe():
    """The probes' classifier, an unfitted scikit-learn pipeline: a logistic regression on standardised
    features. lbfgs is deterministic, so a probe depends on its rows alone."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def probe_accuracy(features: np.ndarray, targets: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Cross-validated accuracy of a standardised logistic regression predicting `targets` from `features`.

    Stratified 5-fold (fewer when the smallest class has fewer than 5 rows), shuffled with `seed`.
    Args: features (n, d), targets (n,) integer classes. Returns (mean, std) over the folds, or
    (nan, nan) when a class has a single row (no stratified split exists).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    folds = min(PROBE_FOLDS, int(np.unique(targets, return_counts=True)[1].min()))
    if folds < 2:
        return math.nan, math.nan
    model = linear_probe()
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


def cross_modal_transfer(fitted: list[tuple[np.ndarray, np.ndarray]], scored: list[tuple[np.ndarray, np.ndarray]],
                         prefixes, seed: int = 0) -> dict:
    """Class accuracy and weighted F1 of a classifier of one modality's features on the other's, both ways.

    For each direction of TRANSFER_DIRECTIONS, one `linear_probe` is fitted on the features and classes of
    the first-named modality's `fitted` rows, then scored on the other modality's `scored` rows
    ("transfer") and, for reference, on its own modality's `scored` rows ("within").
    Args: fitted and scored, one (features (n, d), classes (n,)) pair per modality (the modalities'
    rows may differ); prefixes, the two modalities' names; seed, recorded (the rows were drawn with it).
    Returns: {direction: {"from", "to" (prefixes), "fitted_rows", "scored_rows", "transfer", "within"
    ({"accuracy", "weighted_f1"}, or None when no classifier can be fitted: non-finite features, a single
    class)}, "chance" (the majority class's share of the scored rows of each modality, by prefix), "seed"}.
    """
    result = {}
    for name, source, target in TRANSFER_DIRECTIONS:
        model = _fitted_probe(*fitted[source])
        scores = {where: None if model is None else _scores(model, *scored[m])
                  for where, m in (("transfer", target), ("within", source))}
        result[name] = {"from": prefixes[source], "to": prefixes[target], "fitted_rows": int(len(fitted[source][1])),
                        "scored_rows": int(len(scored[target][1])), **scores}
    result["chance"] = {prefix: float(np.bincount(classes).max() / len(classes))
                        for prefix, (_, classes) in zip(prefixes, scored)}
    result["seed"] = seed
    return result


def _fitted_probe(features: np.ndarray, classes: np.ndarray):
    """`linear_probe` fitted on the rows, or None when it cannot be (non-finite features, one class)."""
    from sklearn.exceptions import ConvergenceWarning

    if not np.isfinite(features).all() or len(np.unique(classes)) < 2:
        return None
    model = linear_probe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # as in probe_accuracy
        return model.fit(features.astype(np.float64), classes)


def _scores(model, features: np.ndarray, classes: np.ndarray) -> dict | None:
    if not np.isfinite(features).all():
        return None
    metrics = classification_metrics(classes, model.predict(features.astype(np.float64)))
    return {"accuracy": metrics["accuracy"], "weighted_f1": metrics["weighted_f1"]}


def transfer_lines(transfer: dict) -> list[str]:
    """The printed summary's lines of a `cross_modal_transfer` result: one per direction."""
    lines = []
    for name, _, _ in TRANSFER_DIRECTIONS:
        direction = transfer[name]
        if direction["transfer"] is None:
            lines.append(f"cross-modal transfer {direction['from']}->{direction['to']}: n/a (no classifier could be "
                         f"fitted on {direction['from']}'s invariant part)")
            continue
        across, within = direction["transfer"], direction["within"]
        lines.append(f"cross-modal transfer {direction['from']}->{direction['to']} on the validation rows: accuracy "
                     f"{across['accuracy']:.3f}, weighted F1 {across['weighted_f1']:.3f} (within {direction['from']} "
                     f"{within['accuracy']:.3f} / {within['weighted_f1']:.3f}; chance "
                     f"{transfer['chance'][direction['to']]:.3f}; fitted on {direction['fitted_rows']} training rows)")
    return lines


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
