"""A run's per-epoch files written off the training thread: checkpoints, results.json, state.pt.

At the end of an epoch the training thread copies what is to be written into host buffers (allocated
once and reused; pinned on CUDA, copied on a side stream) and hands the writing (serialisation, disk,
fsync) to a background thread, then trains on. The copy is the snapshot: the files hold the state at
that epoch boundary, never a mix with the next steps. One write is in flight at a time: the next
snapshot, an interruption, a failure and the end of the run wait for it first.

Knows tensors and files (through `outputs`), nothing of the training loop.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import threading
import time

import torch

from discomkd.runs.outputs import RESULTS_FILE, STATE_FILE, save_state
from discomkd.utils.files import write_json, write_payload

# Tests and the benchmark set this to False to write on the training thread (the same files, in the
# same order), the reference the background writes are checked against.
BACKGROUND = True

_IMMUTABLE = (bool, int, float, str, bytes, type(None))


class HostCopy:
    """Copies the tensors of a payload (nested dicts, lists, tuples) into host buffers that are allocated
    at the first copy and reused at the next ones (same path in the payload, same shape and dtype).

    On CUDA the buffers are pinned and the device-to-host copies run on a side stream that starts after
    the work queued so far on the current stream; the current stream then waits for the copies, so no
    later kernel (a forward pass updating batch-norm statistics, an optimizer step) changes a tensor
    before it is copied, while the host thread goes on queueing work. `copy` returns the event the
    writer waits on before reading the buffers.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.buffers: dict[tuple, torch.Tensor] = {}

    def copy(self, payload) -> tuple[object, torch.cuda.Event | None]:
        """A copy of `payload` whose tensors are host buffers (other leaves are copied or immutable)."""
        if not self.cuda:
            return self._copy(payload, ()), None
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)  # the tensors as the work queued so far leaves them
        with torch.cuda.stream(self.stream):
            host = self._copy(payload, ())
        done = torch.cuda.Event()
        done.record(self.stream)
        current.wait_event(done)  # later kernels may change the tensors only once they are copied
        return host, done

    def _copy(self, value, path: tuple):
        if isinstance(value, torch.Tensor):
            value = value.detach()
            buffer = self.buffers.get(path)
            if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
                buffer = torch.empty(value.shape, dtype=value.dtype, pin_memory=self.cuda)
                self.buffers[path] = buffer
            if value.device.type == "cuda":
                value.record_stream(self.stream)  # the allocator keeps its memory until the side stream is done
            buffer.copy_(value, non_blocking=self.cuda)
            return buffer
        if isinstance(value, dict):
            return {key: self._copy(item, path + (key,)) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            copied = [self._copy(item, path + (i,)) for i, item in enumerate(value)]
            return copied if isinstance(value, list) else tuple(copied)
        if isinstance(value, _IMMUTABLE):
            return value
        raise TypeError(f"{type(value).__name__} at {'/'.join(map(str, path))}: not a tensor, container or "
                        "plain value (what torch.load(weights_only=True) reads back)")


class RunWriter:
    """Writes an epoch's files (checkpoints, then results.json, then state.pt) from a background thread.

    `write` waits for the previous write, copies the files' contents (see `HostCopy`) and returns the
    seconds this took on the calling thread; `wait` waits for the write in flight and re-raises its
    error, if any. `timings` holds one {"epoch", "seconds", "state", "state_bytes"} per write, "seconds"
    being the writing thread's time (serialisation, disk, fsync).
    """

    def __init__(self, output: str, device: torch.device, background: bool | None = None):
        self.output = output
        self.copier = HostCopy(device)
        self.background = BACKGROUND if background is None else background
        self.timings: list[dict] = []
        self.waited = 0.0  # seconds the last `write` waited for the one before it
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, epoch: int, results: dict, checkpoints: dict, state: dict | None) -> float:
        """Writes `checkpoints` ({path: payload}), `results` (results.json) and `state` (state.pt, if not
        None) as they are now. Returns the seconds spent on the calling thread."""
        started = time.perf_counter()
        self.wait()
        self.waited = time.perf_counter() - started
        # results (plain data, a history growing to hundreds of epochs): a pickle round trip copies it in
        # about 1 ms at 300 epochs, against 20 ms for a walk in Python (measured on a 2-core EPYC)
        host_results = pickle.loads(pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL))
        shares = state is not None and state.get("results") is results
        host, done = self.copier.copy({"checkpoints": checkpoints, "state": state if not shares else
                                       {k: v for k, v in state.items() if k != "results"}})
        host["results"] = host_results
        if shares:
            host["state"]["results"] = host_results
        if self.background:
            self._thread = threading.Thread(target=self._run, args=(epoch, host, done), name="discomkd-writer")
            self._thread.start()
        else:
            self._write(epoch, host, done)
        return time.perf_counter() - started

    def _write(self, epoch: int, host: dict, done) -> None:
        started = time.perf_counter()
        if done is not None:
            done.synchronize()
        for path, payload in host["checkpoints"].items():
            write_payload(path, payload)
        write_json(os.path.join(self.output, RESULTS_FILE), host["results"])
        if host["state"] is not None:
            save_state(self.output, host["state"])
        self.timings.append({"epoch": epoch, "seconds": time.perf_counter() - started,
                             "state": host["state"] is not None,
                             "state_bytes": os.path.getsize(os.path.join(self.output, STATE_FILE))
                             if host["state"] is not None else 0})

    def _run(self, epoch: int, host: dict, done) -> None:
        try:
            self._write(epoch, host, done)
        except BaseException as error:  # noqa: BLE001 (any error, handed to the training thread by `wait`)
            self._error = error

    def wait(self) -> None:
        """Waits for the write in flight; raises its error, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def __enter__(self):
        return self

    def __exit__(self, error_type, error, traceback):
        self.close(failing=error_type is not None)

    def close(self, failing: bool = False) -> None:
        """Waits for the write in flight. While another error propagates (`failing`), the write's own
        error is not raised over it."""
        if failing:
            with contextlib.suppress(Exception):
                self.wait()
        else:
            self.wait()
