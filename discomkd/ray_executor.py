"""The comparison's models as Ray tasks, on the GPUs and machines of a Ray cluster (compare.py --executor ray).

Every (run, method[, modality]) is one task, and every classical baseline of a run one more; each does
exactly what the local executor does for it (`compare.train_neural`, `compare.classical_columns`): the
same settings, the same run folder, the same data and split, read from the shared output folder. A
distillation task takes the teacher task's result (an ObjectRef argument) and reads its checkpoint, so
Ray starts it once the teacher has finished. A task whose worker dies or whose node is lost is retried
(`max_retries`) and resumes from its own state.pt. The driver gathers a run's entries once all of its
tasks are done and hands them to `compare.compare`, which writes comparison.json/.md after each run and
on interruption, as it does for the local executor; closing the executor cancels what still runs.

Ray is optional (requirements-ray.txt); compare.py imports this module only for --executor ray.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import os
import socket
import time
import uuid
from dataclasses import dataclass

import ray
import torch

from discomkd.comparison import (
    CLASSICAL,
    TEACHER,
    RunContext,
    announcer,
    classical_columns,
    classical_entry,
    load_run_data,
    neural_config,
    neural_entry,
    neural_part,
    neural_plan,
    split_name,
    teacher_checkpoint,
    train_neural,
)
from discomkd.config import Config
from discomkd.data import read_split_files
from discomkd.errors import DataError, TrainingError
from discomkd.methods import METHODS
from discomkd.run_files import STATE_FILE, load_state, write_text
from discomkd.training import resume

MARKER_FILE = ".ray-shared-storage"  # written by the driver into the output folder, read by every task
# a cancelled task finishes its step and writes its state.pt; longer than any step of the paper's models
CANCEL_WAIT_SECONDS = 60
DEFAULT_MAX_RETRIES = 3  # a worker or node lost three times in a row is a problem to look at, not to retry


class SharedStorageError(RuntimeError):
    """A task cannot see the output folder the driver writes: it is not on storage every node sees."""


@dataclass(frozen=True)
class RunSpec:
    """What a task needs to rebuild its run's `RunContext` on any node (no arrays: the data is read
    there, from the same paths)."""

    config: Config  # the run's settings, its seed included
    folder: str  # the run's folder, OUTPUT/run_<seed>
    directory: str
    prefixes: tuple[str, str]
    per_run_splits: bool  # the split was drawn for the run and saved in its folder
    described: dict  # data.describe() as the driver saw it
    verbose: bool


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


def run_context(run: RunSpec) -> RunContext:
    """The run's context as the driver built it, data and split read again on this node."""
    output = os.path.dirname(run.folder)
    splits = read_split_files(split_name(output, run.config.seed), run.prefixes) if run.per_run_splits else None
    data = load_run_data(run.config, run.directory, run.prefixes, output, run.config.seed, splits)
    if data.describe() != run.described:
        raise DataError(f"{run.directory}: the data or split differs from what the driver read (changed since "
                        f"the comparison started, or another folder at the same path on {socket.gethostname()})")
    return RunContext(run.config, run.folder, data, run.verbose, print)


def resumable(config: Config) -> bool:
    """`config.output` holds the state.pt of an unfinished training with exactly these settings (an
    earlier attempt of the same task), which `functions.resume` continues."""
    if not os.path.exists(os.path.join(config.output, STATE_FILE)):
        return False
    try:
        saved = load_state(config.output)["results"]["config"]
    except (DataError, KeyError, TypeError):
        return False  # unreadable: trained again from the start
    return saved == dataclasses.asdict(dataclasses.replace(config, **METHODS[config.method].overrides))


def neural_task(run: RunSpec, token: str, method: str, modality: str | None, teacher: dict | None,
                on_epoch=None) -> dict:
    """One model of a run: `compare.train_neural`, or its resumption after a lost attempt. Returns
    `compare.neural_part`, plus "resumed": whether it continued a saved state."""
    check_shared_storage(os.path.dirname(run.folder), token)
    context = run_context(run)
    if context.config.device == "auto" and torch.cuda.is_available() and not ray.get_gpu_ids():
        # a task given no GPU still sees the node's GPUs; it must not take one from the tasks given them
        context = dataclasses.replace(context, config=dataclasses.replace(context.config, device="cpu"))
    checkpoint = teacher_checkpoint(teacher) if teacher is not None else None
    config = neural_config(context, method, modality, checkpoint)
    if resumable(config):
        started = time.time()
        results = resume(config.output, log=print if run.verbose else _silent, on_epoch=on_epoch)
        return {**neural_part(results, time.time() - started), "resumed": True}
    return {**train_neural(context, method, modality, checkpoint, on_epoch), "resumed": False}


def classical_task(run: RunSpec, token: str, method: str) -> dict:
    """A classical baseline of a run on both modalities: `compare.classical_columns`."""
    check_shared_storage(os.path.dirname(run.folder), token)
    return classical_columns(run_context(run).data, method)


