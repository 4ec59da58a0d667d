"""Non-adversarial alignment of the two modalities' invariant parts: multi-kernel MMD (as in DAN) and CORAL
(as in Deep CORAL, with a term for the means), over the whole batch or class by class.

Every term is a pure function of one modality's rows `source` (n, d) and the other's `target` (m, d),
returning an unweighted 0-d tensor. n and m may differ: the two modalities are not paired. The per-class
versions also take each row's class and average the term over the classes present in both modalities'
rows; a class missing from either side is skipped through a mask, never by reading the device, so a
compiled training step stays one static graph.

Both are computed in float32 whatever autocast is in force: a kernel of squared distances and a covariance
in bfloat16 would lose the small differences they measure.

This module knows only torch.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

# The Gaussian kernels of the MMD: exp(-||x - y||^2 / (s * sigma^2)) for each scale s, sigma^2 the mean squared
# distance between distinct rows of the two samples pooled. DAN (Long et al. 2015, sec. 3.1) spreads its
# bandwidths by factors of 2 around such a base; five kernels from sigma^2 / 4 to 4 sigma^2 cover the distances
# that matter within a batch, and the widely used DAN implementations take the same five.
BANDWIDTH_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
# The smallest bandwidth, for a sample whose rows are all one point (its mean distance is 0) or a class with one
# row: far below the squared distance of features that differ at all, yet 1 / (scale * it) stays far inside
# float32, so the gradient through a skipped class's kernel is 0 rather than 0 * inf.
MIN_BANDWIDTH = 1e-12


def _squared_distances(rows: torch.Tensor) -> torch.Tensor:
    """(N, d) -> (N, N) squared Euclidean distances, without the (N, N, d) difference tensor."""
    squared_norms = rows.pow(2).sum(dim=1)  # (N,)
    return (squared_norms[:, None] + squared_norms[None, :] - 2 * rows @ rows.T).clamp_min(0)


def _group_mmd(source: torch.Tensor, target: torch.Tensor, source_groups: torch.Tensor,
               target_groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The multi-kernel MMD^2 of each group's source rows against its target rows.

    Args:
        source, target: (n, d) and (m, d) rows.
        source_groups, target_groups: (G, n) and (G, m) float, 1 where a row belongs to a group, else 0.
    Returns:
        (terms (G,), valid (G,) bool): a group is valid when it holds rows of both sides.

    The biased (V-statistic) estimate: with w the group's weights over the pooled rows, 1/n_g on its source
    rows, -1/m_g on its target rows and 0 elsewhere, MMD^2 = w^T K w, which is the squared distance of the
    two samples' kernel means: never negative, and 0 for two identical samples.
    """
    pooled = torch.cat([source, target]).float()  # (N, d), N = n + m
    distances = _squared_distances(pooled)  # (N, N)
    members = torch.cat([source_groups, target_groups], dim=1)  # (G, N)
    rows = members.sum(dim=1)  # (G,)
    # the bandwidth follows the data but is not trained through: detached, as in DAN's implementations
    pair_sums = torch.einsum("gi,ij,gj->g", members, distances.detach(), members)  # sum over ordered pairs
    bandwidth = (pair_sums / (rows * (rows - 1)).clamp_min(1)).clamp_min(MIN_BANDWIDTH)  # (G,)
    # DAN's kernel is a convex combination of the Gaussian kernels; equal weights (DAN fits them by a
    # quadratic program, which a step of SGD has no room for)
    kernel = sum(torch.exp(-distances / (scale * bandwidth)[:, None, None])
                 for scale in BANDWIDTH_SCALES) / len(BANDWIDTH_SCALES)  # (G, N, N)
    source_counts, target_counts = source_groups.sum(dim=1), target_groups.sum(dim=1)  # (G,) each
    weights = torch.cat([source_groups / source_counts.clamp_min(1)[:, None],
                         -target_groups / target_counts.clamp_min(1)[:, None]], dim=1)  # (G, N)
    terms = torch.einsum("gi,gij,gj->g", weights, kernel, weights)
    return terms, (source_counts > 0) & (target_counts > 0)


