"""The invariant part's modality probe in every DisCoM-KD run (read from its best checkpoints, written and printed,
absent for methods without invariant parts, a column of the comparison). The cross-modal transfer: test_transfer.py."""
import json
import os

import numpy as np
import pytest
from toy import TOY_SETTINGS, logged_lines, paper_rate_results, write_toy_folder

from discomkd.analysis.inspection import load_run
from discomkd.comparison import runner as comparison
from discomkd.evaluation.probes import INVARIANCE_MEANING, TRANSFER_MEANING, modality_probe, probe_rows, transfer_lines
from discomkd.training.config import Config
from discomkd.training.inference import feature_parts

PREFIXES = ("IMG", "VEC")


# the paper's learning rate, as in the recorded history below
TOY = {**TOY_SETTINGS, "learning_rate": Config.learning_rate, "verbose": 0}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_toy_folder(tmp_path_factory.mktemp("invariance") / "data", PREFIXES)


# ----------------------------------------------------------------------------- the probe
def test_probe_is_at_chance_for_identical_distributions_and_finds_a_shift():
    rng = np.random.default_rng(0)
    same = modality_probe([rng.standard_normal((300, 16)), rng.standard_normal((300, 16))])
    assert abs(same["modality_accuracy"] - 0.5) < 0.1 and same["chance"] == 0.5
    assert same["rows_per_modality"] == 300
    shifted = modality_probe([rng.standard_normal((300, 16)), rng.standard_normal((300, 16)) + 2.0])
    assert shifted["modality_accuracy"] > 0.97
    assert modality_probe([np.full((20, 4), np.nan), np.zeros((20, 4))])["modality_accuracy"] is None


def test_probe_rows_are_capped_reproducibly():
    rows = np.arange(100, 5100)
    capped = probe_rows(rows, seed=3, limit=2000)
    assert len(capped) == 2000 and len(np.unique(capped)) == 2000 and np.all(np.diff(capped) > 0)
    assert np.array_equal(capped, probe_rows(rows, seed=3, limit=2000))
    assert np.array_equal(probe_rows(rows[:50], seed=3, limit=2000), rows[:50])


def test_run_writes_and_prints_the_invariance_probe_of_its_best_checkpoints(folder, tmp_path):
    with logged_lines() as lines:
        results = paper_rate_results(folder, "probed")
    probe = results["invariance_probe"]
    valid_rows = len(np.load(os.path.join(folder, "valid_idx.npy")))
    assert probe["split"] == "valid" and probe["chance"] == 0.5 and probe["rows_per_modality"] == valid_rows
    assert 0.0 <= probe["modality_accuracy"] <= 1.0 and probe["std"] >= 0.0
    # the same probe recomputed from the checkpoints the way inspect_run.py reads them
    output = os.path.join(folder, "probed")
    _, data = load_run(output)
    features = feature_parts(output, data, split="valid")
    again = modality_probe([features[p]["invariant"] for p in PREFIXES], seed=0)
    assert again["modality_accuracy"] == probe["modality_accuracy"] and again["std"] == probe["std"]
    printed = "\n".join(lines)
    assert f"invariant modality probe on the validation rows: {probe['modality_accuracy']:.3f}" in printed
    assert INVARIANCE_MEANING in printed
    # the cross-modal transfer beside it: one line per direction, right under the probe's two lines
    transfer = results["cross_modal_transfer"]
    at = next(i for i, line in enumerate(lines) if line.startswith("invariant modality probe on the validation rows"))
    assert lines[at + 2:at + 5] == [*transfer_lines(transfer), f"({TRANSFER_MEANING})"]
    first = transfer["first->second"]
    across, within = first["transfer"], first["within"]
    assert lines[at + 2].startswith(f"cross-modal transfer IMG->VEC on the validation rows: accuracy "
                                    f"{across['accuracy']:.3f}, weighted F1 {across['weighted_f1']:.3f} "
                                    f"(within IMG {within['accuracy']:.3f}")
    assert lines[at + 3].startswith("cross-modal transfer VEC->IMG on the validation rows: accuracy ")


def test_methods_without_invariant_parts_have_no_probe(folder):
    results = paper_rate_results(folder, "mono", method="mono", modality="VEC")
    assert "invariance_probe" not in results and "cross_modal_transfer" not in results


def test_comparison_shows_the_probe_for_discomkd_rows_only(folder, tmp_path):
    output = str(tmp_path / "cmp")
    results = comparison.compare(Config(**{**TOY, "epochs": 1}, output=output), folder, *PREFIXES, runs=2,
                                 methods="mono,discomkd-dann", resplit=True)
    aggregated = results["aggregated"]
    values = [run["methods"]["discomkd-dann"]["invariance_probe"]["modality_accuracy"] for run in results["results"]]
    assert aggregated["discomkd-dann"]["invariance_probe"]["values"] == values
    assert "invariance_probe" not in aggregated["mono"]
    table = open(os.path.join(output, comparison.TABLE_FILE)).read()
    rows = {line.split("|")[1].strip(): line.split("|") for line in table.split("\n\n")[0].splitlines()
            if line.startswith("| ")}
    assert "invariant modality probe [i]" in rows["method"][4]
    assert rows["discomkd-dann"][4].strip() == f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"
    assert rows["mono"][4].strip() == "-" and "[i] Validation rows" in table
    # the cross-modal transfer beside it, per direction: transfer / within accuracy over the runs
    transfers = [run["methods"]["discomkd-dann"]["cross_modal_transfer"] for run in results["results"]]
    assert all(run["methods"]["mono"]["cross_modal_transfer"] is None for run in results["results"])
    assert "cross_modal_transfer" not in aggregated["mono"]
    for column, (name, direction) in ((5, ("first->second", "IMG->VEC")), (6, ("second->first", "VEC->IMG"))):
        assert rows["method"][column].strip() == f"transfer {direction} / within [x]"
        across, within = ([t[name][where]["accuracy"] for t in transfers] for where in ("transfer", "within"))
        assert aggregated["discomkd-dann"]["cross_modal_transfer"][name]["transfer"]["accuracy"]["values"] == across
        assert rows["discomkd-dann"][column].strip() == (f"{np.mean(across):.3f} ± {np.std(across, ddof=1):.3f} / "
                                                         f"{np.mean(within):.3f} ± {np.std(within, ddof=1):.3f}")
        assert rows["mono"][column].strip() == "-"
    assert "[x] Cross-modal transfer" in table
    saved = json.load(open(os.path.join(output, "run_0", "discomkd-dann", "results.json")))
    assert saved["config"]["grl_schedule"] == "dann"  # the method's overrides reach the run
    # inspect_run.py reads such a run with the split it was trained on (saved beside it), not the folder's
    _, data = load_run(os.path.join(output, "run_1", "discomkd-dann"))
    drawn = np.load(os.path.join(output, "run_1", "split", "test_idx.npy"))
    assert np.array_equal(data.modalities[0].splits["test"], drawn)
    assert not np.array_equal(drawn, np.load(os.path.join(folder, "test_idx.npy")))
