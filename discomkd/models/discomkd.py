"""The DisCoM-KD model: encoders, the three feature parts, the heads and the losses.

This module knows only torch: no files, command lines or metrics (the rest of the package has those;
`model_pytorch.py` at the top of a checkout hands this module's names on under the original layout's name).

For each modality m a `ModalityBranch` holds everything single-modality inference needs:
an invariant encoder and a specific encoder of the same kind reading the same input (512-d each),
a projection head turning the invariant encoder's output into the 256-d *invariant* part, and a
task classifier on concat(invariant, informative). The specific encoder's output is split into
the 256-d *informative* part (first half) and the 256-d *irrelevant* part (second half).
`DisCoMKD` joins two branches with the heads that only training needs: the auxiliary classifier
shared by both modalities, the two modality classifiers, and the modality discriminator behind a
gradient reversal layer.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_DIM = 512  # each encoder's output: ResNet-18's pooled feature size, as in the paper
PART_DIM = FEATURE_DIM // 2  # invariant, informative and irrelevant parts are 256-d each
FIRST_MODALITY_LABEL = 1  # the published code's modality targets: first modality 1, second 0
SECOND_MODALITY_LABEL = 0


# ----------------------------------------------------------------------------- gradient reversal
class GradientReverseFunction(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by -coefficient backward (Ganin et al.).

    The coefficient is a Python number or a 0-d tensor; a tensor can change from step to step
    (a schedule) without a compiled step being traced again.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, coefficient: float | torch.Tensor) -> torch.Tensor:
        ctx.coefficient = coefficient
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output.neg() * ctx.coefficient, None


def gradient_reverse(x: torch.Tensor, coefficient: float | torch.Tensor = 1.0) -> torch.Tensor:
    return GradientReverseFunction.apply(x, coefficient)


def _dann_schedule(coefficient: float, progress: torch.Tensor, warmup: float) -> torch.Tensor:
    # Ganin & Lempitsky 2015, sec. 5.2: gamma = 10, chosen there and kept by every DANN code since
    return coefficient * (2 / (1 + torch.exp(-10 * progress)) - 1)


def _linear_schedule(coefficient: float, progress: torch.Tensor, warmup: float) -> torch.Tensor:
    return coefficient * torch.clamp(progress / warmup, max=1.0)


# The reversal coefficient over training, from the training progress p in [0, 1] (a 0-d tensor):
# constant (the paper), DANN's 2 / (1 + exp(-10 p)) - 1 ramp, or a linear warm-up over the first
# `warmup` fraction of training. `constant` returns the Python number itself, so the paper's
# setting runs exactly the arithmetic it always ran.
GRL_SCHEDULES = {
    "constant": lambda coefficient, progress, warmup: coefficient,
    "dann": _dann_schedule,
    "linear": _linear_schedule,
}


def grl_coefficient_at(schedule: str, coefficient: float, progress: torch.Tensor | None,
                       warmup: float = 1.0) -> float | torch.Tensor:
    """The reversal coefficient of `schedule` at training progress `progress` (0-d tensor in [0, 1]).

    Returns `coefficient` for `constant`, else a 0-d tensor on progress's device.
    """
    assert schedule in GRL_SCHEDULES, f"unknown schedule {schedule!r}, expected one of {tuple(GRL_SCHEDULES)}"
    assert schedule == "constant" or progress is not None, f"the {schedule} schedule needs the training progress"
    return GRL_SCHEDULES[schedule](coefficient, progress, warmup)


# ----------------------------------------------------------------------------- encoders
class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions) for 1-D or 2-D inputs."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, spatial_dims: int):
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv1d
        norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm1d
        self.conv1 = conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(out_channels)
        self.conv2 = conv(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                conv(in_channels, out_channels, 1, stride=stride, bias=False), norm(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class ResNet18Encoder(nn.Module):
    """ResNet-18 without its fc layer, random init, for (B, C, H, W) images or (B, C, L) sequences.

    The torchvision architecture: 7x7/2 stem convolution adapted to C input channels, 3x3/2
    max-pool, four stages of two basic blocks (64-128-256-512 channels), global average pooling.
    With `spatial_dims=1` every layer is its 1-D counterpart (the sequence encoder).

    Shape: (B, C, *spatial) -> (B, 512)
    """

    def __init__(self, in_channels: int, spatial_dims: int = 2):
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv1d
        norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm1d
        pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool1d
        self.stem = nn.Sequential(
            conv(in_channels, 64, 7, stride=2, padding=3, bias=False), norm(64), nn.ReLU(inplace=True),
            pool(3, stride=2, padding=1))
        stages, channels = [], 64
        for out_channels, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages += [BasicBlock(channels, out_channels, stride, spatial_dims),
                       BasicBlock(out_channels, out_channels, 1, spatial_dims)]
            channels = out_channels
        self.stages = nn.Sequential(*stages)
        # Where the published code starts: torchvision's initialisation (Kaiming normal, fan-out) for every
        # convolution but the stem's. That code replaces resnet18's conv1 by a new C-channel convolution after
        # torchvision has initialised the network, so its stem keeps PyTorch's default Conv init
        # (kaiming_uniform_ with a=sqrt(5): std 1/sqrt(3 * fan_in), fan_in = C * 49 for the 7x7 kernel: 0.083 for
        # 1 channel, 0.023 for 13). The 1-D stem, which that code lacks, follows the same rule.
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module is not self.stem[0]:
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))  # (B, 512, *spatial / 32)
        return x.flatten(2).mean(dim=2)  # global average pooling: (B, 512), any batch size


class LeNetEncoder(nn.Module):
    """LeNet-style encoder the authors use for small digit images (prefix MNIST).

    5x5 conv to 6 channels (padding 2), 2x2 max-pool, 5x5 conv to 16 channels, 2x2 max-pool,
    then a 512-unit fully connected layer with ReLU.

    Shape: (B, C, H, W) -> (B, 512)
    """

    def __init__(self, in_channels: int, height: int, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        flat = 16 * ((height // 2 - 4) // 2) * ((width // 2 - 4) // 2)
        self.fc = nn.Linear(flat, FEATURE_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 16, H', W')
        return F.relu(self.fc(x.flatten(1)))


class MLPEncoder(nn.Module):
    """Encoder for feature vectors: two fully connected blocks, 1024 hidden units then 512.

    1024 hidden units and dropout 0.5 follow the authors' vector encoder; the output block ends in
    BatchNorm + ReLU like the image encoders, so all feature parts are non-negative.

    Shape: (B, *dims) -> (B, 512), inputs of higher rank are flattened.
    """

    def __init__(self, in_features: int, hidden: int = 1024, dropout: float = 0.5):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, FEATURE_DIM), nn.BatchNorm1d(FEATURE_DIM), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class EncoderSpec(NamedTuple):
    """What the data checks and the models need to know of an encoder kind."""

    rank: int | None  # per-sample input rank it reads: (C, H, W) = 3, (C, L) = 2, (F,) = 1; None = any
    min_size: int  # smallest spatial size (height/width or length) it accepts
    build: Callable[[tuple[int, ...]], nn.Module]  # input_shape (without the batch dimension) -> encoder
    default_for_rank: bool  # chosen by `auto` for samples of its rank


# The one table of encoder kinds. Minimum sizes: below 8 pixels ResNet's stem and max-pool leave a
# single position before the second stage; LeNet's 5x5 conv (padded), pool, 5x5 conv (valid), pool
# must leave at least one position.
ENCODERS = {
    "resnet18": EncoderSpec(3, 8, lambda shape: ResNet18Encoder(shape[0], spatial_dims=2), True),
    "resnet1d": EncoderSpec(2, 8, lambda shape: ResNet18Encoder(shape[0], spatial_dims=1), True),
    "lenet": EncoderSpec(3, 12, lambda shape: LeNetEncoder(*shape), False),
    "mlp": EncoderSpec(None, 1, lambda shape: MLPEncoder(math.prod(shape)), True),
}
VECTOR_ENCODER = "mlp"  # the default for (F,) vectors, and the only kind that reads any rank


def default_encoder_for(sample_shape: tuple[int, ...]) -> str:
    """The encoder `auto` picks for samples of `sample_shape` (by rank)."""
    for kind, spec in ENCODERS.items():
        if spec.default_for_rank and spec.rank == len(sample_shape):
            return kind
    return VECTOR_ENCODER


def build_encoder(kind: str, input_shape: tuple[int, ...]) -> nn.Module:
    """Builds one encoder of `kind` for samples of `input_shape` (without the batch dimension)."""
    assert kind in ENCODERS, f"unknown encoder {kind!r}, expected one of {tuple(ENCODERS)}"
    rank = ENCODERS[kind].rank
    assert rank is None or len(input_shape) == rank, f"{kind} reads rank-{rank} samples, got {input_shape}"
    return ENCODERS[kind].build(tuple(input_shape))


# ----------------------------------------------------------------------------- model
class ProjectionHead(nn.Module):
    """Linear(512 -> 256) + BatchNorm1d + ReLU: the invariant encoder's output -> invariant part."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURE_DIM, PART_DIM), nn.BatchNorm1d(PART_DIM), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Features(NamedTuple):
    """One modality's disentangled representation and task logits. Shapes: (B, 256) x 3, (B, K)."""

    invariant: torch.Tensor
    informative: torch.Tensor
    irrelevant: torch.Tensor
    logits: torch.Tensor


