"""Feeding rows to the model: a modality's rows on the device or streamed from its memory map,
the next batch gathered in the background, the row order of an epoch, and batched inference input."""
from __future__ import annotations

import concurrent.futures

import numpy as np
import torch

from discomkd.data.folder import _CHUNK_BYTES
from discomkd.utils.errors import DataError


class RowSource:
    """One modality's rows, on the training device or streamed from the memory-mapped array.

    Resident: the rows of all splits are copied once to the device (in `storage_dtype`) and a
    batch is one `index_select`. Streamed: each batch is gathered from the memory map (sorted
    rows, one read per batch), pinned, and copied asynchronously, the next batch being prepared
    in a background thread while the current one trains.
    """

    def __init__(self, array: np.ndarray, rows: np.ndarray, device: torch.device, resident: bool,
                 storage_dtype: torch.dtype = torch.float32):
        self.array, self.device, self.resident = array, device, resident
        self.rows = np.sort(np.asarray(rows, dtype=np.int64))  # the rows this source can serve
        self.storage_dtype = storage_dtype
        # batches are indexed on the device when the data lives there, on the host otherwise
        self.index_device = device if resident else torch.device("cpu")
        if resident:
            self.data = torch.empty((len(self.rows),) + tuple(array.shape[1:]), dtype=storage_dtype, device=device)
            # copied in bounded chunks, so the host never holds more than one chunk of a large array
            chunk = max(1, _CHUNK_BYTES // max(1, array.itemsize * int(np.prod(array.shape[1:]))))
            for start in range(0, len(self.rows), chunk):
                # native byte order: torch.from_numpy refuses big-endian arrays
                block = torch.from_numpy(np.ascontiguousarray(array[self.rows[start:start + chunk]],
                                                              dtype=array.dtype.newbyteorder("=")))
                self.data[start:start + chunk] = block.to(device=device, dtype=storage_dtype)

    def positions(self, rows: np.ndarray) -> torch.Tensor:
        """Positions of the user's row numbers `rows` within this source, on `index_device`."""
        return torch.from_numpy(np.searchsorted(self.rows, rows)).to(self.index_device)

    def gather(self, positions: torch.Tensor) -> torch.Tensor:
        """(B,) positions -> (B, *sample_shape) float32 batch on the device."""
        if self.resident:
            return self.data.index_select(0, positions).float()
        wanted = self.rows[positions.numpy()]
        order = np.argsort(wanted, kind="stable")  # memory maps read fastest in row order
        block = np.empty((len(wanted),) + self.array.shape[1:], dtype=np.float32)
        block[order] = self.array[wanted[order]]
        batch = torch.from_numpy(block)
        if self.device.type == "cuda":
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch


class Prefetcher:
    """Runs `fetch(i)` for i in 0..n-1 one item ahead on a background worker (streamed data only)."""

    def __init__(self, fetch, count: int, enabled: bool):
        self.fetch, self.count, self.enabled = fetch, count, enabled

    def __iter__(self):
        if not self.enabled:
            for i in range(self.count):
                yield self.fetch(i)
            return
        with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as worker:
            pending = worker.submit(self.fetch, 0) if self.count else None
            for i in range(self.count):
                item = pending.result()  # the fetch's own error, if any, is raised here
                if i + 1 < self.count:
                    pending = worker.submit(self.fetch, i + 1)
                yield item


def epoch_positions(sizes: tuple[int, int], batch_size: int,
                    generator: torch.Generator | None = None) -> tuple[list[tuple[int, int]], list[torch.Tensor]]:
    """Independent shuffles of each modality's training rows for one epoch, and the batch bounds.

    An epoch covers the larger training set once; the smaller one is cycled through fresh
    shuffles. Both modalities get the same number of rows per step. A last batch of a single
    row is merged into the one before (batch normalisation cannot train on one row), so every
    row is seen every epoch and nothing is dropped.

    Returns:
        bounds: [(start, end), ...] per step; positions: one (n,) int64 CPU tensor per modality,
        indexing that modality's training rows.
    """
    length = max(sizes)
    positions = []
    for size in sizes:
        cycles = -(-length // size)
        order = torch.cat([torch.randperm(size, generator=generator) for _ in range(cycles)])[:length]
        positions.append(order)
    starts = list(range(0, length, batch_size))
    if len(starts) > 1 and length - starts[-1] == 1:
        starts.pop()
    bounds = [(start, end) for start, end in zip(starts, starts[1:] + [length])]
    return bounds, positions


def input_batches(array: np.ndarray, rows: np.ndarray | None, batch_size: int, device: torch.device):
    """Yields (start, x): consecutive batches of `array` (rows `rows` if given, else all), as
    (B, *sample_shape) float32 tensors on `device`; `start` is the batch's first position.

    Only one batch (two on CUDA, where the next is read while the current one computes) is in host
    memory at a time, so a memory-mapped `array` larger than memory can be read. Raises `DataError`
    naming the first row that holds NaN or Inf (after conversion to float32).
    """
    count = len(array) if rows is None else len(rows)
    starts = list(range(0, count, batch_size))

    def read(i: int) -> np.ndarray:
        with np.errstate(over="ignore"):  # a value beyond float32 becomes Inf, reported below as the row's error
            return _read(i)

    def _read(i: int) -> np.ndarray:
        start = starts[i]
        if rows is None:
            # a copy: a memory map's rows are read-only, and torch wants a writable buffer
            return np.array(array[start:start + batch_size], dtype=np.float32)
        wanted = rows[start:start + batch_size]
        order = np.argsort(wanted, kind="stable")  # memory maps read fastest in row order
        block = np.empty((len(wanted),) + tuple(array.shape[1:]), dtype=np.float32)
        block[order] = array[wanted[order]]
        return block

    for i, block in enumerate(Prefetcher(read, len(starts), enabled=device.type == "cuda")):
        finite = np.isfinite(block.reshape(len(block), -1)).all(axis=1)
        if not finite.all():
            position = starts[i] + int(np.argmin(finite))
            row = position if rows is None else int(rows[position])
            raise DataError(f"row {row} holds NaN or Inf (as float32); finite numbers are expected")
        x = torch.from_numpy(block)
        if device.type == "cuda":
            x = x.pin_memory().to(device, non_blocking=True)
        yield starts[i], x
