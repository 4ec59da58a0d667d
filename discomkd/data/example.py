"""The embedded example: two modalities of scikit-learn's handwritten digits (no download).

scikit-learn ships 1,797 digits as 8x8 images. Two "sensors" see each digit:
- IMAGE (N, 1, 24, 24): a camera view: the digit upsampled to 16x16 at a random position of a
  24x24 frame, under pixel noise; read by ResNet-18;
- PROJ  (N, 32): 32 noisy random projections of the 64 centred pixels, read by the MLP encoder.
Both are standardised, labels are the digits 0-9, and a stratified 70/10/20 split is written.
The noise and the camera's random framing make neither modality trivially solvable, so what one
modality learns can help the other. `make_example.py` writes it; the GPU check trains on it.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from discomkd.data.folder import write_split_files
from discomkd.data.splits import SPLITS, stratified_split
from discomkd.utils.errors import DataError
from discomkd.utils.files import folder_problem

# Noise levels (in units of the standardised signal) chosen so that a linear model on either
# modality stays well below perfect accuracy.
IMAGE_NOISE = 0.5
PROJECTION_NOISE = 0.8
PROJECTIONS = 32
DIGIT_SIZE, FRAME_SIZE = 16, 24


def make_digits_example(folder: str, seed: int = 0, overwrite: bool = False) -> str:
    """Writes the example into `folder` and returns a one-line account of what it wrote; raises
    `DataError`, before writing anything, when `folder` is a file, cannot be created, or already holds
    files (unless `overwrite`: then the example's own files are replaced and any other file is kept)."""
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise DataError(f"{folder}: exists and is not a folder")
    if folder_problem(folder) is not None:
        raise DataError(f"{folder}: {folder_problem(folder)}")
    if os.path.isdir(folder) and os.listdir(folder) and not overwrite:
        raise DataError(f"{folder}: exists and holds files; pass --overwrite to replace the example's files "
                        "or choose another folder")
    from sklearn.datasets import load_digits  # imported when used: about a second

    digits = load_digits()
    rng = np.random.default_rng(seed)
    pixels = digits.images.astype(np.float32) / 16.0  # (N, 8, 8) in [0, 1]
    digit = F.interpolate(torch.from_numpy(pixels)[:, None], size=(DIGIT_SIZE, DIGIT_SIZE), mode="bilinear",
                          align_corners=False).numpy()  # (N, 1, 16, 16)
    image = np.zeros((len(pixels), 1, FRAME_SIZE, FRAME_SIZE), dtype=np.float32)
    corners = rng.integers(0, FRAME_SIZE - DIGIT_SIZE + 1, size=(len(pixels), 2))
    for row, (top, left) in enumerate(corners):  # data preparation, once: not on a training path
        image[row, 0, top:top + DIGIT_SIZE, left:left + DIGIT_SIZE] = digit[row, 0]
    image = (image - image.mean()) / image.std()
    image += IMAGE_NOISE * rng.standard_normal(image.shape).astype(np.float32)
    flat = pixels.reshape(len(pixels), -1)
    flat = (flat - flat.mean(axis=0)) / (flat.std(axis=0) + 1e-6)
    projection = flat @ rng.standard_normal((flat.shape[1], PROJECTIONS)).astype(np.float32) / np.sqrt(flat.shape[1])
    projection += PROJECTION_NOISE * rng.standard_normal(projection.shape).astype(np.float32)
    projection = (projection - projection.mean(axis=0)) / projection.std(axis=0)
    labels = digits.target.astype(np.int64)

    os.makedirs(folder, exist_ok=True)
    arrays = {"IMAGE_data_normalized": image.astype(np.float32), "PROJ_data_normalized": projection.astype(np.float32),
              "labels": labels}
    split = stratified_split(labels, seed)
    for name in [*arrays, *(f"{s}_idx" for s in split)]:
        if os.path.isdir(os.path.join(folder, f"{name}.npy")):
            raise DataError(f"{os.path.join(folder, name)}.npy: is a folder; the example writes a file there")
    for name, values in arrays.items():
        np.save(os.path.join(folder, f"{name}.npy"), values)
    write_split_files(folder, split)
    return (f"wrote {len(labels)} digits to {folder}: IMAGE {image.shape[1:]}, PROJ {projection.shape[1:]}, "
            + ", ".join(f"{s} {len(split[s])}" for s in SPLITS))
