"""Batched augmentation on the training device: flips, 90-degree rotations, shifts and scaling, drawn
per sample from the trainer's generator."""
from __future__ import annotations

import torch

AUGMENTATIONS = {
    4: ("none", "flip", "flip+rot90"),  # images (B, C, H, W)
    3: ("none", "shift", "scale", "shift+scale"),  # sequences (B, C, L)
    2: ("none",),  # vectors (B, F)
}
DEFAULT_AUGMENTATION = {4: "flip+rot90", 3: "none", 2: "none"}
# Sequences: circular shift by up to this fraction of the length, amplitude scaled in [0.8, 1.2];
# mild settings chosen so that a shifted/scaled series keeps its class in typical sensor data.
MAX_SHIFT_FRACTION = 0.1
SCALE_RANGE = (0.8, 1.2)


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)


def augment(x: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random augmentation of a batch, drawn independently per sample, as tensor operations.

    `flip` and `flip+rot90` follow the published code's image transform: with probability 0.5 a
    sample is transformed, by a horizontal flip (p 0.5), a vertical flip (p 0.5) and, for
    `flip+rot90`, with probability 0.5 a rotation by a random multiple of 90 degrees (180 only
    when height != width, so the shape is kept). `none` returns `x` itself.
    """
    if mode == "none":
        return x
    batch, device = x.shape[0], x.device

    def uniform(*shape):
        return torch.rand(*shape, generator=generator, device=device)

    if x.dim() == 4:
        transformed = uniform(batch) < 0.5
        x = _where(transformed & (uniform(batch) < 0.5), x.flip(-1), x)
        x = _where(transformed & (uniform(batch) < 0.5), x.flip(-2), x)
        if mode == "flip+rot90":
            rotated = transformed & (uniform(batch) < 0.5)
            square = x.shape[-1] == x.shape[-2]
            quarter_turns = torch.randint(0, 4, (batch,), generator=generator, device=device)
            if not square:
                quarter_turns = quarter_turns % 2 * 2  # 0 or 180 degrees
            quarter_turns = torch.where(rotated, quarter_turns, torch.zeros_like(quarter_turns))
            x = _where(quarter_turns == 2, x.flip(-1).flip(-2), x)
            if square:
                x = _where(quarter_turns == 1, x.rot90(1, (-2, -1)), x)
                x = _where(quarter_turns == 3, x.rot90(-1, (-2, -1)), x)
        return x
    if x.dim() == 3:
        length = x.shape[-1]
        if "shift" in mode:
            max_shift = max(1, int(length * MAX_SHIFT_FRACTION))
            shift = torch.randint(-max_shift, max_shift + 1, (batch, 1, 1), generator=generator, device=device)
            time = (torch.arange(length, device=device).view(1, 1, -1) - shift) % length  # (B, 1, L)
            x = torch.gather(x, 2, time.expand_as(x))
        if "scale" in mode:
            low, high = SCALE_RANGE
            x = x * (low + (high - low) * uniform(batch, 1, 1))
        return x
    raise AssertionError(f"augmentation {mode!r} is not defined for inputs of rank {x.dim()}")


def default_augmentation(prefix: str, rank: int) -> str:
    """Augmentation for `--augment-* auto` of batches of `rank` (sample rank + 1); the authors never
    augment the SPECTRO (spectrogram) prefix: flipping time or frequency changes what it shows."""
    return "none" if prefix.upper() == "SPECTRO" else DEFAULT_AUGMENTATION[rank]
