"""One sample file read as prepare_data.py and predict.py read it: PNG/JPG (Pillow), TIFF with any number
of bands (tifffile), per-sample .npy (H, W) or (C, H, W); resized and normalised one way for both
commands, so that a raw file predicts as its prepared row does. Also the per-channel statistics of a
sample, and predict.py's raw input: the sample files a path stands for, read and normalised.
"""
from __future__ import annotations

import hashlib
import importlib
import os

import numpy as np
import torch
import torch.nn.functional as F

from discomkd.utils.errors import DataError, OptionError

PILLOW_EXTENSIONS = (".png", ".jpg", ".jpeg")
TIFF_EXTENSIONS = (".tif", ".tiff")
SAMPLE_EXTENSIONS = PILLOW_EXTENSIONS + TIFF_EXTENSIONS + (".npy",)
RESIZE_METHOD = "bilinear, antialiased (torch.nn.functional.interpolate), on the original values"
# --resize's largest side: one 8192x8192 float32 channel is already 256 MB per sample, beyond any image the
# encoders here train on; a larger size is a typo that would only fail in the allocator
MAX_RESIZE_SIDE = 8192
FLOAT32_MAX = float(np.finfo(np.float32).max)
_DIGEST_CHUNK = 1 << 20


class SampleError(ValueError):
    """One file that cannot be used (unreadable, corrupt, wrong size); the message is the problem."""


# ----------------------------------------------------------------------------- reading one file
def _import_reader(module: str, package: str, path: str):
    """The optional reader library, or a one-line DataError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"{path}: reading {os.path.splitext(path)[1]} files needs {package}: "
                        f"pip install {package}") from None


def _read_pillow(path: str) -> np.ndarray:
    image_module = _import_reader("PIL.Image", "pillow", path)
    try:
        with image_module.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not later
            if image.mode == "P":  # palette indices are not intensities
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            elif image.mode == "1":
                image = image.convert("L")
            pixels = np.asarray(image)
    except Exception as error:  # Pillow raises many types for a corrupt file (OSError, SyntaxError, ...)
        raise SampleError(f"not a readable image ({type(error).__name__}: {error})") from None
    return pixels if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)


def _read_tiff(path: str) -> np.ndarray:
    tifffile = _import_reader("tifffile", "tifffile", path)
    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            axes, pixels = series.axes, series.asarray()
    except Exception as error:  # tifffile raises many types for a corrupt file
        raise SampleError(f"not a readable TIFF ({type(error).__name__}: {error})") from None
    if "Y" not in axes or "X" not in axes:
        raise SampleError(f"TIFF axes {axes!r} (shape {pixels.shape}) hold no Y and X image axes")
    others = [i for i, a in enumerate(axes) if a not in "YX" and pixels.shape[i] > 1]
    if len(others) > 1:
        raise SampleError(f"TIFF of shape {pixels.shape} (axes {axes}): one image of (bands, height, width) "
                          "is expected, not a stack")
    # band axis first, then Y, X; size-1 axes dropped
    order = others + [axes.index("Y"), axes.index("X")]
    pixels = pixels.transpose(order + [i for i in range(pixels.ndim) if i not in order])
    return pixels.reshape(pixels.shape[:len(order)])


def _read_npy(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise SampleError(f"not a readable .npy array of numbers ({error})") from None


def read_sample(path: str) -> np.ndarray:
    """One sample file as (C, H, W) in its own dtype (values and band order untouched).

    PNG/JPG through Pillow, TIFF through tifffile (imported only then), .npy as (H, W) or
    (C, H, W). Raises `SampleError` for an unusable file, `DataError` when a reader is missing.
    """
    extension = os.path.splitext(path)[1].lower()
    if not os.path.isfile(path):
        raise SampleError("file not found")
    if extension in TIFF_EXTENSIONS:
        pixels = _read_tiff(path)
    elif extension in PILLOW_EXTENSIONS:
        pixels = _read_pillow(path)
    elif extension == ".npy":
        pixels = _read_npy(path)
    else:
        raise SampleError(f"unsupported file type {extension!r}; expected one of {', '.join(SAMPLE_EXTENSIONS)}")
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8)
    if not (np.issubdtype(pixels.dtype, np.integer) or np.issubdtype(pixels.dtype, np.floating)):
        raise SampleError(f"dtype {pixels.dtype} is not numeric")
    if pixels.ndim == 2:
        pixels = pixels[None]  # (H, W) -> (1, H, W)
    if pixels.ndim != 3 or min(pixels.shape) < 1:
        raise SampleError(f"shape {pixels.shape}: an image (H, W) or (C, H, W) is expected")
    if np.issubdtype(pixels.dtype, np.floating) and not np.isfinite(pixels).all():
        raise SampleError("holds NaN or Inf")
    return np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("="))


def file_digest(path: str) -> str:
    """The SHA-256 of a file's bytes: a sample's identity, whatever its name or folder (a copied file
    keeps it; a changed one does not)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_DIGEST_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def depth_of(dtype) -> str:
    """What a source dtype says of the values' scale: '8-bit integers', '16-bit integers', ..., or
    'floats' (any float width: floats are values, not levels of a bit depth)."""
    dtype = np.dtype(dtype)
    return "floats" if dtype.kind == "f" else f"{8 * dtype.itemsize}-bit integers"


