"""The baselines' models and distillation losses, against numbers computed by hand with numpy."""
import numpy as np
import pytest
import torch

from discomkd.models.baselines import (
    DKD_ALPHA,
    DKD_BETA,
    DKD_WARMUP_EPOCHS,
    MultiModalTeacher,
    SingleModalityClassifier,
    dkd_losses,
    kd_loss,
)
from discomkd.models.methods import METHODS, ModelShape, build_model
from discomkd.training.config import Config

STUDENT = np.array([[2.0, 1.0, 0.5], [0.2, -1.0, 1.5]])
TEACHER = np.array([[1.0, 3.0, 0.0], [0.5, 0.1, 2.5]])
LABELS = np.array([0, 2])
T = 4.0


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def kl(p, q):
    """Per-row KL(p || q)."""
    return (p * (np.log(p) - np.log(q))).sum(axis=1)


def tensors(*arrays):
    return [torch.tensor(a, dtype=torch.float32 if a.dtype.kind == "f" else torch.int64) for a in arrays]


def test_kd_loss_matches_hand_computation():
    expected = kl(softmax(TEACHER / T), softmax(STUDENT / T)).mean() * T ** 2
    student, teacher = tensors(STUDENT, TEACHER)
    assert kd_loss(student, teacher, T).item() == pytest.approx(expected, rel=1e-5)


def test_dkd_losses_match_hand_computation():
    p_student, p_teacher = softmax(STUDENT / T), softmax(TEACHER / T)
    rows = np.arange(len(LABELS))
    binary_student = np.stack([p_student[rows, LABELS], 1 - p_student[rows, LABELS]], axis=1)
    binary_teacher = np.stack([p_teacher[rows, LABELS], 1 - p_teacher[rows, LABELS]], axis=1)
    tckd = kl(binary_teacher, binary_student).mean() * T ** 2
    keep = np.ones_like(STUDENT, dtype=bool)
    keep[rows, LABELS] = False
    non_target_student = softmax(STUDENT[keep].reshape(2, 2) / T)  # the two other classes of each row
    non_target_teacher = softmax(TEACHER[keep].reshape(2, 2) / T)
    nckd = kl(non_target_teacher, non_target_student).mean() * T ** 2

    student, teacher, labels = tensors(STUDENT, TEACHER, LABELS)
    terms = dkd_losses(student, teacher, labels, T)
    assert terms["tckd"].item() == pytest.approx(tckd, rel=1e-5)
    assert terms["nckd"].item() == pytest.approx(nckd, rel=1e-5)
    assert tckd > 0 and nckd > 0


def test_kd_decomposes_into_tckd_and_weighted_nckd():
    """Zhao et al.'s identity, per sample: KD = TCKD + (1 - p_target of the teacher) * NCKD."""
    student, teacher, labels = tensors(STUDENT[:1], TEACHER[:1], LABELS[:1])
    terms = dkd_losses(student, teacher, labels, T)
    teacher_target = softmax(TEACHER[:1] / T)[0, LABELS[0]]
    expected = terms["tckd"].item() + (1 - teacher_target) * terms["nckd"].item()
    assert kd_loss(student, teacher, T).item() == pytest.approx(expected, rel=1e-5)


def test_nckd_ignores_the_target_logit_and_tckd_stays_finite_when_confident():
    student, teacher, labels = tensors(STUDENT, TEACHER, LABELS)
    shifted = teacher.clone()
    shifted[0, 0] += 5.0  # only the target logit of row 0 changes
    assert dkd_losses(student, shifted, labels, T)["nckd"].item() == pytest.approx(
        dkd_losses(student, teacher, labels, T)["nckd"].item(), rel=1e-6)
    confident = teacher.clone()
    confident[:, :] = -200.0
    confident[0, 0] = confident[1, 2] = 200.0  # p_target rounds to 1 in float32
    terms = dkd_losses(student, confident, labels, T)
    assert all(torch.isfinite(t) for t in terms.values())


