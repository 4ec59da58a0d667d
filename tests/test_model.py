"""Encoders, branches and the full model: output shapes, parameter counts, initialisation, the reversal layer."""
import math

import pytest
import torch

from discomkd.models.discomkd import (
    ENCODERS,
    FEATURE_DIM,
    PART_DIM,
    DisCoMKD,
    ModalityBranch,
    build_encoder,
    gradient_reverse,
)

# torchvision's resnet18 has 11,689,512 parameters; without its fc layer (512 * 1000 + 1000) it has
# 11,176,512, of which the stem convolution holds 64 * 3 * 7 * 7 for 3 input channels.
RESNET18_NO_FC_PARAMETERS = 11_689_512 - (512 * 1000 + 1000)
STEM_WEIGHTS_PER_CHANNEL = 64 * 7 * 7

# encoder kind, per-sample shape: one case for each input rank the project reads
ENCODER_CASES = [
    ("resnet18", (3, 16, 16)),
    ("resnet1d", (4, 32)),
    ("mlp", (6,)),
    ("lenet", (1, 28, 28)),
]


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("kind, shape", ENCODER_CASES)
def test_encoder_output_shape_and_batch_of_one_in_eval(kind, shape):
    torch.manual_seed(0)
    encoder = build_encoder(kind, shape).eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        batch = encoder(x)
        single = encoder(x[:1])
    assert batch.shape == (2, FEATURE_DIM)
    assert single.shape == (1, FEATURE_DIM)
    # in eval mode a sample's features must not depend on the rest of its batch
    torch.testing.assert_close(single[0], batch[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind, shape", [
    ("lenet", (1, 28, 28)),  # no batch normalisation at all
    ("resnet18", (3, 64, 64)),  # 2x2 positions left after the last stage: batch statistics exist for one sample
    ("resnet1d", (2, 64)),  # 2 positions left after the last stage
])
def test_encoder_trains_on_a_batch_of_one_where_batch_norm_allows(kind, shape):
    encoder = build_encoder(kind, shape).train()
    out = encoder(torch.randn(1, *shape))
    assert out.shape == (1, FEATURE_DIM)
    assert torch.isfinite(out).all()


def test_mlp_encoder_refuses_a_training_batch_of_one():
    # why the data checks and the config ask for at least 2 training rows per batch
    encoder = build_encoder("mlp", (6,)).train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        encoder(torch.randn(1, 6))


@pytest.mark.parametrize("channels", [1, 3, 13])
def test_resnet18_parameter_count_matches_torchvision_without_fc(channels):
    encoder = build_encoder("resnet18", (channels, 32, 32))
    expected = RESNET18_NO_FC_PARAMETERS + STEM_WEIGHTS_PER_CHANNEL * (channels - 3)
    assert count_parameters(encoder) == expected
    if channels == 3:
        assert count_parameters(encoder) == 11_176_512


def default_conv_std(weight: torch.Tensor) -> float:
    """The std PyTorch's default Conv init gives `weight`: kaiming_uniform_ with a = sqrt(5), i.e. a gain of
    sqrt(2 / (1 + a**2)) = sqrt(1/3) over sqrt(fan_in), fan_in = in_channels * kernel size."""
    fan_in = weight[0].numel()
    return math.sqrt(2 / (1 + 5)) / math.sqrt(fan_in)


@pytest.mark.parametrize("kind, spatial", [("resnet18", (32, 32)), ("resnet1d", (64,))])
@pytest.mark.parametrize("channels", [1, 2, 13])
def test_the_resnet_stem_starts_from_the_default_conv_init_as_the_published_code(kind, spatial, channels):
    """The published code puts a new C-channel conv1 into torchvision's resnet18 after its initialisation:
    the stem keeps PyTorch's default init (std 0.083 / 0.058 / 0.023 for 1 / 2 / 13 channels, 7x7), every
    other convolution torchvision's Kaiming normal fan-out (std sqrt(2 / fan_out))."""
    torch.manual_seed(0)
    encoder = build_encoder(kind, (channels, *spatial))
    stem = encoder.stem[0].weight
    expected = default_conv_std(stem)
    assert stem.std().item() == pytest.approx(expected, rel=0.06)
    assert stem.abs().max().item() <= math.sqrt(3) * expected  # uniform within +-1/sqrt(fan_in)
    others = [m.weight for m in encoder.stages.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d))]
    assert len(others) == 19  # 8 blocks of two convolutions, 3 downsampling ones
    for weight in others:
        fan_out = weight.shape[0] * weight[0, 0].numel()
        assert weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.06)