# ----------------------------------------------------------------------------- resizing and normalising
def check_resize(name: str, size: tuple[int, int]) -> tuple[int, int]:
    """Refuses (`OptionError`) a resize the allocator could not hold; checked before any file is read."""
    if min(size) < 1 or max(size) > MAX_RESIZE_SIDE:
        raise OptionError(f"--resize {name}={size[0]}x{size[1]}: each side from 1 to {MAX_RESIZE_SIDE} pixels is "
                          "expected")
    return size


def resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, H, W) -> (C, *size) float32, bilinear with antialiasing on the original values (one method
    for every format, band count and bit depth, which Pillow's resize cannot all take)."""
    if tuple(pixels.shape[1:]) == tuple(size):
        return pixels
    image = torch.from_numpy(pixels.astype(np.float32))[None]  # (1, C, H, W)
    return F.interpolate(image, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)[0].numpy()


def fill_nodata(pixels: np.ndarray, nodata: float | None) -> tuple[np.ndarray, int]:
    """The pixels with those equal to `nodata` (compared in the file's own dtype) replaced, channel by channel,
    by the mean of the channel's other pixels, and how many were replaced; unchanged without `nodata`. A
    missing value then weighs nothing in the statistics and normalises to about the channel's mean, before any
    resize mixes it with its neighbours. Raises `SampleError` for a channel with nothing but nodata."""
    if nodata is None:
        return pixels, 0
    with np.errstate(invalid="ignore", over="ignore"):
        same = np.asarray(nodata).astype(pixels.dtype)  # a float rounds as the file's floats did when written
    holds = pixels.dtype.kind == "f" or float(same) == nodata  # an integer file cannot hold 1.5 or -1e38
    missing = pixels == same if holds else np.zeros(pixels.shape, dtype=bool)
    count = int(missing.sum())
    if count == 0:
        return pixels, 0
    filled = pixels.astype(np.float64)
    for channel, mask in enumerate(missing):
        if mask.all():
            raise SampleError(f"channel {channel}: every pixel is the nodata value {nodata:g}")
        if mask.any():
            filled[channel][mask] = filled[channel][~mask].mean()
    return filled, count


def load_sample(path: str, size: tuple[int, int] | None = None, nodata: float | None = None) -> np.ndarray:
    """`read_sample`, its nodata pixels filled (`fill_nodata`), resized to `size` (H, W) when given."""
    pixels, _ = fill_nodata(read_sample(path), nodata)
    return pixels if size is None else resize(pixels, size)


def content_digest(pixels: np.ndarray) -> str:
    """The SHA-256 of a decoded sample (dtype, shape and values): the same for two files whose pixels are the
    same, however each was encoded (a PNG saved again at another compression level)."""
    digest = hashlib.sha256(f"{pixels.dtype.str}{pixels.shape}".encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


def normalise(pixels: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """(C, H, W) -> float32 (x - mean) / std per channel (computed in float64): the one function that
    both prepare_data.py and predict.py apply, so a raw file predicts as its prepared row does. Raises
    `SampleError` for a value beyond float32's range once normalised (training would read Inf)."""
    mean = np.asarray(mean, dtype=np.float64)[:, None, None]
    std = np.asarray(std, dtype=np.float64)[:, None, None]
    values = (pixels.astype(np.float64) - mean) / std
    largest = np.abs(values).reshape(len(values), -1).max(axis=1)
    if not (largest <= FLOAT32_MAX).all():
        channel = int(np.argmax(~(largest <= FLOAT32_MAX)))
        raise SampleError(f"channel {channel}: a value beyond float32's range ({FLOAT32_MAX:.3g}) once normalised "
                          "with the training statistics (an outlier or a nodata value?)")
    return values.astype(np.float32)


def channel_moments(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and sum of squared deviations (float64) of one (C, H, W) sample; Inf where a
    value is too large for them (|x| beyond about 1e154: its square overflows float64)."""
    values = pixels.reshape(len(pixels), -1).astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported by the caller, by channel
        mean = values.mean(axis=1)
        return mean, ((values - mean[:, None]) ** 2).sum(axis=1)


def moments_problem(moments: tuple[np.ndarray, np.ndarray], pixels: np.ndarray) -> str | None:
    """Why a sample's statistics cannot be used (a channel whose values overflow float64 arithmetic,
    such as GDAL's float64 nodata -1.797e308), or None."""
    finite = np.isfinite(moments[0]) & np.isfinite(moments[1])
    if finite.all():
        return None
    channel = int(np.argmin(finite))
    largest = float(np.abs(pixels[channel].astype(np.float64)).max())
    return (f"channel {channel}: values up to {largest:.4g} in magnitude overflow the statistics (float64); a nodata "
            "value such as -1.797e308? Replace it with a real value, or leave the file out (--skip-bad)")


def robust_moments(pixels: np.ndarray) -> np.ndarray:
    """(C, 4) float64 per channel of one sample: median, median absolute deviation, min and max, from which
    the statistics over many samples tell a channel of extreme values (nodata) from one of spread values."""
    values = pixels.reshape(len(pixels), -1).astype(np.float64)
    median = np.median(values, axis=1)
    return np.stack([median, np.median(np.abs(values - median[:, None]), axis=1), values.min(axis=1),
                     values.max(axis=1)], axis=1)


def combine_moments(means: np.ndarray, squares: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std of several samples of `count` values per channel each,
    from their (n, C) means and squared-deviation sums (Chan et al.'s pairwise formula: stable)."""
    with np.errstate(over="ignore", invalid="ignore"):  # non-finite results are refused by the caller
        mean = means.mean(axis=0)
        total = squares.sum(axis=0) + count * ((means - mean) ** 2).sum(axis=0)
        return mean, np.sqrt(total / (count * len(means)))


# ----------------------------------------------------------------------------- predict.py's raw input
def raw_input_files(path: str, input_shape: tuple[int, ...]) -> list[str] | None:
    """The sample files `path` stands for (a folder's, searched recursively, sorted, hidden files and
    folders skipped as prepare_data.py skips them; or the file itself), or None when `path` is a .npy array
    of rows (predict.py's original input, (N, *input_shape); a wrong shape is named by its reading)."""
    if os.path.isdir(path):
        files = []
        for root, folders, names in os.walk(path):
            folders[:] = [name for name in folders if not name.startswith(".")]  # .ipynb_checkpoints and the like
            files += [os.path.join(root, name) for name in names
                      if name.lower().endswith(SAMPLE_EXTENSIONS) and not name.startswith(".")]
        if not files:
            raise DataError(f"{path}: no sample files ({', '.join(SAMPLE_EXTENSIONS)}) in this folder")
        return sorted(files)
    if path.lower().endswith(".npy"):
        try:
            rank = np.load(path, mmap_mode="r", allow_pickle=False).ndim
        except (OSError, ValueError, EOFError):
            return None  # predict.py's own checks name the problem
        # one raw sample is an image, (C, H, W) or (H, W), for a checkpoint that reads images; any other array is
        # rows, whose shape predict.py's own checks compare with the checkpoint's
        return [path] if len(input_shape) == 3 and rank in (2, 3) else None
    return [path] if path.lower().endswith(SAMPLE_EXTENSIONS) else None


def read_raw_samples(files: list[str], preprocessing: dict | None, input_shape: tuple[int, ...],
                     checkpoint_path: str) -> np.ndarray:
    """(N, *input_shape) float32: the files read as prepare_data.py read them, resized as recorded and
    normalised with the checkpoint's statistics. Raises `DataError` on the first unusable file."""
    if preprocessing is None:
        raise DataError(f"{checkpoint_path}: no normalisation recorded (its run's data folder was not made by "
                        "prepare_data.py); give an (N, ...) .npy array of normalised samples instead")
    size = tuple(preprocessing["resize"]) if preprocessing.get("resize") else None
    samples = np.empty((len(files), *input_shape), dtype=np.float32)
    for i, path in enumerate(files):
        try:
            pixels = load_sample(path, size, preprocessing.get("nodata"))
            if pixels.shape != tuple(input_shape):
                raise SampleError(f"sample of shape {pixels.shape} (C, H, W), but {checkpoint_path} expects "
                                  f"{tuple(input_shape)}" + ("" if size else " and its data was not resized"))
            samples[i] = normalise(pixels, preprocessing["mean"], preprocessing["std"])
        except SampleError as error:
            raise DataError(f"{path}: {error}") from None
    return samples
