"""Batched augmentation (data.augment): what each mode may and may not do to a sample, and the mode each
modality gets by default."""
import itertools

import pytest
import torch
from toy import write_toy_folder

from discomkd.data.augment import AUGMENTATIONS, MAX_SHIFT_FRACTION, SCALE_RANGE, augment
from discomkd.data.folder import load_data_folder
from discomkd.training.config import Config
from discomkd.training.setup import build_sources

SAMPLES = 400  # each of the 8 dihedral variants has probability >= 1/32: all appear with near certainty


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dihedral_variants(image: torch.Tensor) -> list[torch.Tensor]:
    """The 8 rotations/reflections of a square (C, H, W) image."""
    return [variant.rot90(k, (-2, -1)) for variant in (image, image.flip(-1)) for k in range(4)]


def flip_variants(image: torch.Tensor) -> list[torch.Tensor]:
    """Identity, horizontal flip, vertical flip, and both (= rotation by 180 degrees)."""
    return [image, image.flip(-1), image.flip(-2), image.flip(-1).flip(-2)]


def variant_counts(outputs: torch.Tensor, variants: list[torch.Tensor]) -> list[int]:
    """How many outputs equal each variant; fails on an output that is none of them."""
    counts = [0] * len(variants)
    for i, out in enumerate(outputs):
        matches = [j for j, v in enumerate(variants) if v.shape == out.shape and torch.equal(v, out)]
        assert len(matches) == 1, f"output {i} is not exactly one of the allowed variants"
        counts[matches[0]] += 1
    return counts


@pytest.mark.parametrize("mode, shape", [("flip", (2, 5, 5)), ("flip+rot90", (2, 5, 5)), ("flip+rot90", (1, 3, 6)),
                                         ("shift", (3, 20)), ("scale", (3, 20)), ("shift+scale", (3, 20))])
def test_each_sample_stays_in_its_place_with_its_own_values(mode, shape):
    # sample i is the constant 1.5 ** i: moving a value to another sample changes it by a factor of at
    # least 1.5, outside the scaling range, so any mixing or reordering of the batch shows
    batch = 64
    values = 1.5 ** torch.arange(batch, dtype=torch.float64)
    constant = values.float().view(-1, *([1] * len(shape))).expand(batch, *shape)
    out = augment(constant.clone(), mode, generator(1))
    assert out.shape == constant.shape
    scale = out.flatten(1) / constant.flatten(1)  # 1 unless scaled; one factor per sample
    assert torch.allclose(scale, scale[:, :1].expand_as(scale))
    low, high = SCALE_RANGE if "scale" in mode else (1.0, 1.0)
    assert ((scale >= low - 1e-6) & (scale <= high + 1e-6)).all()
    if "scale" not in mode:
        # distinct values: each output sample holds exactly its input sample's multiset of values
        x = torch.randn(batch, *shape, generator=generator(2))
        out = augment(x, mode, generator(3))
        for i in range(batch):
            assert torch.equal(out[i].flatten().sort().values, x[i].flatten().sort().values), i


@pytest.mark.parametrize("shape", [(4, 2, 6, 6), (4, 3, 16), (4, 7)])
def test_none_returns_the_input_bit_identical(shape):
    x = torch.randn(*shape)
    before = x.clone()
    out = augment(x, "none", generator())
    assert out is x
    assert torch.equal(out, before)


@pytest.mark.parametrize("mode", ["flip", "flip+rot90", "shift", "scale"])
def test_vectors_cannot_be_augmented(mode):
    assert AUGMENTATIONS[2] == ("none",)
    with pytest.raises(AssertionError, match="rank 2"):
        augment(torch.randn(4, 7), mode, generator())


def test_flip_rot90_produces_all_eight_dihedral_variants_of_a_square_image():
    image = torch.arange(2 * 4 * 4, dtype=torch.float32).view(2, 4, 4)  # no symmetry: 8 distinct variants
    variants = dihedral_variants(image)
    assert len({tuple(v.flatten().tolist()) for v in variants}) == 8
    counts = variant_counts(augment(image.expand(SAMPLES, 2, 4, 4).clone(), "flip+rot90", generator()), variants)
    assert all(c > 0 for c in counts), counts
    # half the samples are left alone, and some transformed ones land on the identity again
    assert counts[0] > SAMPLES / 2 * 0.8, counts


