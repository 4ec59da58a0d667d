"""An executor that runs each job as a Ray task, on the GPUs and machines of a Ray cluster
(compare.py --executor ray, tune.py).

Every job is submitted at once; a job that needs others takes their results as arguments (ObjectRefs),
so Ray starts it once they have finished. A task whose worker dies or whose node is lost is retried
(`max_retries`), and the job function is told it may continue the earlier attempt's saved state. Every
task first checks that it sees the output folder the driver writes (a marker file), so that jobs on a
node without the shared storage fail with a clear message. Results are yielded as tasks finish, in any
order; closing the iteration (Ctrl-C, a failed task) cancels what still runs.

Ray is optional (requirements-ray.txt); `executors.make_executor` imports this module only for "ray".
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import math
import os
import secrets
import signal
import socket
import threading
import uuid

import ray
import torch

from discomkd.utils import console
from discomkd.utils.errors import DataError, OptionError, TrainingError
from discomkd.utils.files import write_text

MARKER_FILE = ".ray-shared-storage"  # written by the driver into the output folder, read by every task
# a cancelled task finishes its step and writes its state.pt; longer than any step of the paper's models
CANCEL_WAIT_SECONDS = 60
DEFAULT_MAX_RETRIES = 3  # a worker or node lost three times in a row is a problem to look at, not to retry

logger = logging.getLogger(__name__)


class SharedStorageError(RuntimeError):
    """A task cannot see the output folder the driver writes: it is not on storage every node sees."""


def check_shared_storage(output: str, token: str) -> None:
    """Raises `SharedStorageError` unless this node reads the driver's marker in `output`."""
    try:
        with open(os.path.join(output, MARKER_FILE)) as handle:
            seen = handle.read()
    except OSError:
        seen = None
    if seen != token:
        raise SharedStorageError(
            f"{output}: node {socket.gethostname()} does not see the output folder the driver writes (marker "
            f"{MARKER_FILE} {'missing' if seen is None else 'differs'}); --output must be on storage every node "
            "of the Ray cluster sees at the same path (NFS or another shared file system)")


def run_task(run_job, job, output: str, token: str, *needed):
    """One job on a Ray worker: `run_job(job, *needed, may_resume=True)` once this node is known to see
    `output` (else `SharedStorageError`); a job given no GPU is moved off the node's GPUs."""
    check_shared_storage(output, token)
    if torch.cuda.is_available() and not ray.get_gpu_ids():
        job = job.without_gpu()
    console.configure_output()  # the worker's lines reach the driver through Ray's log forwarding
    return run_job(job, *needed, may_resume=True)


# Ray's authentication settings (its environment variables): a user who set any of them chose for himself.
RAY_AUTH_SETTINGS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


@contextlib.contextmanager
def token_in_process(local: bool):
    """For a local Ray started by this process, token authentication (Ray's default for a local cluster) with a
    fresh random token held in this process's environment, which its workers inherit: Ray then writes no
    ~/.ray/auth_token into the user's home (which would outlive the run, and switch token authentication on for
    every later local Ray of that user), and its warning that it switched token authentication on, which says
    nothing the user must act on, is not shown. Unless the user set Ray's own authentication settings."""
    if not local or any(name in os.environ for name in RAY_AUTH_SETTINGS):
        yield
        return
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # Ray sets RAY_AUTH_MODE=token itself, and reads it again
    with console.only_warnings(RAY_AUTH_LOGGER, logging.ERROR):
        yield


