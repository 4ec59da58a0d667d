"""The comparison's jobs: what one run trains, each model (or classical baseline) a `Job` of plain data,
and `run_job`, which runs one wherever an executor sends it.

A job names its run (seed, folder, settings), its method and modality, the jobs it needs first (kd and
dkd: the run's teacher, whose checkpoint they read) and the data it reads, as a `DataSource`: the data
folder, its prefixes and encoders, the run's saved split folder (or None: the folder's own split
files) and `describe()` as the comparison read it, which the job checks before it trains. `run_job`
reads the data again, trains, and returns the job's result; an executor that retries a lost job asks
it to continue the saved state.pt of the earlier attempt.

The vocabulary: a job's *result* (`neural_result`, `classical.classical_result`) is what the
comparison keeps of one job, {"seconds", "columns": {prefix or "fused": scores}, ...}; a method's
*entry* in a run is assembled from the results of its jobs (`method_entry`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import time
from dataclasses import dataclass

import numpy as np

from discomkd.comparison.classical import CLASSICAL, classical_result
from discomkd.comparison.tuning_space import model_key, model_settings
from discomkd.data.folder import DataFolder, data_fingerprint, load_data_folder, load_with_split_files
from discomkd.models.methods import FUSED, METHODS
from discomkd.runs.outputs import RESULTS_FILE, STATE_FILE, checkpoint_path, clear_run_outputs, load_state, run_status
from discomkd.runs.ownership import owning, prepare_output
from discomkd.training import loop
from discomkd.training.config import Config, with_method_overrides
from discomkd.training.identity import resume_problem
from discomkd.utils import console
from discomkd.utils.errors import DataError

TEACHER = "teacher"  # the model every distillation method reads, trained once per run

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSource:
    """The data a job reads, as plain data: read again wherever the job runs (`read_data`)."""

    directory: str
    prefixes: tuple[str, str]
    encoders: tuple[str, str]
    split_folder: str | None  # the run's drawn split, saved as split files; None: the folder's own split files
    described: dict | None = None  # DataFolder.describe() as first read, checked by every later reading
    fingerprint: str | None = None  # data_fingerprint() as first read: labels and split rows, checked likewise

    def absolute(self) -> DataSource:
        """The same data named by absolute paths, for a job that may run in another working folder."""
        return dataclasses.replace(self, directory=os.path.abspath(self.directory),
                                   split_folder=self.split_folder and os.path.abspath(self.split_folder))

    def checked(self, data: DataFolder) -> DataSource:
        """This source with `data`'s description and fingerprint, which every later reading must match."""
        return dataclasses.replace(self, described=data.describe(), fingerprint=data_fingerprint(data))


# Folders already read and checked in this process, by their files' sizes and times: the jobs of a local
# comparison reuse the driver's reading rather than checking every array again (seconds per model on
# EuroSAT-sized data). A file written since (labels, splits, arrays) changes the key.
_ALREADY_READ: dict[tuple, DataFolder] = {}
_ALREADY_READ_MAX = 4


def _files_stamp(*folders: str | None) -> tuple:
    stamp = []
    for folder in filter(None, folders):
        with os.scandir(folder) as entries:
            stamp += sorted((entry.path, entry.stat().st_mtime_ns, entry.stat().st_size) for entry in entries
                            if entry.is_file())
    return tuple(stamp)


def read_data(source: DataSource, drawn: dict[str, np.ndarray] | None = None) -> DataFolder:
    """The data folder with its split: the folder's own split files (`source.split_folder` None), the
    split files saved in `source.split_folder`, or `drawn`, the split to be saved there, read before
    anything is written. The one place the comparison and tuning read a data folder; raises `DataError`,
    also when the data differs from `source.described` or `source.fingerprint`."""
    if drawn is not None:
        data = load_data_folder(source.directory, *source.prefixes, source.encoders, splits=drawn,
                                splits_name=source.split_folder)
    else:
        data = _read_once(source)
    if (source.described is not None and data.describe() != source.described) or \
            (source.fingerprint is not None and data_fingerprint(data) != source.fingerprint):
        raise DataError(f"{source.directory}: the data or split differs from what the driver read (changed since "
                        f"the comparison started, or another folder at the same path on {socket.gethostname()})")
    return data


def _read_once(source: DataSource) -> DataFolder:
    try:
        key = (os.path.abspath(source.directory), source.prefixes, source.encoders,
               _files_stamp(source.directory, source.split_folder))
    except OSError:  # a folder missing: the reading below names it
        key = None
    if key in _ALREADY_READ:
        return _ALREADY_READ[key]
    data = load_with_split_files(source.directory, source.prefixes, source.encoders, source.split_folder)
    if key is not None:
        while len(_ALREADY_READ) >= _ALREADY_READ_MAX:
            _ALREADY_READ.pop(next(iter(_ALREADY_READ)))
        _ALREADY_READ[key] = data
    return data