def _silent(line: str) -> None:
    """Drops the engine's lines (the driver prints one line per model)."""


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
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=True,
                     runtime_env={"env_vars": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}})
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise DataError(f"--ray-address {address}: cannot start or reach Ray: "
                            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    resources = ray.cluster_resources()
    for name, need in (("GPU", gpus_per_task), ("CPU", cpus_per_task)):
        if need > resources.get(name, 0):
            raise DataError(f"--{name.lower()}s-per-task {need:g}: the Ray cluster has {resources.get(name, 0):g} "
                            f"{name}(s) in all; no task could start")


class RayExecutor:
    """`compare.compare`'s executor on a Ray cluster: a local one started on this machine (address None)
    or the one at `address` ("auto": the cluster `ray start` started here)."""

    def __init__(self, address: str | None = None, gpus_per_task: float | None = None, cpus_per_task: float = 1.0,
                 max_retries: int = DEFAULT_MAX_RETRIES, on_epoch=None):
        if gpus_per_task is None:
            gpus_per_task = 1.0 if torch.cuda.is_available() else 0.0
        if not 0 <= gpus_per_task or (gpus_per_task > 1 and gpus_per_task != int(gpus_per_task)):
            raise DataError(f"--gpus-per-task {gpus_per_task}: 0, a fraction of one GPU, or a whole number is expected")
        if not cpus_per_task > 0:
            raise DataError(f"--cpus-per-task {cpus_per_task}: a positive number is expected")
        if max_retries < 0:
            raise DataError(f"--max-retries {max_retries}: 0 or more is expected")
        self.address, self.gpus, self.cpus, self.max_retries = address, float(gpus_per_task), float(cpus_per_task), max_retries
        self.on_epoch = on_epoch
        self.description = (f"ray ({address or 'local'}): {self.cpus:g} CPU and {self.gpus:g} GPU per task, "
                            f"max_retries {max_retries}")

    def start(self, output: str) -> None:
        """Connects to (or starts) Ray and checks the cluster can run a task; raises `DataError`."""
        connect(self.address, self.cpus, self.gpus)

    def _remote(self, function, gpus: float):
        return ray.remote(function).options(num_cpus=self.cpus, num_gpus=gpus, max_retries=self.max_retries)

    def __call__(self, contexts, methods: tuple[str, ...], log):
        """Submits every run's tasks at once; yields (context, entries) for each run as its last task finishes."""
        contexts = list(contexts)  # every run's split is saved before any task reads it
        token = uuid.uuid4().hex
        write_text(os.path.join(os.path.dirname(contexts[0].folder), MARKER_FILE), token)
        neural, classical = self._remote(neural_task, self.gpus), self._remote(classical_task, 0)
        tasks, runs = {}, []  # tasks: ref -> (run index, method, modality); runs: per run its plan and parts
        for index, context in enumerate(contexts):
            run = RunSpec(context.config, os.path.abspath(context.folder), os.path.abspath(context.data.directory),
                          tuple(context.prefixes),
                          context.data.splits_from is not None, context.data.describe(), context.verbose)
            plan, entries = neural_plan(context, methods)
            teacher = None  # the teacher task's ref: kd and dkd tasks take its result
            for method, targets in plan:
                for target in targets:
                    reads_teacher = teacher if METHODS[method].needs_teacher else None
                    ref = neural.remote(run, token, method, target, reads_teacher, self.on_epoch)
                    teacher = ref if method == TEACHER else teacher
                    tasks[ref] = (index, method, target)
            for method in [m for m in CLASSICAL if m in methods]:
                tasks[classical.remote(run, token, method)] = (index, method, None)
            runs.append({"plan": plan, "entries": entries, "parts": {}, "left": sum(i == index for i, _, _ in tasks.values())})
        log(f"ray: {len(tasks)} tasks for {len(contexts)} run(s) submitted ({self.description})")
        waiting, finished = list(tasks), 0
        try:
            for index, run in enumerate(runs):
                if run["left"] == 0:  # every method of the run skipped: nothing to wait for
                    yield contexts[index], self._entries(run, methods)
            while waiting:
                (ref,), waiting = ray.wait(waiting, num_returns=1)
                index, method, target = tasks[ref]
                context, run = contexts[index], runs[index]
                try:
                    value = ray.get(ref)
                except (ray.exceptions.RayError, SharedStorageError) as error:
                    cause = getattr(error, "cause", None) or error
                    raise TrainingError(f"ray task {method}{'' if target is None else '_' + target} of run seed "
                                        f"{context.config.seed} failed: {str(cause).strip().splitlines()[-1]}") from None
                finished += 1
                announce = announcer(log, f"[{finished}/{len(tasks)}] seed {context.config.seed}  ")
                if method in CLASSICAL:
                    for prefix, result in value.items():
                        announce(method, prefix, result, result["seconds"])
                    run["entries"][method] = classical_entry(value)
                else:
                    for column, result in value["columns"].items():
                        announce(method + (" (resumed)" if value["resumed"] else ""), column, result, value["seconds"])
                    run["parts"][(method, target)] = {k: v for k, v in value.items() if k != "resumed"}
                run["left"] -= 1
                if run["left"] == 0:
                    yield context, self._entries(run, methods)
        finally:
            for ref in waiting:  # Ctrl-C, a failed task, or the driver stopped early
                ray.cancel(ref)  # a running task gets a KeyboardInterrupt: the engine saves its state.pt
            # the comparison may remove the folders of unfinished runs: not while their tasks still write
            ended, _ = ray.wait(waiting, num_returns=len(waiting), timeout=CANCEL_WAIT_SECONDS)
            for ref in ended:
                with contextlib.suppress(ray.exceptions.RayError):
                    ray.get(ref)  # read, so that Ray does not report the cancellation as an unhandled error

    @staticmethod
    def _entries(run: dict, methods: tuple[str, ...]) -> dict:
        """A finished run's entries, assembled as `compare.run_methods` assembles them."""
        entries, parts = run["entries"], run["parts"]
        teacher = parts.get((TEACHER, None))
        for method, targets in run["plan"]:
            if method in methods:
                entries[method] = neural_entry(method, [parts[(method, t)] for t in targets], teacher)
        return {method: entries[method] for method in methods}