# What the task classifier reads: the paper's concat(invariant, informative), or the invariant part
# alone (the ablation "invariant part only").
TASK_FEATURES = ("invariant+informative", "invariant")


class ModalityBranch(nn.Module):
    """Everything modality m needs at test time: its two encoders, projection and task classifier."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, encoder: str,
                 task_features: str = TASK_FEATURES[0]):
        super().__init__()
        assert task_features in TASK_FEATURES, f"task_features {task_features!r}, expected one of {TASK_FEATURES}"
        self.input_shape = tuple(input_shape)
        self.encoder = encoder
        self.task_features = task_features
        self.invariant_encoder = build_encoder(encoder, self.input_shape)
        self.specific_encoder = build_encoder(encoder, self.input_shape)
        self.projection = ProjectionHead()
        self.task_classifier = nn.Linear(PART_DIM * len(task_features.split("+")), num_classes)

    def forward(self, x: torch.Tensor) -> Features:
        invariant = self.projection(self.invariant_encoder(x))  # (B, 256)
        specific = self.specific_encoder(x)  # (B, 512)
        informative, irrelevant = specific[:, :PART_DIM], specific[:, PART_DIM:]  # (B, 256) each
        read = torch.cat([invariant, informative], dim=1) if self.task_features == TASK_FEATURES[0] else invariant
        logits = self.task_classifier(read)  # (B, K)
        return Features(invariant, informative, irrelevant, logits)


class BranchOutput(NamedTuple):
    """Everything the losses read for one modality's batch, named after the paper's terms."""

    invariant: torch.Tensor  # (B, 256)
    informative: torch.Tensor  # (B, 256)
    irrelevant: torch.Tensor  # (B, 256)
    logits: torch.Tensor  # (B, K) task classifier on concat(invariant, informative)
    aux_invariant: torch.Tensor  # (B, K) shared auxiliary classifier on the invariant part
    aux_informative: torch.Tensor  # (B, K) shared auxiliary classifier on the informative part
    modality_informative: torch.Tensor  # (B, 2) modality classifier on the informative part
    modality_irrelevant: torch.Tensor  # (B, 2) modality classifier on the irrelevant part
    discriminator: torch.Tensor  # (B, 2) modality discriminator on gradient-reversed invariant part


# The modality discriminator behind the reversal layer: the paper's linear one, or one hidden layer
# (a linear discriminator can be fooled while the two modalities stay separable by a curve).
DISCRIMINATORS = {
    "linear": lambda: nn.Linear(PART_DIM, 2),
    "mlp": lambda: nn.Sequential(nn.Linear(PART_DIM, PART_DIM), nn.ReLU(), nn.Linear(PART_DIM, 2)),
}


class DisCoMKD(nn.Module):
    """Two modality branches plus the heads shared by both modalities during training.

    Args:
        input_shapes: per-sample shape of the first and second modality, e.g. (13, 64, 64), (2, 64, 64).
        num_classes: number of task classes K.
        encoders: encoder kind of each modality, keys of `ENCODERS`.
        discriminator: kind of the modality discriminator, a key of `DISCRIMINATORS`.
        task_features: what each task classifier reads, one of `TASK_FEATURES`.
    """

    def __init__(self, input_shapes, num_classes: int, encoders=("resnet18", "resnet18"),
                 discriminator: str = "linear", task_features: str = TASK_FEATURES[0]):
        super().__init__()
        self.branches = nn.ModuleList(
            [ModalityBranch(shape, num_classes, kind, task_features) for shape, kind in zip(input_shapes, encoders)])
        self.aux_classifier = nn.Linear(PART_DIM, num_classes)
        self.informative_modality_classifier = nn.Linear(PART_DIM, 2)
        self.irrelevant_modality_classifier = nn.Linear(PART_DIM, 2)
        assert discriminator in DISCRIMINATORS, \
            f"unknown discriminator {discriminator!r}, expected one of {tuple(DISCRIMINATORS)}"
        self.discriminator = DISCRIMINATORS[discriminator]()

    def branch_output(self, x: torch.Tensor, modality: int,
                      grl_coefficient: float | torch.Tensor = 1.0) -> BranchOutput:
        features = self.branches[modality](x)
        return BranchOutput(
            *features,
            aux_invariant=self.aux_classifier(features.invariant),
            aux_informative=self.aux_classifier(features.informative),
            modality_informative=self.informative_modality_classifier(features.informative),
            modality_irrelevant=self.irrelevant_modality_classifier(features.irrelevant),
            discriminator=self.discriminator(gradient_reverse(features.invariant, grl_coefficient)))

    def forward(self, x_first: torch.Tensor, x_second: torch.Tensor,
                grl_coefficient: float | torch.Tensor = 1.0) -> tuple[BranchOutput, BranchOutput]:
        return (self.branch_output(x_first, 0, grl_coefficient),
                self.branch_output(x_second, 1, grl_coefficient))


# ----------------------------------------------------------------------------- losses
LOSS_TERMS = ("cl", "aux", "mod", "adv", "perp")


def _modality_targets(first_logits: torch.Tensor, second_logits: torch.Tensor, legacy: bool) -> torch.Tensor:
    """Targets for (first rows ; second rows) of a modality classifier.

    Integer classes (first modality 1, second 0), or with `legacy` the published code's
    `ones_like`/`zeros_like` of the (N, 2) logits, which cross-entropy reads as the soft targets
    [1, 1] and [0, 0]: the second modality then contributes nothing and the first is pushed
    towards a uniform output.
    """
    if legacy:
        return torch.cat([torch.ones_like(first_logits), torch.zeros_like(second_logits)])
    device = first_logits.device
    return torch.cat([
        torch.full((first_logits.shape[0],), FIRST_MODALITY_LABEL, dtype=torch.int64, device=device),
        torch.full((second_logits.shape[0],), SECOND_MODALITY_LABEL, dtype=torch.int64, device=device)])


def _mean_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(dim=1).mean()


def discomkd_losses(first: BranchOutput, second: BranchOutput, labels_first: torch.Tensor,
                    labels_second: torch.Tensor, legacy_modality_targets: bool = False) -> dict[str, torch.Tensor]:
    """The five unweighted DisCoM-KD loss terms for one batch of each modality.

    As in the published code, each cross-entropy is one mean over the rows of both modalities
    (the two batches concatenated), so a modality's share follows its number of rows.

    Returns:
        {"cl": L_cl, "aux": L_aux, "mod": L_mod, "adv": L_adv, "perp": L_perp}, scalar tensors.
    """
    labels = torch.cat([labels_first, labels_second])  # (B1 + B2,)

    def both(field: str) -> torch.Tensor:
        return torch.cat([getattr(first, field), getattr(second, field)])  # (B1 + B2, ...)

    cl = F.cross_entropy(both("logits"), labels)
    aux = F.cross_entropy(both("aux_invariant"), labels) + F.cross_entropy(both("aux_informative"), labels)
    # each modality's informative rows then its irrelevant rows, as the published code orders them
    mod_first = torch.cat([first.modality_informative, first.modality_irrelevant])
    mod_second = torch.cat([second.modality_informative, second.modality_irrelevant])
    mod = F.cross_entropy(torch.cat([mod_first, mod_second]),
                          _modality_targets(mod_first, mod_second, legacy_modality_targets))
    adv = F.cross_entropy(both("discriminator"),
                          _modality_targets(first.discriminator, second.discriminator, legacy_modality_targets))
    perp = _mean_cosine(both("informative"), both("irrelevant")) + _mean_cosine(both("informative"), both("invariant"))
    return {"cl": cl, "aux": aux, "mod": mod, "adv": adv, "perp": perp}
