"""Every setting of a run and what checks and resolves them: the typed config (defaults are the
paper's), its command-line options, its checks, a method's overrides applied to it, devices and
precision. Knows torch and the methods' table (a method names the settings it overrides and the
loss terms it weights), nothing of the training loop.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from discomkd.models.alignment import ALIGNMENT_CHOICES, NO_ALIGNMENT
from discomkd.models.baselines import DKD_ALPHA, DKD_BETA, TEMPERATURE
from discomkd.models.discomkd import DISCRIMINATORS, GRL_SCHEDULES, LOSS_TERMS
from discomkd.models.methods import ALIGN_TERM, METHODS, method_spec
from discomkd.utils.errors import OptionError
from discomkd.utils.seeds import seed_problem

DEVICE_HELP = "auto (CUDA when present, else CPU), cpu, cuda or cuda:N"

def _option(default, help_text: str, **metadata):
    """A config field whose help text the command line shows."""
    return field(default=default, metadata={"help": help_text, **metadata})


@dataclass
class Config:
    """Every setting of a run. The defaults are the paper's (Adam 1e-4, batch 128, 300 epochs,
    all loss weights and the reversal coefficient 1)."""

    epochs: int = _option(300, "training epochs")
    batch_size: int = _option(128, "training batch size per modality (at least 2)")
    learning_rate: float = _option(1e-4, "Adam learning rate")
    weight_decay: float = _option(0.0, "Adam weight decay")
    seed: int = _option(0, "random seed; a CPU run with the same seed repeats exactly")
    device: str = _option("auto", DEVICE_HELP)
    # where a run writes and what it may replace: the command line's alone, never a settings file's
    output: str | None = _option(None, "output folder (None: DIR/DisCoM-KD_<FIRST>_<SECOND>)", setting=False)
    overwrite: bool = _option(False, "replace the files of an existing output folder", setting=False)
    weight_cl: float = _option(1.0, "weight of L_cl, the task classifiers (0 drops the term)")
    weight_aux: float = _option(1.0, "weight of L_aux, the shared auxiliary classifier")
    weight_mod: float = _option(1.0, "weight of L_mod, the modality classifiers")
    weight_adv: float = _option(1.0, "weight of L_adv, the adversarial modality discriminator")
    weight_perp: float = _option(1.0, "weight of L_perp, the orthogonality term")
    grl_coefficient: float = _option(1.0, "gradient reversal coefficient (lambda)")
    # Remedies for a fooled discriminator (docs/training.md, "Is the invariant part invariant?"), all off by default:
    grl_schedule: str = _option("constant", "reversal coefficient over training: constant (the paper), dann "
                                            "(lambda * (2/(1+exp(-10 p)) - 1), p the training progress in [0, 1]; "
                                            "Ganin & Lempitsky 2015) or linear (lambda * min(1, p / --grl-warmup))")
    grl_warmup: float = _option(0.3, "training fraction over which the linear schedule reaches lambda (0.3: about "
                                     "where the dann schedule reaches 0.9 lambda)")
    discriminator: str = _option("linear", "modality discriminator behind the reversal: linear (the paper, "
                                           "Linear(256, 2)) or mlp (Linear(256, 256), ReLU, Linear(256, 2))")
    discriminator_lr_scale: float = _option(1.0, "the discriminator's learning rate is --learning-rate times this "
                                                 "(its own Adam parameter group; 1: one group, as the paper)")
    # Alignment of the invariant parts without an adversary (docs/training.md, "Aligning the invariant parts"), off:
    align: str = _option(NO_ALIGNMENT, "align the two modalities' invariant parts besides the adversary: none (the "
                                       "paper), mmd (multi-kernel MMD, as in DAN) or coral (means and covariances, as "
                                       "in Deep CORAL); the loss term 'align'")
    align_weight: float = _option(1.0, "weight of the alignment term 'align' (with --align mmd or coral)")
    align_per_class: bool = _option(False, "with --align mmd or coral: align each class's invariant parts across the "
                                           "modalities, averaged over the classes of the batch present in both "
                                           "(default: the whole batch at once)")
    # The distillation baselines' own settings (compare.py, tune.py --method kd|dkd, settings files; not options
    # of main_DisCoM-KD.py, which trains DisCoM-KD), the published values by default:
    kd_temperature: float = _option(TEMPERATURE, "kd: distillation temperature T (Hinton et al.; 4, as Zhao et al. use)")
    kd_weight: float = _option(1.0, "kd: weight of the distillation term (the cross-entropy's is 1)")
    dkd_alpha: float = _option(DKD_ALPHA, "dkd: weight of TCKD, the target-class term (Zhao et al.: 1)")
    dkd_beta: float = _option(DKD_BETA, "dkd: weight of NCKD, the non-target term (Zhao et al.: 1-8 by data set)")
    dkd_temperature: float = _option(TEMPERATURE, "dkd: distillation temperature T (Zhao et al.: 4)")
    dml_temperature: float = _option(1.0, "dml: temperature T of the mutual term (Zhang et al.: 1, the plain "
                                          "probabilities)")
    dml_weight: float = _option(1.0, "dml: weight of the mutual term (the cross-entropies' is 1)")
    encoder_first: str = _option("auto", "first modality's encoder: auto (by rank; MNIST prefix -> lenet), "
                                         "resnet18, resnet1d, lenet or mlp")
    encoder_second: str = _option("auto", "second modality's encoder, as --encoder-first")
    augment_first: str = _option("auto", "first modality's augmentation: auto (flip+rot90 for images, none "
                                         "for the SPECTRO prefix and otherwise), none, flip, flip+rot90; "
                                         "sequences: shift, scale, shift+scale")
    augment_second: str = _option("auto", "second modality's augmentation, as --augment-first")
    legacy_modality_targets: bool = _option(False, "build modality targets as the published code does "
                                                   "(soft [1,1]/[0,0]; README, Differences from the published code)")
    eval_batch_size: int = _option(512, "evaluation batch size")
    data_on_device: str = _option("auto", "keep the data on the training device: auto (when it fits), yes, no")
    compile: str = _option("auto", "torch.compile the training step: auto (on CUDA), yes, no")
    precision: str = _option("auto", "auto (bf16 autocast on CUDA with bf16 support, else fp32), fp32, bf16")
    save_every: int = _option(0, "also write the resumable state.pt every N epochs (0: by time only)")
    save_every_seconds: float = _option(60.0, "write the resumable state.pt at the end of the first epoch that "
                                              "ends this many seconds after the last one (0: every epoch), "
                                              "and always on interruption")
    test_every_epoch: bool = _option(False, "score the test split at every epoch (the history then holds test "
                                            "curves); by default only at epochs where validation improves")
    score_test: bool = _option(True, "score the test split at all (off: validation only, as tuning trials run; "
                                     "the results then hold no test metrics)", flag=False)
    verbose: int = _option(1, "0: final table only, 1: one line per epoch", flag=False)
    # Set by the comparison (compare.py), not on main_DisCoM-KD.py's command line:
    method: str = _option("discomkd", "the method trained: a key of methods.METHODS", flag=False)
    modality: str | None = _option(None, "the prefix a per-modality method trains on", flag=False)
    teacher: str | None = _option(None, "checkpoint of the trained teacher a distillation method reads", flag=False)


BASELINE_SETTINGS = ("kd_temperature", "kd_weight", "dkd_alpha", "dkd_beta", "dkd_temperature", "dml_temperature",
                     "dml_weight")


def add_config_arguments(parser, skip=()) -> None:
    """Adds one `--option` per `Config` field to an argparse parser, with the field's default and help.

    Fields named in `skip`, and those marked `flag=False`, get no option.
    """
    for option in dataclasses.fields(Config):
        if option.name in skip or not option.metadata.get("flag", True):
            continue
        flag = "--" + option.name.replace("_", "-")
        if option.type in ("bool", bool):
            parser.add_argument(flag, action="store_true", help=option.metadata["help"])
        else:
            kind = {"int": int, "float": float}.get(str(option.type), str)
            parser.add_argument(flag, type=kind, default=option.default,
                                help=f"{option.metadata['help']} (default: %(default)s)")


# Runs of one comparison: far beyond any (the paper: 5), and it bounds the per-run splits drawn and checked
# before anything is written.
MAX_RUNS = 1000


FLOAT32_MAX = float(torch.finfo(torch.float32).max)
# The option that sets each loss term's weight, as an error message names it.
WEIGHT_OPTIONS = {**{term: f"--weight-{term}" for term in LOSS_TERMS}, ALIGN_TERM: "--align-weight"}


def check_config(config: Config) -> None:
    """Raises `OptionError` for the first setting no run can use (the device included)."""
    checks = (_output_and_seed, _optimizer, _reversal_and_discriminator, _loss_weights, _lengths_and_saving,
              _placement, _alignment, _distillation, _method)
    problems = [problem for check in checks for problem in check(config)]
    if problems:
        raise OptionError(problems[0])
    resolve_device(config.device)


def with_method_overrides(config: Config) -> Config:
    """The settings a run of `config.method` trains with: `config` with the method's overrides applied (e.g.
    discomkd-no-adv's weight_adv 0). The one place a method's overrides are applied."""
    return dataclasses.replace(config, **METHODS[config.method].overrides)


def _finite_at_least_zero(option: str, value: float) -> list[str]:
    return [] if 0 <= value < math.inf else [f"{option} {value}: a finite number >= 0 is expected"]


def _output_and_seed(config: Config) -> list[str]:
    problems = ["--output '': an empty name; name a folder (. for this one)"] if config.output == "" else []
    return problems + ([seed_problem(config.seed)] if seed_problem(config.seed) else [])


def _optimizer(config: Config) -> list[str]:
    """A learning rate, weight decay and discriminator scale Adam can step with (in float32)."""
    problems = _finite_at_least_zero("--weight-decay", config.weight_decay)
    if not 0 < config.discriminator_lr_scale < math.inf:
        problems.append(f"--discriminator-lr-scale {config.discriminator_lr_scale}: a finite positive number is "
                        "expected")
    if config.learning_rate <= 0 or not math.isfinite(config.learning_rate):
        problems.append(f"--learning-rate {config.learning_rate}: a positive number is expected")
    for option, value in (("--learning-rate", config.learning_rate), ("--weight-decay", config.weight_decay),
                          ("--discriminator-lr-scale", config.learning_rate * config.discriminator_lr_scale)):
        if math.isfinite(value) and abs(value) > FLOAT32_MAX:
            shown = getattr(config, option[2:].replace("-", "_"))
            problems.append(f"{option} {shown:g}: beyond float32's range ({FLOAT32_MAX:.3g}) with this learning "
                            "rate; the optimizer steps in float32")
    return problems


def _reversal_and_discriminator(config: Config) -> list[str]:
    problems = [] if math.isfinite(config.grl_coefficient) else [
        f"--grl-coefficient {config.grl_coefficient}: a finite number is expected"]
    if config.grl_schedule not in GRL_SCHEDULES:
        problems.append(f"--grl-schedule {config.grl_schedule}: expected one of {', '.join(GRL_SCHEDULES)}")
    if not 0 < config.grl_warmup <= 1:  # also false for NaN
        problems.append(f"--grl-warmup {config.grl_warmup}: a fraction of training in (0, 1] is expected")
    if config.discriminator not in DISCRIMINATORS:
        problems.append(f"--discriminator {config.discriminator}: expected one of {', '.join(DISCRIMINATORS)}")
    return problems


def _loss_weights(config: Config) -> list[str]:
    """Each weight >= 0, and at least one term of the method trained: the method's own weights say which terms
    it has (DisCoM-KD's five, and the alignment term under --align), so this rule cannot drift from them."""
    problems = [p for term in LOSS_TERMS for p in _finite_at_least_zero(WEIGHT_OPTIONS[term],
                                                                        getattr(config, f"weight_{term}"))]
    if problems or config.method not in METHODS or config.align not in ALIGNMENT_CHOICES:
        return problems  # the method's weights are asked of valid settings only
    overridden = with_method_overrides(config)
    weights = method_spec(overridden).weights(overridden, 1)
    if not any(weight > 0 for weight in weights.values()):
        options = ", ".join(WEIGHT_OPTIONS.get(term, term) for term in weights)
        problems.append(f"{options}: all 0, nothing would be trained; at least one positive loss weight is expected")
    return problems


def _lengths_and_saving(config: Config) -> list[str]:
    problems = [] if config.epochs >= 1 else [f"--epochs {config.epochs}: at least 1 is expected"]
    if config.batch_size < 2:
        problems.append(f"--batch-size {config.batch_size}: at least 2 is expected (batch normalisation)")
    if config.eval_batch_size < 1:
        problems.append(f"--eval-batch-size {config.eval_batch_size}: at least 1 is expected")
    if config.save_every < 0:
        problems.append(f"--save-every {config.save_every}: 0 (by time only) or more is expected")
    if not config.save_every_seconds >= 0 or not math.isfinite(config.save_every_seconds):
        problems.append(f"--save-every-seconds {config.save_every_seconds}: a finite number >= 0 is expected")
    if config.test_every_epoch and not config.score_test:
        problems.append("--test-every-epoch scores the test split, which this run must not score")
    return problems


def _placement(config: Config) -> list[str]:
    return [f"--{name.replace('_', '-')} {getattr(config, name)}: expected one of {', '.join(allowed)}"
            for name, allowed in (("data_on_device", ("auto", "yes", "no")), ("compile", ("auto", "yes", "no")),
                                  ("precision", ("auto", "fp32", "bf16")))
            if getattr(config, name) not in allowed]


def _alignment(config: Config) -> list[str]:
    problems = [] if config.align in ALIGNMENT_CHOICES else [
        f"--align {config.align}: expected one of {', '.join(ALIGNMENT_CHOICES)}"]
    return problems + _finite_at_least_zero("--align-weight", config.align_weight)


def _distillation(config: Config) -> list[str]:
    problems = [f"--{name.replace('_', '-')} {getattr(config, name)}: a finite positive temperature is expected"
                for name in ("kd_temperature", "dkd_temperature", "dml_temperature")
                if not 0 < getattr(config, name) < math.inf]
    return problems + [p for name in ("kd_weight", "dkd_alpha", "dkd_beta", "dml_weight")
                       for p in _finite_at_least_zero(f"--{name.replace('_', '-')}", getattr(config, name))]


def _method(config: Config) -> list[str]:
    return [] if config.method in METHODS else [f"method {config.method!r}: expected one of {', '.join(METHODS)}"]


def plain_path(config: Config) -> Config:
    """`--no-fast`: no torch.compile, fp32, data streamed from the host (the reference path)."""
    return dataclasses.replace(config, compile="no", precision="fp32", data_on_device="no")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):  # torch's message lists every backend it knows
        device = None
    if device is None or device.type not in ("cpu", "cuda"):  # meta, mps, xla...: not what this code runs on
        raise OptionError(f"--device {name}: not a device; expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise OptionError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                        f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device


def resolve_precision(setting: str, device: torch.device) -> str:
    """'auto' -> bf16 autocast on CUDA devices that support it, else fp32; 'fp32' as given; 'bf16' as
    given, except fp32 on a GPU without bf16 (pre-Ampere), where autocast would fail or crawl."""
    if setting == "auto" or (setting == "bf16" and device.type == "cuda"):
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return setting


def checkpoint_precision(checkpoint: dict, device: torch.device) -> str:
    """The precision a checkpoint's run evaluated in, resolved for `device` as training resolves it, so
    that its own test predictions are reproduced: 'bf16' or 'fp32'."""
    return resolve_precision(checkpoint["config"].get("precision", "fp32"), device)
