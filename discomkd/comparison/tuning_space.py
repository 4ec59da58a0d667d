"""What tune.py searches for each method, and where a comparison row's settings came from.

One space for every neural method (COMMON: learning rate, weight decay, epochs, augmentations), plus
each method's own settings (OWN; DisCoM-KD and its variants: DISCOMKD_OWN, and the alignment weight
where the variant aligns). `settings_source` names a comparison row's settings: the paper's, tuned for
this method (a settings.json beside its tuning.json), borrowed from another method's tuning, a settings
file, or the command line; `row_label` names a row whose settings switch DisCoM-KD's terms off. No Ray here: the
comparison reads it too.
"""
from __future__ import annotations

import dataclasses
import json
import os

from discomkd.models.alignment import NO_ALIGNMENT
from discomkd.models.methods import METHODS, foreign_settings
from discomkd.training.config import MAX_RUNS, Config, check_config, with_method_overrides
from discomkd.utils.errors import OptionError
from discomkd.utils.seeds import MAX_SEED

LOSS_WEIGHTS = (0.0, 0.1, 0.3, 1.0, 3.0)  # 0 drops a term; a factor ~3 apart around the paper's 1
GRL_COEFFICIENTS = (0.1, 0.3, 1.0, 3.0)
WEIGHT_DECAYS = (0.0, 1e-5, 1e-4, 1e-3)
LEARNING_RATES = (1e-5, 1e-2)  # log-uniform; the paper's 1e-4 in the middle
TEMPERATURES = (1.0, 2.0, 4.0, 8.0)  # around Hinton's and Zhao et al.'s 4
KD_WEIGHTS = (0.3, 1.0, 3.0)  # kd's and dml's
DKD_ALPHAS = (0.5, 1.0, 2.0)  # Zhao et al.: alpha 1, beta 1-8 by data set
DKD_BETAS = (1.0, 2.0, 4.0, 8.0)
# The settings every neural method's search covers (one budget, one space), then each method's own.
COMMON = ("learning_rate", "weight_decay", "epochs", "augment_first", "augment_second")
OWN = {
    "mono": (), "teacher": (),
    "kd": ("kd_temperature", "kd_weight"),
    "dkd": ("dkd_alpha", "dkd_beta", "dkd_temperature"),
    "dml": ("dml_temperature", "dml_weight"),
}
DISCOMKD_OWN = ("weight_aux", "weight_mod", "weight_adv", "weight_perp", "grl_coefficient")
TUNABLE = tuple(METHODS)  # every neural method: mono, teacher, kd, dkd, discomkd and its variants


def searched(method: str, modality: int | None = None) -> tuple[str, ...]:
    """The settings the search over `method` covers: COMMON, then the method's own (DisCoM-KD: its loss
    weights and reversal coefficient, plus the alignment weight where the variant aligns). `modality` (0 or 1):
    a search over one per-modality model, which reads that modality's augmentation only."""
    if method in OWN:
        names = COMMON + OWN[method]
    else:
        aligns = METHODS[method].overrides.get("align", NO_ALIGNMENT) != NO_ALIGNMENT
        names = COMMON + DISCOMKD_OWN + (("align_weight",) if aligns else ())
    if modality is None:
        return names
    unread = ("augment_second", "augment_first")[modality]
    return tuple(name for name in names if name != unread)


def model_key(method: str, modality: str | None) -> str:
    """How settings and searches name one model of a method: the method, or for one modality's model of a
    per-modality method (mono, kd, dkd), `<method>_<PREFIX>`, as its run folder is named."""
    return method if modality is None else f"{method}_{modality}"


def model_settings(method_settings: dict[str, dict], method: str, modality: str | None) -> dict:
    """The settings that replace a comparison's for one model: its method's, then its own (`model_key`) winning."""
    own = method_settings.get(model_key(method, modality), {}) if modality is not None else {}
    return {**method_settings.get(method, {}), **own}


def split_model_key(key: str, prefixes) -> tuple[str, str | None] | None:
    """(method, modality) that `model_key` made `key` from, for a comparison of `prefixes`: a neural method's name
    (modality None), or `<method>_<PREFIX>` of a per-modality method; None when it is neither."""
    if key in METHODS:
        return key, None
    for prefix in prefixes:
        method = key[:-len(prefix) - 1] if key.endswith("_" + prefix) else ""
        if method in METHODS and METHODS[method].per_modality:
            return method, prefix
    return None