def test_resnet1d_has_the_resnet18_layout_with_1d_kernels():
    # every k x k kernel becomes a length-k kernel; batch norm parameters are unchanged
    encoder_2d = build_encoder("resnet18", (3, 32, 32))
    encoder_1d = build_encoder("resnet1d", (3, 64))
    for (name_2d, p_2d), (name_1d, p_1d) in zip(encoder_2d.named_parameters(), encoder_1d.named_parameters()):
        assert name_2d == name_1d
        if p_2d.dim() == 4:
            assert p_1d.shape == p_2d.shape[:3]
        else:
            assert p_1d.shape == p_2d.shape


def test_lenet_smallest_input_is_accepted():
    size = ENCODERS["lenet"].min_size
    encoder = build_encoder("lenet", (2, size, size)).eval()
    with torch.no_grad():
        assert encoder(torch.randn(2, 2, size, size)).shape == (2, FEATURE_DIM)


def test_modality_branch_batch_of_one_in_eval_and_feature_parts():
    torch.manual_seed(0)
    branch = ModalityBranch((1, 12, 12), num_classes=4, encoder="lenet").eval()
    x = torch.randn(1, 1, 12, 12)
    with torch.no_grad():
        features = branch(x)
        specific = branch.specific_encoder(x)
        invariant = branch.projection(branch.invariant_encoder(x))
    assert features.invariant.shape == features.informative.shape == features.irrelevant.shape == (1, PART_DIM)
    assert features.logits.shape == (1, 4)
    # informative = first half of the specific encoder's output, irrelevant = second half
    torch.testing.assert_close(features.informative, specific[:, :PART_DIM])
    torch.testing.assert_close(features.irrelevant, specific[:, PART_DIM:])
    torch.testing.assert_close(features.invariant, invariant)
    # the task classifier reads concat(invariant, informative), never the irrelevant part
    expected_logits = branch.task_classifier(torch.cat([invariant, specific[:, :PART_DIM]], dim=1))
    torch.testing.assert_close(features.logits, expected_logits)


def test_full_model_forward_batch_of_one_in_eval():
    torch.manual_seed(0)
    model = DisCoMKD([(1, 12, 12), (6,)], num_classes=3, encoders=("lenet", "mlp")).eval()
    with torch.no_grad():
        first, second = model(torch.randn(1, 1, 12, 12), torch.randn(1, 6))
    for out in (first, second):
        assert out.invariant.shape == out.informative.shape == out.irrelevant.shape == (1, PART_DIM)
        assert out.logits.shape == out.aux_invariant.shape == out.aux_informative.shape == (1, 3)
        assert out.modality_informative.shape == out.modality_irrelevant.shape == out.discriminator.shape == (1, 2)
        # the auxiliary classifier is one head shared by both parts
        torch.testing.assert_close(out.aux_invariant, model.aux_classifier(out.invariant))
        torch.testing.assert_close(out.aux_informative, model.aux_classifier(out.informative))


def test_full_model_forward_training_mode_shapes():
    model = DisCoMKD([(2, 16), (5,)], num_classes=2, encoders=("resnet1d", "mlp")).train()
    first, second = model(torch.randn(4, 2, 16), torch.randn(3, 5))
    assert first.logits.shape == (4, 2) and second.logits.shape == (3, 2)


@pytest.mark.parametrize("coefficient", [1.0, 0.5])
def test_gradient_reversal_is_identity_forward_and_negates_gradient(coefficient):
    x = torch.randn(4, 3, requires_grad=True)
    y = gradient_reverse(x, coefficient)
    assert torch.equal(y, x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, -coefficient), rtol=0, atol=0)


@pytest.mark.parametrize("coefficient", [1.0, 0.5])
def test_discriminator_gradient_is_reversed_only_below_the_discriminator(coefficient):
    torch.manual_seed(0)
    model = DisCoMKD([(6,), (6,)], num_classes=3, encoders=("mlp", "mlp")).eval()
    x = torch.randn(5, 6)
    projection = model.branches[0].projection.net[0].weight

    def gradients(discriminator_logits):
        model.zero_grad()
        discriminator_logits.square().sum().backward()
        return projection.grad.clone(), model.discriminator.weight.grad.clone()

    reversed_below, head_reversed = gradients(model.branch_output(x, 0, coefficient).discriminator)
    plain_below, head_plain = gradients(model.discriminator(model.branches[0](x).invariant))
    assert plain_below.abs().sum() > 0
    torch.testing.assert_close(reversed_below, -coefficient * plain_below)
    # the discriminator itself learns to tell the modalities apart: its gradient is not reversed
    torch.testing.assert_close(head_reversed, head_plain)