def connect(address: str | None, cpus_per_task: float, gpus_per_task: float) -> None:
    """Starts Ray on this machine (address None) or joins the cluster at `address`, unless this process
    already did; raises `DataError` when that fails, when the project is not installed (workers import
    it as an installed package) or when no node has the CPUs and GPUs one task asks for."""
    if not ray.is_initialized():
        try:
            importlib.metadata.distribution("discomkd")
        except importlib.metadata.PackageNotFoundError:
            raise DataError("Ray workers import the project as an installed package: run `pip install -e .` in "
                            "the project's folder first (make demo and make test do)") from None
        sigterm = signal.getsignal(signal.SIGTERM)
        try:
            with token_in_process(address is None):
                ray.init(address=address, include_dashboard=False, log_to_driver=True,
                         runtime_env={"env_vars": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}})
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise OptionError(f"--ray-address {address}: cannot start or reach Ray: "
                            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
        if callable(sigterm) and threading.current_thread() is threading.main_thread():
            # Ray's core puts its own SIGTERM handler in (a stack trace, then abort: exit 134, runs half kept):
            # the command's own is put back, so that SIGTERM stops a comparison or a search as Ctrl-C does
            signal.signal(signal.SIGTERM, sigterm)
    resources = ray.cluster_resources()
    for name, need in (("GPU", gpus_per_task), ("CPU", cpus_per_task)):
        if need > resources.get(name, 0):
            raise OptionError(f"--{name.lower()}s-per-task {need:g}: the Ray cluster has {resources.get(name, 0):g} "
                            f"{name}(s) in all; no task could start")


class RayExecutor:
    """The executor on a Ray cluster: a local one started on this machine (address None) or the one at
    `address` ("auto": the cluster `ray start` started here). See `executors` for what an executor does."""

    local = False  # tasks run on any node and finish in any order

    def __init__(self, address: str | None = None, gpus_per_task: float | None = None, cpus_per_task: float = 1.0,
                 max_retries: int = DEFAULT_MAX_RETRIES):
        if gpus_per_task is None:
            gpus_per_task = 1.0 if torch.cuda.is_available() else 0.0
        if not 0 <= gpus_per_task < math.inf or (gpus_per_task > 1 and gpus_per_task != int(gpus_per_task)):
            raise OptionError(f"--gpus-per-task {gpus_per_task}: 0, a fraction of one GPU, or a whole number is expected")
        if not 0 < cpus_per_task < math.inf:
            raise OptionError(f"--cpus-per-task {cpus_per_task}: a positive number is expected")
        if max_retries < 0:
            raise OptionError(f"--max-retries {max_retries}: 0 or more is expected")
        self.address, self.max_retries = address, max_retries
        self.gpus, self.cpus = float(gpus_per_task), float(cpus_per_task)
        self.output = None  # the folder every task must see, set by `start`
        self.description = (f"ray ({address or 'local'}): {self.cpus:g} CPU and {self.gpus:g} GPU per task, "
                            f"max_retries {max_retries}")

    def start(self, output: str) -> None:
        """Connects to (or starts) Ray and checks the cluster can run a task; raises `DataError`. Every
        task will check that it sees `output` (which must exist when the jobs are submitted)."""
        connect(self.address, self.cpus, self.gpus)
        self.output = os.path.abspath(output)

    def __call__(self, jobs, run_job):
        """Submits every job at once; yields (job, result) as each finishes."""
        token = uuid.uuid4().hex
        write_text(os.path.join(self.output, MARKER_FILE), token)
        task = ray.remote(run_task)
        submitted, refs = {}, {}  # ref -> job; job name -> ref
        for job in jobs:
            ref = task.options(num_cpus=self.cpus, num_gpus=self.gpus if job.uses_gpu else 0,
                               max_retries=self.max_retries).remote(run_job, job, self.output, token,
                                                                    *[refs[name] for name in job.needs])
            submitted[ref], refs[job.name] = job, ref
        logger.info(f"ray: {len(submitted)} tasks submitted ({self.description})")
        waiting = list(submitted)
        try:
            while waiting:
                (ref,), waiting = ray.wait(waiting, num_returns=1)
                yield submitted[ref], self._result(ref, submitted[ref])
        finally:
            for ref in waiting:  # Ctrl-C, a failed task, or the driver stopped early
                ray.cancel(ref)  # a running task gets a KeyboardInterrupt: the training loop saves its state.pt
            # the caller may remove the folders of unfinished jobs: not while their tasks still write
            ended, _ = ray.wait(waiting, num_returns=len(waiting), timeout=CANCEL_WAIT_SECONDS)
            for ref in ended:
                with contextlib.suppress(ray.exceptions.RayError):
                    ray.get(ref)  # read, so that Ray does not report the cancellation as an unhandled error

    @staticmethod
    def _result(ref, job):
        """The task's result; a failed task (or one whose node lacks the shared storage) raises `TrainingError`."""
        try:
            return ray.get(ref)
        except (ray.exceptions.RayError, SharedStorageError) as error:
            cause = getattr(error, "cause", None) or error
            raise TrainingError(f"ray task {job.name} failed: {str(cause).strip().splitlines()[-1]}") from None
