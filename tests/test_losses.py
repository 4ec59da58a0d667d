"""Each DisCoM-KD loss term against a hand computation, modality-target gradients, and a short training run."""
import numpy as np
import pytest
import torch
from toy import TOY_SETTINGS, write_toy_folder

from discomkd.data.folder import load_data_folder
from discomkd.models.discomkd import LOSS_TERMS, BranchOutput, discomkd_losses
from discomkd.training.config import Config
from discomkd.training.epoch import train_one_epoch
from discomkd.training.setup import build_setup
from discomkd.utils.seeds import seed_everything

# Two rows of the first modality, one of the second, three classes, 2-d feature parts (the losses
# do not depend on the 256-d size). Values chosen by hand so that no term is trivially 0 or log(K).
FIRST = {
    "invariant": [[0.0, 2.0], [1.0, 1.0]],
    "informative": [[1.0, 0.0], [1.0, 0.0]],
    "irrelevant": [[0.0, 3.0], [2.0, 2.0]],
    "logits": [[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]],
    "aux_invariant": [[0.5, 0.5, 0.0], [-1.0, 0.0, 1.0]],
    "aux_informative": [[0.0, 2.0, 0.0], [1.0, 1.0, 1.0]],
    "modality_informative": [[0.5, -0.5], [1.0, 2.0]],
    "modality_irrelevant": [[0.5, 0.0], [3.0, -1.0]],
    "discriminator": [[0.2, 0.1], [1.0, -1.0]],
}
SECOND = {
    "invariant": [[3.0, 0.0]],
    "informative": [[0.0, 1.0]],
    "irrelevant": [[1.0, 0.0]],
    "logits": [[1.0, 1.0, 3.0]],
    "aux_invariant": [[0.0, -2.0, 0.5]],
    "aux_informative": [[2.0, 0.0, 0.0]],
    "modality_informative": [[2.0, 1.0]],
    "modality_irrelevant": [[-1.0, 1.0]],
    "discriminator": [[0.3, 0.9]],
}
LABELS_FIRST, LABELS_SECOND = [0, 2], [2]
# the published code's modality targets: first modality 1, second modality 0
MODALITY_FIRST, MODALITY_SECOND = 1, 0


def branch(values: dict) -> BranchOutput:
    return BranchOutput(**{k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in values.items()})


def losses(legacy: bool = False):
    first, second = branch(FIRST), branch(SECOND)
    terms = discomkd_losses(first, second, torch.tensor(LABELS_FIRST), torch.tensor(LABELS_SECOND),
                            legacy_modality_targets=legacy)
    return terms, first, second


def log_softmax(logits) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy(logits, targets) -> float:
    """Mean over rows of -log softmax(logits)[target]."""
    return float(-log_softmax(logits)[np.arange(len(targets)), targets].mean())


def rows(field: str) -> list:
    return FIRST[field] + SECOND[field]


def test_terms_are_the_five_named_scalars():
    terms, _, _ = losses()
    assert tuple(terms) == LOSS_TERMS == ("cl", "aux", "mod", "adv", "perp")
    assert all(t.dim() == 0 for t in terms.values())


def test_classification_term_by_hand():
    terms, _, _ = losses()
    expected = cross_entropy(rows("logits"), LABELS_FIRST + LABELS_SECOND)
    # spelled out for the first row: logits (2, 0, -1), class 0
    first_row = -(2.0 - np.log(np.exp(2.0) + np.exp(0.0) + np.exp(-1.0)))
    assert first_row == pytest.approx(-log_softmax(FIRST["logits"])[0, 0])
    assert terms["cl"].item() == pytest.approx(expected, rel=1e-12)


def test_auxiliary_term_is_the_sum_of_two_cross_entropies():
    terms, _, _ = losses()
    labels = LABELS_FIRST + LABELS_SECOND
    on_invariant = cross_entropy(rows("aux_invariant"), labels)
    on_informative = cross_entropy(rows("aux_informative"), labels)
    assert on_invariant != pytest.approx(on_informative)  # the two terms are told apart
    assert terms["aux"].item() == pytest.approx(on_invariant + on_informative, rel=1e-12)


def test_modality_term_by_hand():
    terms, _, _ = losses()
    # first modality's informative and irrelevant rows (target 1), then the second's (target 0)
    logits = FIRST["modality_informative"] + FIRST["modality_irrelevant"] + \
        SECOND["modality_informative"] + SECOND["modality_irrelevant"]
    targets = [MODALITY_FIRST] * 4 + [MODALITY_SECOND] * 2
    assert terms["mod"].item() == pytest.approx(cross_entropy(logits, targets), rel=1e-12)


def test_adversarial_term_by_hand():
    terms, _, _ = losses()
    targets = [MODALITY_FIRST] * 2 + [MODALITY_SECOND]
    assert terms["adv"].item() == pytest.approx(cross_entropy(rows("discriminator"), targets), rel=1e-12)


