"""Executors: they run a list of jobs with a function that runs one job, and yield each job's result
as it finishes (DomainBed's launchers). They know nothing else of what the jobs do.

An executor is called as `executor(jobs, run_job)` and yields `(job, result)` pairs, where
`result = run_job(job, *results of job.needs)`; one that retries lost jobs adds `may_resume=True`, so
that a retry continues the earlier attempt's saved state. It reads of a job only `name` (unique),
`needs` (the names of the jobs whose results it takes first, listed before it), `uses_gpu` and
`without_gpu()`. It also has `description` (recorded with the results), `start(output)` (checks it
can run jobs that write under `output`, before anything is written; raises `DataError`), and `local`:
True when it runs each job in this process as its iteration of `jobs` (which may be a generator that
prepares each job just before it runs) reaches it, in the order given, so relative paths hold; False
when jobs may run elsewhere and finish in any order: it then takes every job before it yields a
result, and the jobs' paths must be absolute.

`LocalExecutor` runs the jobs one after the other here; `ray_executor.RayExecutor` (`make_executor("ray")`)
runs each as a Ray task, on the GPUs and machines of a Ray cluster.
"""
from __future__ import annotations

import math

import torch

from discomkd.utils.errors import DataError, OptionError


class LocalExecutor:
    """Each job in this process, one after the other, as the iteration of `jobs` reaches it, with `threads` torch
    threads (None: torch's own number, one per core), as a Ray task of that many CPUs has: the models of a comparison
    are small, and on 2 cores one thread trains them faster than two (docs/performance.md)."""

    local = True

    def __init__(self, threads: int | None = None):
        self.threads = threads

    @property
    def description(self) -> str:
        return "local" + (f" ({self.threads} torch thread{'s' * (self.threads > 1)} per model)" if self.threads else "")

    def start(self, output: str) -> None:
        """Nothing to check: this process runs every job."""

    def __call__(self, jobs, run_job):
        """Yields (job, run_job(job, *results of the jobs it needs)) for each job in turn."""
        results, threads = {}, torch.get_num_threads()
        try:
            for job in jobs:
                if self.threads:
                    torch.set_num_threads(self.threads)
                result = run_job(job, *[results[name] for name in job.needs])
                torch.set_num_threads(threads)  # the caller's own number while it reads the result
                results[job.name] = result
                yield job, result
        finally:
            torch.set_num_threads(threads)


def make_executor(name: str, address: str | None = None, gpus_per_task: float | None = None,
                  cpus_per_task: float = 1.0, max_retries: int = 3):
    """A `LocalExecutor` for "local" (`cpus_per_task` torch threads per model, at least 1); for "ray", a
    `ray_executor.RayExecutor` (DataError when Ray is missing)."""
    if name == "local":
        if not 0 < cpus_per_task < math.inf:
            raise OptionError(f"--cpus-per-task {cpus_per_task:g}: a positive number is expected")
        return LocalExecutor(max(1, round(cpus_per_task)))
    try:
        from discomkd.comparison import ray_executor  # Ray is optional: imported only here
    except ModuleNotFoundError as error:
        if error.name != "ray" and not (error.name or "").startswith("ray."):
            raise
        raise DataError("Ray is not installed (--executor ray, --tune and discomkd-tune need it); install it with "
                        "pip install \"discomkd[ray]\" (pip install -r requirements-ray.txt in a checkout)") from None
    return ray_executor.RayExecutor(address, gpus_per_task, cpus_per_task, max_retries)
