"""Batched augmentation on the training device: flips, 90-degree rotations, shifts and scaling, drawn
per sample from the setup's generator."""
from __future__ import annotations

import functools

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
# An image's draws, in the order they are taken: transformed?, horizontal flip?, vertical flip?, rotated?
# (each with probability 0.5), read as the bits of a code (bit k has value 2**k); `flip` takes the first three.
_DRAW_BITS = 4
_TURNS = 4  # a rotation by k quarter turns, k uniform in 0..3, is drawn after the bits (flip+rot90 only)


def augment(x: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random augmentation of a batch, drawn independently per sample, as tensor operations.

    `flip` and `flip+rot90` follow the published code's image transform: with probability 0.5 a
    sample is transformed, by a horizontal flip (p 0.5), a vertical flip (p 0.5) and, for
    `flip+rot90`, with probability 0.5 a rotation by a random multiple of 90 degrees (180 only
    when height != width, so the shape is kept). `none` returns `x` itself.

    An image batch takes a fixed number of operations whatever its size (3 random draws, 4 to build
    each sample's code, 2 gathers): each sample's outcome is a code into a table of pixel permutations
    (`_permutations`), applied by one gather. The draws are those of one call per decision, in the
    same order, so on the CPU the outcome is the same as drawing them one by one.
    """
    if mode == "none":
        return x
    batch, device = x.shape[0], x.device

    if x.dim() == 4:
        height, width = x.shape[-2:]
        rotations = mode == "flip+rot90"
        draws = _DRAW_BITS if rotations else _DRAW_BITS - 1
        # (draws, B) uniform numbers, row k the k-th decision: the random stream of `draws` calls of (B,)
        bits = torch.rand(draws, batch, generator=generator, device=device) < 0.5
        code = (bits * _bit_values(draws, device)).sum(0)  # (B,) in 0 .. 2**draws - 1
        if rotations:
            turns = torch.randint(0, _TURNS, (batch,), generator=generator, device=device)
            code = code.add_(turns, alpha=2 ** _DRAW_BITS)  # (B,) in 0 .. 2**4 * 4 - 1
        outcome, pixels = _permutations(height, width, draws, device)
        permutation = pixels.index_select(0, outcome.index_select(0, code))  # (B, H*W) source pixel of each pixel
        flat = x.reshape(batch, x.shape[1], height * width)  # (B, C, H*W)
        return flat.gather(2, permutation.unsqueeze(1).expand_as(flat)).view_as(x)
    if x.dim() == 3:
        length = x.shape[-1]
        if "shift" in mode:
            max_shift = max(1, int(length * MAX_SHIFT_FRACTION))
            shift = torch.randint(-max_shift, max_shift + 1, (batch, 1, 1), generator=generator, device=device)
            time = (torch.arange(length, device=device).view(1, 1, -1) - shift) % length  # (B, 1, L)
            x = torch.gather(x, 2, time.expand_as(x))
        if "scale" in mode:
            low, high = SCALE_RANGE
            x = x * torch.rand(batch, 1, 1, generator=generator, device=device).mul_(high - low).add_(low)
        return x
    raise AssertionError(f"augmentation {mode!r} is not defined for inputs of rank {x.dim()}")


@functools.lru_cache(maxsize=None)
def _bit_values(draws: int, device: torch.device) -> torch.Tensor:
    return (2 ** torch.arange(draws)).view(draws, 1).to(device)  # (draws, 1)


@functools.lru_cache(maxsize=None)
def _permutations(height: int, width: int, draws: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The image transforms as pixel permutations, built once per image size (and device).

    Returns:
        outcome: (2**draws,) or (2**draws * 4,) int64, the transform a code stands for (an index into `pixels`);
        pixels: (T, H*W) int64, row t the source pixel of each output pixel under transform t: the distinct
            outcomes of the flips and rotations that the codes draw (8 for a square image, 4 otherwise).
    """
    grid = torch.arange(height * width).view(height, width)  # each pixel's own index, moved like the pixels
    square = height == width
    transformed_grids, outcome = [], []
    for code in range(2 ** draws * (_TURNS if draws == _DRAW_BITS else 1)):
        transformed, horizontal, vertical, rotated = [bool(code >> k & 1) for k in range(_DRAW_BITS)]
        turns = code >> _DRAW_BITS if transformed and rotated else 0
        turns = turns if square else turns % 2 * 2  # 0 or 180 degrees when the shape must be kept
        moved = grid
        if transformed:
            moved = moved.flip(-1) if horizontal else moved
            moved = moved.flip(-2) if vertical else moved
        if turns == 2:
            moved = moved.flip(-1).flip(-2)
        elif turns:
            moved = moved.rot90(1 if turns == 1 else -1, (-2, -1))
        moved = moved.flatten()
        index = next((i for i, known in enumerate(transformed_grids) if torch.equal(known, moved)), None)
        if index is None:
            index = len(transformed_grids)
            transformed_grids.append(moved)
        outcome.append(index)
    return torch.tensor(outcome).to(device), torch.stack(transformed_grids).to(device)


def default_augmentation(prefix: str, rank: int) -> str:
    """Augmentation for `--augment-* auto` of batches of `rank` (sample rank + 1); the authors never
    augment the SPECTRO (spectrogram) prefix: flipping time or frequency changes what it shows."""
    return "none" if prefix.upper() == "SPECTRO" else DEFAULT_AUGMENTATION[rank]