def cosine(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_orthogonality_term_by_hand():
    terms, _, _ = losses()
    informative = rows("informative")
    expected = cosine(informative, rows("irrelevant")).mean() + cosine(informative, rows("invariant")).mean()
    # row by row: (1,0)/(0,3) orthogonal, (1,0)/(2,2) at 45 degrees, (0,1)/(1,0) orthogonal
    assert cosine(informative, rows("irrelevant")).tolist() == pytest.approx([0.0, 2 ** -0.5, 0.0])
    assert terms["perp"].item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("relation, expected", [("orthogonal", 0.0), ("identical", 2.0), ("opposite", -2.0)])
def test_orthogonality_term_for_chosen_directions(relation, expected):
    informative = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    other = {"orthogonal": informative.flip(1) * torch.tensor([1.0, -1.0]),  # (x, y) -> (y, -x)
             "identical": 2.5 * informative,  # same direction, any positive length
             "opposite": -informative}[relation]
    fields = {"invariant": other, "informative": informative, "irrelevant": other, "logits": torch.zeros(3, 3),
              "aux_invariant": torch.zeros(3, 3), "aux_informative": torch.zeros(3, 3),
              "modality_informative": torch.zeros(3, 2), "modality_irrelevant": torch.zeros(3, 2),
              "discriminator": torch.zeros(3, 2)}
    first = BranchOutput(**{k: v[:2] for k, v in fields.items()})  # rows 0, 1: first modality
    second = BranchOutput(**{k: v[2:] for k, v in fields.items()})  # row 2: second modality
    terms = discomkd_losses(first, second, torch.zeros(2, dtype=torch.int64), torch.zeros(1, dtype=torch.int64))
    # one cosine per pair (informative, irrelevant) and (informative, invariant), each -1, 0 or 1
    assert terms["perp"].item() == pytest.approx(expected, abs=1e-6)


def modality_gradients(legacy: bool) -> dict[str, torch.Tensor]:
    terms, first, second = losses(legacy)
    (terms["mod"] + terms["adv"]).backward()
    return {f"{which}.{field}": getattr(out, field).grad
            for which, out in (("first", first), ("second", second))
            for field in ("modality_informative", "modality_irrelevant", "discriminator")}


def test_integer_modality_targets_train_both_modalities():
    for name, gradient in modality_gradients(legacy=False).items():
        # every row of every modality pushes its modality/discriminator logits
        assert (gradient.abs().sum(dim=1) > 1e-3).all(), name


def test_legacy_modality_targets_ignore_the_second_modality():
    gradients = modality_gradients(legacy=True)
    for field in ("modality_informative", "modality_irrelevant", "discriminator"):
        assert torch.equal(gradients[f"second.{field}"], torch.zeros_like(gradients[f"second.{field}"])), field
        assert (gradients[f"first.{field}"].abs().sum(dim=1) > 1e-3).all(), field


def test_legacy_modality_targets_follow_the_published_formula():
    terms, _, _ = losses(legacy=True)
    integer_terms, _, _ = losses(legacy=False)

    def published(first_rows, second_rows) -> float:
        # soft target [1, 1] on first-modality rows, [0, 0] on second-modality rows, mean over all rows
        log_p = log_softmax(first_rows)
        per_row = list(-(log_p[:, 0] + log_p[:, 1])) + [0.0] * len(second_rows)
        return float(np.mean(per_row))

    mod = published(FIRST["modality_informative"] + FIRST["modality_irrelevant"],
                    SECOND["modality_informative"] + SECOND["modality_irrelevant"])
    adv = published(FIRST["discriminator"], SECOND["discriminator"])
    assert terms["mod"].item() == pytest.approx(mod, rel=1e-12)
    assert terms["adv"].item() == pytest.approx(adv, rel=1e-12)
    assert terms["mod"].item() != pytest.approx(integer_terms["mod"].item())
    # the class and orthogonality terms do not depend on how modality targets are built
    for term in ("cl", "aux", "perp"):
        assert terms[term].item() == integer_terms[term].item()


def test_a_few_epochs_lower_the_loss(tmp_path):
    folder = write_toy_folder(tmp_path / "toy", n=96)
    data = load_data_folder(folder, "IMG", "VEC", ("lenet", "mlp"))
    # 1e-3 instead of the paper's 1e-4 so that five short epochs (30 steps) move clearly;
    # no augmentation: the toy classes are arbitrary patterns that flips would scramble
    config = Config(**TOY_SETTINGS, augment_first="none", compile="no", verbose=0)
    seed_everything(0)
    setup = build_setup(config, data, torch.device("cpu"))
    history = [train_one_epoch(setup, epoch) for epoch in range(1, 6)]
    assert set(history[0]) == set(LOSS_TERMS) | {"total", "finite_weights"}
    first, last = history[0], history[-1]
    assert last["total"] < first["total"] - 0.5, [h["total"] for h in history]
    assert last["cl"] < 0.5 * first["cl"], [h["cl"] for h in history]
    assert last["aux"] < 0.7 * first["aux"], [h["aux"] for h in history]
    # the total is the weighted sum of the terms (all weights 1 by default)
    assert last["total"] == pytest.approx(sum(last[k] for k in LOSS_TERMS), rel=1e-5)