@dataclass(frozen=True)
class Job:
    """One model of one run (`modality`: the prefix of a per-modality method's model, else None), or one
    classical baseline of the run on both modalities. An executor reads `name`, `needs`, `uses_gpu` and
    `without_gpu()`; `run_job` the rest."""

    seed: int
    folder: str  # the run's folder, OUTPUT/run_<seed>; the job writes OUTPUT/run_<seed>/<model>
    config: Config  # the run's settings: seed, verbosity and every training setting
    method: str
    modality: str | None
    data: DataSource
    needs: tuple[str, ...] = ()  # names of the jobs whose results it takes first: kd and dkd, the teacher's

    @property
    def model(self) -> str:
        """The model's name, and its folder's: <method>[_<modality>]."""
        return model_key(self.method, self.modality)

    @property
    def name(self) -> str:
        """Unique among a comparison's jobs; how messages name it."""
        return f"{self.model} of run seed {self.seed}"

    @property
    def uses_gpu(self) -> bool:
        return self.method not in CLASSICAL

    def without_gpu(self) -> Job:
        """The job on the CPU unless its settings name a device: for a worker given no GPU, which still
        sees the machine's GPUs and must not take one from the workers given them."""
        if self.config.device != "auto":
            return self
        return dataclasses.replace(self, config=dataclasses.replace(self.config, device="cpu"))


def plan_run(seed: int, folder: str, config: Config, data: DataFolder, source: DataSource, methods: tuple[str, ...],
             method_settings: dict[str, dict] | None = None) -> tuple[list[Job], dict[str, dict]]:
    """The jobs of one run, each after those it needs, and the entries of the methods skipped (with a
    note) because the training sets share fewer than 2 rows. The teacher is planned once, when any
    method reads it; the classical baselines come last. `method_settings`: per method, settings that
    replace `config`'s for its jobs (a kd or dkd teacher takes the teacher's: `config` unless given); a key
    `<method>_<PREFIX>` (`tuning_space.model_key`), settings for that modality's model alone, which win."""
    method_settings = method_settings or {}

    def config_for(method: str, modality: str | None = None) -> Config:
        return dataclasses.replace(config, **model_settings(method_settings, method, modality))

    jobs, skipped = [], {}
    paired = len(data.paired_train_rows())
    teacher = None  # the teacher's job, once planned
    for method in [m for m in methods if m in METHODS]:
        spec = METHODS[method]
        if (spec.paired or spec.needs_teacher) and paired < 2:
            note = (f"{method} needs paired data (rows present in both modalities' training sets); the training "
                    f"sets share {paired} row(s): skipped")
            logger.info(f"note: {note}")
            skipped[method] = {"status": "skipped", "note": note}
            continue
        if (spec.needs_teacher or method == TEACHER) and teacher is None:
            teacher = Job(seed, folder, config_for(TEACHER), TEACHER, None, source)
            jobs.append(teacher)
        if method != TEACHER:
            needs = (teacher.name,) if spec.needs_teacher else ()
            modalities = [m.prefix for m in data.modalities] if spec.per_modality else [None]
            jobs += [Job(seed, folder, config_for(method, modality), method, modality, source, needs)
                     for modality in modalities]
    jobs += [Job(seed, folder, config, method, None, source) for method in CLASSICAL if method in methods]
    return jobs, skipped


# ----------------------------------------------------------------------------- running one job
def model_config(job: Job, teacher: dict | None = None) -> Config:
    """The settings of a neural job's model, its output the run folder's <model>; `teacher`: the teacher
    job's result, whose checkpoint kd and dkd read."""
    return dataclasses.replace(job.config, method=job.method, modality=job.modality,
                               teacher=None if teacher is None else checkpoint_path(teacher["output"], FUSED),
                               output=os.path.join(job.folder, job.model), overwrite=True)


def neural_result(results: dict, seconds: float) -> dict:
    """What the comparison keeps of one trained model's results: {"seconds", "columns": {column:
    {"best_epoch", "valid", "test", "train_rows"}}, "output", "compiled", "invariance_probe",
    "cross_modal_transfer"} (the last two None for methods without invariant parts)."""
    rows = results["train_rows"]
    columns = {c: {"best_epoch": r["best_epoch"], "valid": r["valid"], "test": r["test"],
                   "train_rows": rows.get(c, max(rows.values()))} for c, r in results["final"].items()}
    return {"seconds": seconds, "columns": columns, "output": results["output"],
            "compiled": results["environment"]["compiled"], "invariance_probe": results.get("invariance_probe"),
            "cross_modal_transfer": results.get("cross_modal_transfer")}


