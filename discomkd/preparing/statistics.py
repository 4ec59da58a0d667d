"""A prepared modality's normalisation: per-channel mean and std over its training rows, and the checks that keep a
few extreme values (a nodata marker) from flattening a channel: before anything is written (`preprocessing_entry`,
from each file's robust statistics) and as each sample is normalised (`check_not_collapsed`)."""
from __future__ import annotations

import collections

import numpy as np

from discomkd.preparing.samples import RESIZE_METHOD, SampleError, combine_moments
from discomkd.utils.errors import DataError

# A channel whose std exceeds this many times the spread of its typical values is dominated by a few extreme
# ones (a nodata value such as GDAL's -3.4e38): normalised by that std, its other values would be squeezed into
# a thousandth of the unit scale, and flattened to one float32 value from about 1e7 on. Real data stay far below:
# heavy tails put the std at a few times the median absolute deviation.
FLATTENING_RATIO = 1000.0
MAD_TO_STD = 1.4826  # a normal distribution's std per median absolute deviation


def preprocessing_entry(name: str, paths: list[str | None], train: np.ndarray, checks: dict,
                        shape: tuple[int, int, int], size: tuple[int, int] | None, nodata: float | None) -> dict:
    """Modality `name`'s normalization.json entry: per-channel mean and std over its training rows
    `train`, its sample shape, resize and nodata value, and the dtypes its files had. `paths[row]`: the row's
    file (errors name it); `checks[row, name]`: what the check pass learnt of it. Refuses statistics that
    overflow, or that a few extreme values dominate (`check_not_flattened`)."""
    means = np.stack([checks[row, name].moments[0] for row in train])
    squares = np.stack([checks[row, name].moments[1] for row in train])
    mean, std = combine_moments(means, squares, shape[1] * shape[2])
    finite = np.isfinite(mean) & np.isfinite(std)
    if not finite.all():  # each file's statistics are finite, their combination is not: values near 1e154
        channel = int(np.argmin(finite))
        largest = train[int(np.argmax(np.abs(means[:, channel])))]
        raise DataError(f"{paths[largest]}: channel {channel}: values too large for the "
                        f"statistics of {name}'s training rows (float64 overflow; a nodata value? --nodata "
                        f"{name}=VALUE leaves it out)")
    check_not_flattened(name, paths, train, checks, std)
    dtypes = collections.Counter(check.dtype for (_, modality), check in checks.items() if modality == name)
    return {
        "mean": mean.tolist(),
        "std": np.where(std > 0, std, 1.0).tolist(),  # a constant channel: centred only
        "shape": list(shape), "resize": list(size) if size else None,
        "resize_method": RESIZE_METHOD if size else None, "source_dtypes": sorted(dtypes),
        "statistics": f"per channel over the {len(train)} training rows of {name} (population std)",
        "nodata": nodata,  # pixels of this value are filled with their file's channel mean before the rest
    }


def check_not_flattened(name: str, paths: list[str | None], train: np.ndarray, checks: dict, std: np.ndarray) -> None:
    """Refuses a channel whose std a few extreme values make so large that normalising by it would flatten every
    other value (`FLATTENING_RATIO`), naming the file that holds the most extreme one. The typical spread is
    robust to such values: the median of the files' median absolute deviations, or the spread of their medians
    where that is larger (files that differ in level, each flat)."""
    robust = np.stack([checks[row, name].robust for row in train])  # (n, C, 4): median, MAD, min, max
    center = np.median(robust[:, :, 0], axis=0)
    spread = MAD_TO_STD * np.maximum(np.median(robust[:, :, 1], axis=0),
                                     np.median(np.abs(robust[:, :, 0] - center), axis=0))
    for channel in np.flatnonzero((spread > 0) & (std > FLATTENING_RATIO * spread)):
        deviations = np.abs(robust[:, channel, 2:] - center[channel])  # (n, 2): min's and max's
        file, end = np.unravel_index(int(np.argmax(deviations)), deviations.shape)
        value = robust[file, channel, 2 + end]
        raise DataError(f"{paths[train[file]]}: channel {channel}: value {value:.6g} lies "
                        f"{deviations[file, end] / spread[channel]:.2g} typical spreads from {name}'s typical values "
                        f"({center[channel]:.4g} ± {spread[channel]:.3g}); the std it gives ({std[channel]:.3g}) "
                        "would flatten every other value of the channel once normalised: a nodata value? "
                        f"--nodata {name}={value:.9g} leaves such values out")


def check_not_collapsed(pixels: np.ndarray, normalised: np.ndarray) -> None:
    """Raises `SampleError` for a channel whose values differ but all normalise to one float32 value: the
    channel's std is so large (extreme values elsewhere) that this sample would train as a constant."""
    raw = pixels.reshape(len(pixels), -1)
    flat = normalised.reshape(len(normalised), -1)
    collapsed = (raw.max(axis=1) > raw.min(axis=1)) & (flat.max(axis=1) == flat.min(axis=1))
    if collapsed.any():
        channel = int(np.argmax(collapsed))
        raise SampleError(f"channel {channel}: its values (from {raw[channel].min():.6g} to {raw[channel].max():.6g}) "
                          "all normalise to one float32 value: the channel's std is dominated by extreme values "
                          "elsewhere (a nodata value? --nodata NAME=VALUE leaves it out)")