def documented_probabilities(image: torch.Tensor, variants: list[torch.Tensor]) -> list[float]:
    """Probability of each variant under augment's docstring: transformed with p 0.5, then a horizontal
    flip (p 0.5), a vertical flip (p 0.5) and with p 0.5 a rotation by k * 90 degrees, k uniform in 0..3
    (for a non-square image k uniform in {0, 2}, so that the shape is kept)."""
    square = image.shape[-1] == image.shape[-2]
    probabilities = [0.0] * len(variants)
    outcomes = [(0.5, image)]  # not transformed
    for horizontal, vertical, rotated in itertools.product((False, True), repeat=3):
        flipped = image.flip(-1) if horizontal else image
        flipped = flipped.flip(-2) if vertical else flipped
        turns = [(0.25, k if square else k % 2 * 2) for k in range(4)] if rotated else [(1.0, 0)]
        outcomes += [(0.5 * 0.125 * p, flipped.rot90(k, (-2, -1))) for p, k in turns]
    for p, outcome in outcomes:
        probabilities[next(j for j, v in enumerate(variants) if torch.equal(v, outcome))] += p
    return probabilities


@pytest.mark.parametrize("height, width, variants_of", [(3, 3, dihedral_variants), (2, 3, flip_variants)])
def test_flip_rot90_variant_frequencies_follow_the_documented_probabilities(height, width, variants_of):
    samples = 4000
    image = torch.arange(height * width, dtype=torch.float32).view(1, height, width)
    variants = variants_of(image)
    expected = documented_probabilities(image, variants)
    assert sum(expected) == pytest.approx(1.0)
    out = augment(image.expand(samples, 1, height, width).clone(), "flip+rot90", generator(8))
    counts = variant_counts(out, variants)
    for count, p in zip(counts, expected):
        # 4 binomial standard deviations: a wrong probability (e.g. one rotation missing) lands outside
        assert abs(count - samples * p) < 4 * (samples * p * (1 - p)) ** 0.5, (counts, expected)


def test_flip_never_rotates_by_90_degrees():
    image = torch.arange(16, dtype=torch.float32).view(1, 4, 4)
    variants = dihedral_variants(image)
    counts = variant_counts(augment(image.expand(SAMPLES, 1, 4, 4).clone(), "flip", generator()), variants)
    # variants 0 and 2 are rotations by 0 and 180 degrees, 4 and 6 the two flips
    assert [c > 0 for c in counts] == [True, False, True, False, True, False, True, False], counts


@pytest.mark.parametrize("mode", ["flip", "flip+rot90"])
def test_non_square_images_keep_their_shape_and_only_flip_or_turn_half_way(mode):
    image = torch.arange(15, dtype=torch.float32).view(1, 3, 5)
    out = augment(image.expand(SAMPLES, 1, 3, 5).clone(), mode, generator())
    assert out.shape == (SAMPLES, 1, 3, 5)
    counts = variant_counts(out, flip_variants(image))
    assert all(c > 0 for c in counts), counts


def test_shift_rolls_each_sequence_by_a_bounded_amount():
    length = 50
    x = torch.randn(SAMPLES, 2, length, generator=generator(5))
    out = augment(x, "shift", generator())
    max_shift = int(length * MAX_SHIFT_FRACTION)
    shifts = []
    for i in range(SAMPLES):
        # both channels are rolled by the same amount
        matches = [s for s in range(-max_shift, max_shift + 1) if torch.equal(out[i], x[i].roll(s, dims=-1))]
        assert len(matches) == 1, i
        shifts.append(matches[0])
    assert set(shifts) == set(range(-max_shift, max_shift + 1))


def test_scale_multiplies_each_sequence_by_one_factor_in_range():
    x = torch.rand(SAMPLES, 3, 10, generator=generator(6)) + 0.5  # away from 0 for the ratio
    out = augment(x, "scale", generator())
    factors = out / x  # (B, C, L)
    per_sample = factors[:, :1, :1]
    assert torch.allclose(factors, per_sample.expand_as(factors))
    low, high = SCALE_RANGE
    assert per_sample.min() >= low - 1e-6 and per_sample.max() <= high + 1e-6
    # drawn across the range, not a constant
    assert per_sample.min() < low + 0.05 and per_sample.max() > high - 0.05


@pytest.mark.parametrize("mode, shape", [("flip+rot90", (32, 1, 6, 6)), ("shift+scale", (32, 2, 30))])
def test_a_seeded_generator_repeats_the_augmentation(mode, shape):
    x = torch.randn(*shape, generator=generator(7))
    first = augment(x, mode, generator(11))
    again = augment(x, mode, generator(11))
    other = augment(x, mode, generator(12))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_spectro_images_are_not_augmented_by_default(tmp_path):
    folder = write_toy_folder(tmp_path / "data", ("SPECTRO", "IMG"), n=30, shapes=((1, 12, 12), (1, 12, 12)))
    data = load_data_folder(folder, "SPECTRO", "IMG")
    *_, augmentations = build_sources(Config(data_on_device="no"), data, torch.device("cpu"))
    assert augmentations == {0: "none", 1: "flip+rot90"}
    *_, augmentations = build_sources(Config(data_on_device="no", augment_first="flip"), data, torch.device("cpu"))
    assert augmentations == {0: "flip", 1: "flip+rot90"}  # an explicit choice still applies