def resumable(config: Config, data: DataFolder) -> bool:
    """`config.output` holds the state.pt of an unfinished training of this very run (an earlier attempt
    of the same job: `identity.resume_problem` finds nothing that differs), which `loop.resume`
    continues. A state.pt of another run is logged and trained over from the start."""
    if not os.path.exists(os.path.join(config.output, STATE_FILE)):
        return False
    try:
        saved = load_state(config.output)["results"]
        problem = resume_problem(saved, data, with_method_overrides(config))
    except (DataError, KeyError, TypeError, AttributeError):
        problem = "its state.pt cannot be read"
    if problem is not None:
        logger.warning(f"{config.output}: not resumed ({problem}); trained from the start")
    return problem is None


def finished_before(config: Config, data: DataFolder) -> dict | None:
    """The results of a finished training of this very job in `config.output` (an earlier attempt that
    finished: `identity.resume_problem` finds nothing that differs), or None."""
    if run_status(config.output) != "finished":
        return None
    try:
        with open(os.path.join(config.output, RESULTS_FILE)) as file:
            saved = json.load(file)
        problem = resume_problem(saved, data, with_method_overrides(config))
        missing = [c for c in saved["final"] if not os.path.exists(checkpoint_path(config.output, c))]
        if problem is None and missing:
            problem = f"{os.path.basename(checkpoint_path(config.output, missing[0]))} is missing"
    except (OSError, ValueError, DataError, KeyError, TypeError, AttributeError):
        problem = "its results.json cannot be read"
    if problem is not None:
        logger.warning(f"{config.output}: not kept ({problem}); trained again")
        return None
    return saved


def run_job(job: Job, *needed: dict, on_epoch=None, may_resume: bool = False) -> dict:
    """Runs `job` on its data, read again here; `needed`: the results of the jobs it needs, in order.
    The training loop's own lines are shown with a verbose config only; `on_epoch` goes to `loop.fit`;
    `may_resume`: an earlier attempt's finished training of the same job and data is kept, and its
    unfinished one (state.pt) continued, rather than started again.

    Returns the job's result: `classical.classical_result`, or `neural_result` plus "resumed" (whether
    it kept or continued an earlier attempt)."""
    data = read_data(job.data)
    if job.method in CLASSICAL:
        return classical_result(data, job.method)
    config = model_config(job, *needed)
    finished = finished_before(config, data) if may_resume else None
    if finished is not None:
        return {**neural_result(finished, recorded_seconds(finished)), "resumed": True}
    started = time.time()
    resumed = may_resume and resumable(config, data)
    with contextlib.nullcontext() if config.verbose else console.only_warnings(loop.__name__):
        if resumed:
            results = loop.resume(config.output, on_epoch=on_epoch)
        else:
            output = prepare_output(config.output, True)
            os.makedirs(output, exist_ok=True)
            with owning(output):  # an earlier attempt's files, of another run: none may mix with this one's
                clear_run_outputs(output)
                results = loop.fit(config, data, output, on_epoch=on_epoch)
    seconds = recorded_seconds(results) if resumed else time.time() - started  # a resumed run: both attempts
    return {**neural_result(results, seconds), "resumed": resumed}


def recorded_seconds(results: dict) -> float:
    """A training's time as its results record it, every attempt's epochs counted: training, evaluation and
    writes (what a comparison counts for a model it kept or continued, whose wall time it did not see whole)."""
    return results.get("training_seconds", 0.0) + results.get("write_seconds", 0.0)


# ----------------------------------------------------------------------------- a run's entries
def method_entry(method: str, results: list[dict], teacher: dict | None) -> dict:
    """A method's entry in a run's results, from its jobs' results and the teacher's (whose time kd and
    dkd include)."""
    if method in CLASSICAL:  # one job: the baseline on both modalities
        (result,) = results
        return {"status": "done", "seconds": result["seconds"], "columns": result["columns"]}
    spec = METHODS[method]
    return {"status": "done", "columns": {c: r for result in results for c, r in result["columns"].items()},
            "seconds": sum(r["seconds"] for r in results) + (teacher["seconds"] if spec.needs_teacher else 0.0),
            "part_seconds": [r["seconds"] for r in results], "compiled": all(r["compiled"] for r in results),
            "outputs": [r["output"] for r in results], "invariance_probe": results[0]["invariance_probe"],
            "cross_modal_transfer": results[0].get("cross_modal_transfer")}