def check_tuning(config: Config, trials: int, runs: int, grace_epochs: int | None) -> None:
    """Raises `OptionError` for options no search can use; tune.py asks before Ray is imported or started
    (a mistake costs no cluster, and is named even where Ray is not installed), the search again."""
    check_config(config)
    if config.method not in TUNABLE:
        raise OptionError(f"--method {config.method}: one of {', '.join(TUNABLE)} is expected (neural methods; svm "
                          "and logreg choose C on validation by themselves)")
    for option, value in (("--trials", trials), ("--grace-epochs", grace_epochs)):
        if value is not None and value < 1:  # ASHA's grace period must be positive
            raise OptionError(f"{option} {value}: at least 1 is expected")
    if not 0 <= runs <= MAX_RUNS:  # the final runs' comparison would refuse it only after the whole search
        raise OptionError(f"--runs {runs}: 0 (the search alone) to {MAX_RUNS} is expected")
    if config.seed + runs > MAX_SEED:  # the final runs train on seeds SEED+1..SEED+RUNS
        raise OptionError(f"--seed {config.seed} --runs {runs}: the last final run's seed {config.seed + runs} "
                          f"exceeds {MAX_SEED} (2**32-1)")


PAPER = "paper"
TUNING_RECORD = "tuning.json"  # tune.py writes it beside settings.json


def tuning_record(settings_path: str) -> dict | None:
    """The tuning.json beside a settings file tune.py wrote ({"method", "trials", ...}), or None."""
    path = os.path.join(os.path.dirname(os.path.abspath(settings_path)), TUNING_RECORD)
    try:
        with open(path) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("trials"), list) else None


def settings_source(method: str, settings_path: str | None, config: Config) -> str:
    """Where `method`'s settings in a comparison came from: "tuned for M (N trials)" (M is this method:
    "tuned (N trials)"; another: "borrowed: tuned for M (N trials)"), "settings file PATH", "paper"
    (the settings a search over the method covers, epochs and augmentations aside, are the defaults),
    or "command line"."""
    if settings_path is not None:
        record = tuning_record(settings_path)
        if record is None:
            return f"settings file {settings_path}"
        tuned_for, trials = record.get("method", "discomkd"), len(record["trials"])  # before 2026-11: discomkd only
        return (f"tuned ({trials} trials)" if tuned_for == method else
                f"borrowed: tuned for {tuned_for} ({trials} trials)")
    defaults = Config()
    fixed = [name for name in searched(method) if name not in ("epochs", "augment_first", "augment_second")]
    return PAPER if all(getattr(config, name) == getattr(defaults, name) for name in fixed) else "command line"


def foreign_settings_line(method: str, settings: dict, source: str) -> str | None:
    """A warning naming the settings of `source` that only other methods read (a file tuned for DisCoM-KD given to
    a teacher: its loss weights), which `method` ignores while its other settings apply; None when there are none."""
    foreign = foreign_settings(method, settings)
    if not foreign:
        return None
    named = "; ".join(f"{', '.join(names)} ({other}'s)" for other, names in foreign.items())
    return f"{source}: {named}: {method} does not use them (settings meant for another method?); its other settings apply"


# ----------------------------------------------------------------------------- what a row is
def terms_switched_off(method: str, config: Config) -> list[str]:
    """The loss terms that `config` switches off (weight 0) in `method` and its own definition keeps on (so
    discomkd-no-adv's L_adv is not listed: its name says so), in the method's order; [] for methods without
    DisCoM-KD's terms."""
    spec = METHODS[method]
    if not spec.invariant_parts:
        return []
    own = spec.weights(with_method_overrides(Config(method=method)), 1)
    weights = spec.weights(with_method_overrides(dataclasses.replace(config, method=method)), 1)
    return [term for term, weight in weights.items() if weight == 0 and own.get(term, 0) != 0]


def switched_off_note(method: str, config: Config) -> str:
    """The terms `config` switches off in `method`, said in words ("L_mod, L_adv off"; with every term but the task
    classifiers' off, what the method then is), or "" when none."""
    off = terms_switched_off(method, config)
    if not off:
        return ""
    if set(off) >= {"aux", "mod", "adv", "perp"} and "cl" not in off:
        return "only L_cl on: each modality's classifier trained alone, two encoders each"
    return f"{', '.join(f'L_{term}' for term in off)} off"


def row_label(method: str, config: Config) -> str:
    """How a comparison names `method`'s row under `config`: the method, with the terms its settings switch off,
    e.g. "discomkd (L_mod, L_adv off)"."""
    note = switched_off_note(method, config)
    return f"{method} ({note})" if note else method