def _moments(rows: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per group, the mean (G, d), the unbiased covariance (G, d, d) and the number of rows (G,) of `rows`
    (n, d), `groups` (G, n) as in `_group_mmd`. A group of fewer than two rows gets finite values (its
    covariance divided by 1), to be masked out, never NaN, whose gradient would poison a masked sum."""
    counts = groups.sum(dim=1)  # (G,)
    means = groups @ rows / counts.clamp_min(1)[:, None]  # (G, d)
    centred = rows[None, :, :] - means[:, None, :]  # (G, n, d)
    covariances = torch.einsum("gi,gid,gie->gde", groups, centred, centred)  # (G, d, d)
    return means, covariances / (counts - 1).clamp_min(1)[:, None, None], counts


def _group_coral(source: torch.Tensor, target: torch.Tensor, source_groups: torch.Tensor,
                 target_groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The CORAL term of each group, (terms (G,), valid (G,) bool), arguments as `_group_mmd`.

    ||C_s - C_t||_F^2 / (4 d^2) + ||mu_s - mu_t||^2 / (4 d), with C the unbiased covariances and mu the means
    of the group's rows on each side. The first term is Deep CORAL's (Sun & Saenko 2016, eq. 1): a quarter of
    the mean squared difference of the d^2 covariance entries; the second is the same for the d means, which
    Deep CORAL leaves to its classifier and a modality-free part cannot. A group is valid with at least two
    rows on each side (a covariance needs two).
    """
    dimension = source.shape[1]
    source_means, source_covariances, source_counts = _moments(source.float(), source_groups)
    target_means, target_covariances, target_counts = _moments(target.float(), target_groups)
    covariance_term = (source_covariances - target_covariances).pow(2).sum(dim=(1, 2)) / (4 * dimension ** 2)
    mean_term = (source_means - target_means).pow(2).sum(dim=1) / (4 * dimension)
    return covariance_term + mean_term, (source_counts >= 2) & (target_counts >= 2)


def _whole_batch(group_term: Callable, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    everything = [torch.ones(1, len(rows), device=rows.device) for rows in (source, target)]  # one group of all rows
    terms, _ = group_term(source, target, *everything)
    return terms[0]


def _per_class(group_term: Callable, source: torch.Tensor, target: torch.Tensor, source_labels: torch.Tensor,
               target_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    classes = torch.arange(num_classes, device=source_labels.device)[:, None]  # (K, 1)
    groups = [(labels[None, :] == classes).float() for labels in (source_labels, target_labels)]  # (K, n), (K, m)
    terms, valid = group_term(source, target, *groups)
    # the mean over the valid classes, 0 when there is none; where() rather than a product: no NaN or Inf
    # of a skipped class could reach the sum
    return torch.where(valid, terms, 0).sum() / valid.sum().clamp_min(1)


def mmd(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Multi-kernel MMD^2 (DAN) between the rows of `source` (n, d) and `target` (m, d): biased estimate,
    five Gaussian kernels averaged, bandwidths BANDWIDTH_SCALES times the mean squared distance between
    distinct rows of both samples pooled. -> 0-d tensor, >= 0, 0 for identical samples."""
    assert source.shape[0] >= 1 and target.shape[0] >= 1, "the MMD needs at least one row on each side"
    return _whole_batch(_group_mmd, source, target)


def coral(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CORAL between the rows of `source` (n, d) and `target` (m, d): ||C_s - C_t||_F^2 / (4 d^2) +
    ||mu_s - mu_t||^2 / (4 d), unbiased covariances. -> 0-d tensor, >= 0, 0 for identical samples."""
    assert source.shape[0] >= 2 and target.shape[0] >= 2, "a covariance needs at least two rows on each side"
    return _whole_batch(_group_coral, source, target)


def mmd_per_class(source: torch.Tensor, target: torch.Tensor, source_labels: torch.Tensor,
                  target_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The mean over classes of `mmd` between each class's source and target rows, each class with its own
    bandwidth; classes absent from either side are skipped (0 when no class is on both sides).
    Labels: (n,) and (m,) int64 in 0..num_classes-1."""
    return _per_class(_group_mmd, source, target, source_labels, target_labels, num_classes)


def coral_per_class(source: torch.Tensor, target: torch.Tensor, source_labels: torch.Tensor,
                    target_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The mean over classes of `coral` between each class's source and target rows; classes with fewer
    than two rows on either side are skipped (0 when none is left). Labels as `mmd_per_class`."""
    return _per_class(_group_coral, source, target, source_labels, target_labels, num_classes)


class Alignment(NamedTuple):
    """One kind of alignment: the term over the whole batch and the term class by class."""

    whole: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    per_class: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


NO_ALIGNMENT = "none"  # the paper: the adversarial term alone
ALIGNMENTS = {"mmd": Alignment(mmd, mmd_per_class), "coral": Alignment(coral, coral_per_class)}
ALIGNMENT_CHOICES = (NO_ALIGNMENT, *ALIGNMENTS)


def alignment_term(kind: str, per_class: bool, source: torch.Tensor, target: torch.Tensor,
                   source_labels: torch.Tensor, target_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The alignment term `kind` (a key of ALIGNMENTS) of the two samples, class by class with `per_class`,
    in float32 even under autocast. -> 0-d float32 tensor."""
    assert kind in ALIGNMENTS, f"unknown alignment {kind!r}, expected one of {tuple(ALIGNMENTS)}"
    with torch.autocast(source.device.type, enabled=False):
        source, target = source.float(), target.float()
        if per_class:
            return ALIGNMENTS[kind].per_class(source, target, source_labels, target_labels, num_classes)
        return ALIGNMENTS[kind].whole(source, target)