def test_method_terms_and_dkd_warmup():
    torch.manual_seed(0)
    shape = ModelShape(((1, 12, 12), (6,)), ("lenet", "mlp"), 3)
    inputs = {0: torch.randn(4, 1, 12, 12), 1: torch.randn(4, 6)}
    labels = {0: torch.tensor([0, 1, 2, 0]), 1: torch.tensor([0, 1, 2, 0])}
    teacher = build_model("teacher", shape)
    for method, terms in (("mono", {"ce"}), ("kd", {"ce", "kd"}), ("dkd", {"ce", "tckd", "nckd"})):
        model = build_model(method, shape, 0, teacher)
        reads = METHODS[method].step_modalities(0)
        computed = METHODS[method].losses(model, {m: inputs[m] for m in reads}, labels, Config())
        assert set(computed) == terms == set(METHODS[method].terms)
        assert set(METHODS[method].weights(Config(), 1)) == terms
    dkd_weights = METHODS["dkd"].weights
    half = DKD_WARMUP_EPOCHS // 2
    assert dkd_weights(Config(), half) == pytest.approx(
        {"ce": 1.0, "tckd": DKD_ALPHA * half / DKD_WARMUP_EPOCHS, "nckd": DKD_BETA * half / DKD_WARMUP_EPOCHS})
    assert dkd_weights(Config(), 5 * DKD_WARMUP_EPOCHS) == {"ce": 1.0, "tckd": DKD_ALPHA, "nckd": DKD_BETA}
    assert METHODS["kd"].weights(Config(), 1) == {"ce": 1.0, "kd": 1.0}
    # their own settings (compare.py --settings-for, tune.py --method kd|dkd) reach the terms and weights
    tuned = Config(kd_weight=0.3, dkd_alpha=2.0, dkd_beta=1.0)
    assert METHODS["kd"].weights(tuned, 1) == {"ce": 1.0, "kd": 0.3}
    assert dkd_weights(tuned, 5 * DKD_WARMUP_EPOCHS) == {"ce": 1.0, "tckd": 2.0, "nckd": 1.0}
    model = build_model("kd", shape, 0, teacher)
    reads = {m: inputs[m] for m in METHODS["kd"].step_modalities(0)}
    hot, cold = (METHODS["kd"].losses(model, reads, labels, Config(kd_temperature=t))["kd"] for t in (8.0, 1.0))
    assert not torch.equal(hot, cold)


def test_distilled_student_keeps_its_teacher_frozen_and_in_eval_mode():
    shape = ModelShape(((1, 12, 12), (6,)), ("lenet", "mlp"), 3)
    model = build_model("kd", shape, 1, build_model("teacher", shape)).train()
    assert not model.teacher.training and model.student.training
    assert not any(p.requires_grad for p in model.teacher.parameters())


def test_model_shapes():
    torch.manual_seed(0)
    student = SingleModalityClassifier((1, 12, 12), 5, "lenet")
    assert student(torch.randn(4, 1, 12, 12)).logits.shape == (4, 5)
    teacher = MultiModalTeacher([(1, 12, 12), (6,)], 5, ["lenet", "mlp"])
    assert teacher(torch.randn(4, 1, 12, 12), torch.randn(4, 6)).logits.shape == (4, 5)


def test_dml_each_network_learns_from_the_other_held_fixed():
    """dml: the cross-entropies of both networks, plus each one's KL from its peer's softened predictions (T^2
    scaled, as kd's); the peer's output is a target, so the mutual term of one network moves only that network,
    and it vanishes when the two predict alike."""
    torch.manual_seed(0)
    shape = ModelShape(((1, 12, 12), (6,)), ("lenet", "mlp"), 3)
    model = build_model("dml", shape).eval()  # the same outputs twice (no dropout, batch norm's running stats)
    inputs, labels = {0: torch.randn(5, 1, 12, 12), 1: torch.randn(5, 6)}, {0: torch.tensor([0, 1, 2, 0, 1])}
    labels[1] = labels[0]
    config = Config(dml_temperature=2.0)
    terms = METHODS["dml"].losses(model, inputs, labels, config)
    first, second = (network(inputs[m]).logits for m, network in enumerate(model.networks))
    assert terms["mutual"].item() == pytest.approx((kd_loss(first, second, 2.0) + kd_loss(second, first, 2.0)).item())
    terms["mutual"].backward()
    model.zero_grad()
    kd_loss(first, second.detach(), 2.0).backward()  # the first network's share: no gradient reaches the second
    assert all(p.grad is None or not p.grad.any() for p in model.networks[1].parameters())
    same = kd_loss(first.detach(), first.detach(), 2.0)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    assert METHODS["dml"].weights(Config(dml_weight=0.3), 1) == {"ce": 1.0, "mutual": 0.3}
    assert [m for m, _ in METHODS["dml"].classifiers(model, None)] == [0, 1]
