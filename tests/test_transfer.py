"""Cross-modal transfer of the invariant parts (probes.cross_modal_transfer): a classifier fitted on one modality's
invariant part, scored on the other's, both ways, at the end of every DisCoM-KD run (engine.invariance_measures),
in results.json and in the comparison's table."""
import os

import numpy as np
import pytest
from toy import PREFIXES, TOY_SETTINGS, read_results, write_toy_folder

from discomkd.analysis.inspection import load_run
from discomkd.comparison.table import aggregate, format_table
from discomkd.evaluation.probes import TRANSFER_DIRECTIONS, cross_modal_transfer, transfer_lines
from discomkd.training import run as training_run
from discomkd.training.config import Config
from discomkd.training.inference import feature_parts

CLASSES, DIMENSIONS = 4, 16


def draw(rng, rows: int, means: np.ndarray, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """`rows` features around their class's mean (unit noise), classes balanced: (features (n, d), classes (n,))."""
    classes = np.arange(rows) % len(means)
    return means[classes] + shift + rng.standard_normal((rows, means.shape[1])), classes


def class_means(rng, dimensions=slice(None)) -> np.ndarray:
    """(CLASSES, DIMENSIONS) class means, 3 apart on average, non-zero only in `dimensions`."""
    means = np.zeros((CLASSES, DIMENSIONS))
    means[:, dimensions] = 3.0 * rng.standard_normal((CLASSES, DIMENSIONS))[:, dimensions]
    return means


def test_identical_invariant_parts_transfer_as_well_as_within():
    rng = np.random.default_rng(0)
    means = class_means(rng)
    train, valid = draw(rng, 400, means), draw(rng, 200, means)
    result = cross_modal_transfer([train, train], [valid, valid], PREFIXES, seed=5)
    for name, source, target in TRANSFER_DIRECTIONS:
        direction = result[name]
        assert (direction["from"], direction["to"]) == (PREFIXES[source], PREFIXES[target])
        assert direction["transfer"] == direction["within"]  # the same rows: the very same predictions
        assert direction["within"]["accuracy"] > 0.9 and direction["within"]["weighted_f1"] > 0.9
        assert (direction["fitted_rows"], direction["scored_rows"]) == (400, 200)
    assert result["chance"] == {prefix: 0.25 for prefix in PREFIXES} and result["seed"] == 5


def test_unpaired_rows_of_one_distribution_transfer_about_as_well_as_within():
    """Each modality its own rows (different draws, different counts), the same class distributions."""
    rng = np.random.default_rng(1)
    means = class_means(rng)
    fitted = [draw(rng, 300, means), draw(rng, 500, means)]
    scored = [draw(rng, 400, means), draw(rng, 400, means)]
    result = cross_modal_transfer(fitted, scored, PREFIXES)
    for name, source, _ in TRANSFER_DIRECTIONS:
        direction = result[name]
        assert direction["fitted_rows"] == len(fitted[source][1])
        assert direction["within"]["accuracy"] > 0.9
        assert abs(direction["transfer"]["accuracy"] - direction["within"]["accuracy"]) < 0.04


@pytest.mark.parametrize("case", ["disjoint", "shifted"])
def test_invariant_parts_that_differ_transfer_at_about_chance(case):
    """Disjoint: each modality's classes differ in dimensions the other's do not use. Shifted: the same
    classes, the second modality moved far from the first (100 in every dimension, the classes about 4 apart:
    a modest shift only offsets the logits, so that some classes are still told apart)."""
    rng = np.random.default_rng(2)
    if case == "disjoint":
        first, second = class_means(rng, slice(0, 8)), class_means(rng, slice(8, 16))
        shift = 0.0
    else:
        first = second = class_means(rng)
        shift = 100.0
    fitted = [draw(rng, 400, first), draw(rng, 400, second, shift)]
    scored = [draw(rng, 400, first), draw(rng, 400, second, shift)]
    result = cross_modal_transfer(fitted, scored, PREFIXES)
    for name, _, _ in TRANSFER_DIRECTIONS:
        direction = result[name]
        assert direction["within"]["accuracy"] > 0.9, name
        assert abs(direction["transfer"]["accuracy"] - 0.25) < 0.1, (name, direction["transfer"])


def test_no_classifier_is_fitted_on_non_finite_features_or_a_single_class():
    rng = np.random.default_rng(3)
    features, classes = draw(rng, 40, class_means(rng))
    broken = features.copy()
    broken[3, 2] = np.nan
    result = cross_modal_transfer([(broken, classes), (features, classes)], [(features, classes), (broken, classes)],
                                  PREFIXES)
    assert result["first->second"]["transfer"] is None and result["first->second"]["within"] is None
    # fitted on finite rows; its own modality's scored rows non-finite: no within, the other modality still scored
    assert result["second->first"]["within"] is None and result["second->first"]["transfer"]["accuracy"] > 0.8
    single = cross_modal_transfer([(features, np.zeros(40, int)), (features, classes)], [(features, classes)] * 2,
                                  PREFIXES)
    assert single["first->second"]["transfer"] is None and single["second->first"]["transfer"] is not None
    lines = transfer_lines(single)
    assert len(lines) == 2 and lines[0].startswith(f"cross-modal transfer {PREFIXES[0]}->{PREFIXES[1]}: n/a")
    assert lines[1].startswith(f"cross-modal transfer {PREFIXES[1]}->{PREFIXES[0]} on the validation rows: accuracy ")


def test_a_discomkd_run_writes_the_transfer_of_its_best_checkpoints(toy_run):
    folder, output = toy_run
    transfer = read_results(output)["cross_modal_transfer"]
    assert transfer["split"] == {"fitted": "train", "scored": "valid"} and transfer["part"] == "invariant"
    train_rows, valid_rows = (len(np.load(os.path.join(folder, f"{split}_idx.npy"))) for split in ("train", "valid"))
    for name, source, target in TRANSFER_DIRECTIONS:
        direction = transfer[name]
        assert (direction["from"], direction["to"]) == (PREFIXES[source], PREFIXES[target])
        assert (direction["fitted_rows"], direction["scored_rows"]) == (train_rows, valid_rows)
        for where in ("transfer", "within"):
            assert 0.0 <= direction[where]["accuracy"] <= 1.0 and 0.0 <= direction[where]["weighted_f1"] <= 1.0
    # the same measure recomputed from the checkpoints the way inspect_run.py reads them
    _, data = load_run(output)
    parts = {split: feature_parts(output, data, split=split) for split in ("train", "valid")}
    again = cross_modal_transfer(*[[(parts[split][p]["invariant"], parts[split][p]["labels"]) for p in PREFIXES]
                                   for split in ("train", "valid")], PREFIXES, seed=0)
    for name, _, _ in TRANSFER_DIRECTIONS:
        assert again[name] == transfer[name]


def test_unpaired_modalities_fit_on_their_own_training_rows(tmp_path):
    folder = write_toy_folder(tmp_path / "data", PREFIXES)
    train = np.load(os.path.join(folder, "train_idx.npy"))
    own = {PREFIXES[0]: train[:30], PREFIXES[1]: train[30:]}
    for prefix, rows in own.items():
        np.save(os.path.join(folder, f"train_idx_{prefix}.npy"), rows)
    output = str(tmp_path / "run")
    training_run.run(Config(output=output, **{**TOY_SETTINGS, "epochs": 1, "verbose": 0}), folder, *PREFIXES)
    transfer = read_results(output)["cross_modal_transfer"]
    for name, source, _ in TRANSFER_DIRECTIONS:
        assert transfer[name]["fitted_rows"] == len(own[PREFIXES[source]])
        assert transfer[name]["transfer"] is not None


# ----------------------------------------------------------------------------- the comparison's table
def run_entry(transfer_accuracy=None, within=0.9) -> dict:
    """A method's entry in one run of a comparison; with a transfer measured when `transfer_accuracy` is given."""
    column = {"test": {"weighted_f1": 0.8, "accuracy": 0.8}}
    entry = {"status": "done", "seconds": 1.0, "columns": {p: column for p in PREFIXES}}
    if transfer_accuracy is not None:
        entry["invariance_probe"] = {"modality_accuracy": 0.9}
        entry["cross_modal_transfer"] = {
            name: {"from": PREFIXES[source], "to": PREFIXES[target],
                   "transfer": {"accuracy": transfer_accuracy + source * 0.1, "weighted_f1": transfer_accuracy},
                   "within": {"accuracy": within, "weighted_f1": within}}
            for name, source, target in TRANSFER_DIRECTIONS}
        entry["cross_modal_transfer"]["chance"] = {p: 0.25 for p in PREFIXES}
    return entry


def test_the_comparison_table_shows_the_transfer_of_discomkd_rows_only():
    runs = [{"methods": {"mono": run_entry(), "discomkd": run_entry(accuracy)}} for accuracy in (0.4, 0.6)]
    aggregated = aggregate(runs, ["mono", "discomkd"])
    assert "cross_modal_transfer" not in aggregated["mono"]
    first = aggregated["discomkd"]["cross_modal_transfer"]["first->second"]
    assert first["transfer"]["accuracy"]["values"] == [0.4, 0.6] and first["within"]["accuracy"]["mean"] == 0.9
    assert aggregated["discomkd"]["cross_modal_transfer"]["second->first"]["transfer"]["accuracy"]["mean"] == \
        pytest.approx(0.6)
    table = format_table(aggregated, PREFIXES, 2, [0, 1], "the folder's", True)
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[1:-1]]
            for line in table.splitlines() if line.startswith("| ")}
    assert rows["method"][4:6] == ["transfer IMG->VEC / within [x]", "transfer VEC->IMG / within [x]"]
    assert rows["discomkd"][4] == "0.500 ± 0.141 / 0.900 ± 0.000"
    assert rows["discomkd"][5] == "0.600 ± 0.141 / 0.900 ± 0.000"
    assert rows["mono"][4:6] == ["-", "-"]
    assert table.splitlines()[1].count(":---:") == 5  # two modalities, the probe, two directions
    assert "[x] Cross-modal transfer" in table and "validation rows) 0.250." in table
    # a method whose runs lack the transfer (results of older runs, a missing checkpoint) gets no cell
    runs[1]["methods"]["discomkd"]["cross_modal_transfer"] = None
    aggregated = aggregate(runs, ["mono", "discomkd"])
    assert "cross_modal_transfer" not in aggregated["discomkd"]
    assert "transfer" not in format_table(aggregated, PREFIXES, 2, [0, 1], "the folder's", False)
