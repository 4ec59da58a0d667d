"""The GPU check: one call on one H100/H200, planned for under 8 minutes, nothing from the network.

    discomkd-gpu-check OUTDIR                  # the GPU check (or bash tools/gpu_check.sh OUTDIR in a checkout)
    discomkd-gpu-check OUTDIR --cpu-small      # the same steps at toy size on a CPU (tested)

(a) the EuroSAT-shape end-to-end epoch (the benchmark's `--end-to-end`), fast path then plain path,
    state.pt snapshots included; (b) eager fp32, compiled fp32 and eager bf16 on the embedded example,
    same seed: loss trajectories and validation F1 side by side; (c) a run with deterministic algorithms
    killed with SIGKILL after an epoch, resumed, finished, and compared with the same run uninterrupted,
    plus a direct check that the side-stream snapshot of the training state, taken while training steps
    are still queued, equals a copy taken on the training stream at the same point; (d) the test suite,
    only with --tests, and then on the CPU (CUDA hidden): on the GPU its compiled tests would spend the
    minutes the check has, and two of them assert bit-identical results that cuDNN's autotuning does not give.

Each step runs in a process of its own (no compiler state carried from one to the next) within a time
budget, with TORCH_LOGS=recompiles,graph_breaks,perf_hints captured to OUTDIR/logs/<step>.log.
OUTDIR/gpu_check.json and OUTDIR/verdict.txt are rewritten before and after every step, so a check killed
mid-way leaves the steps it finished on disk. The verdict says for each step whether the fast path ran
compiled, the compile error if any, the graphs compiled, graph breaks, recompiles and the graphs left out
of CUDA graphs. docs/gpu-check.md gives the planned time of each step.
"""
from __future__ import annotations

import ctypes
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

import torch

from discomkd.analysis.benchmarking import PREFIXES, SHAPES, measure_end_to_end, write_synthetic_folder
from discomkd.data.example import make_digits_example
from discomkd.data.folder import default_encoder, load_data_folder
from discomkd.runs.writer import HostCopy
from discomkd.training import compiling
from discomkd.training.config import Config, plain_path
from discomkd.training.epoch import start_epoch, train_one_epoch
from discomkd.training.loop import state_payload
from discomkd.training.run import run
from discomkd.training.setup import build_setup
from discomkd.utils.files import write_json, write_text
from discomkd.utils.seeds import seed_everything

# the folder that holds the package: the checkout (its tests/ beside it) or site-packages; the steps' processes
# start there so that `python -m discomkd...` finds the package either way
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MINIMUM_STEP_SECONDS = 30  # a step is skipped when less of the check's budget is left
STEPS = ("a_end_to_end", "b_trajectories", "c_kill_resume", "d_tests")
TITLES = {"a_end_to_end": "(a) end-to-end epoch", "b_trajectories": "(b) compiled/bf16 vs eager fp32",
          "c_kill_resume": "(c) SIGKILL and resume", "d_tests": "(d) test suite"}
TORCH_LOGS = "recompiles,graph_breaks,perf_hints"
# (c): a resumed run is judged equal to the uninterrupted one within this relative difference of each epoch's
# mean loss terms. With deterministic algorithms both are expected bit-identical; the tolerance is far
# below what a resume bug gives (other random draws or a stale optimizer state move the losses by 1e-2 and
# more), and keeps a kernel that is deterministic in practice but not marked so from turning the verdict.
RESUME_TOLERANCE = 1e-4
# (c): the GPU is held this many cycles (about 0.3 s at 2 GHz) before the steps of the snapshot check are
# queued, so that they are still queued when the snapshot is taken
HOLD_CYCLES = 2**29
# Sizes and time budgets (seconds) per preset. GPU: the EuroSAT shape for (a), 3 epochs of the fast path (the
# first compiles and is left out of the means) and 1 of the plain path (nothing to compile); the embedded
# example for (b) and (c); the budgets are docs/gpu-check.md's planned times with a margin. CPU: toy sizes,
# a ResNet-18 on 8x8 images compiled with the aot_eager backend in (a), vectors in (b) and (c).
PRESETS = {
    "gpu": {"device": "cuda", "backend": "inductor", "shape": SHAPES["eurosat"], "batch_size": 128,
            "fast_epochs": 3, "plain_epochs": 1, "example": "digits", "epochs": 4, "kill_after": 2,
            "budget": 8 * 60,
            "budgets": {"a_end_to_end": 270, "b_trajectories": 135, "c_kill_resume": 60, "d_tests": 300}},
    "cpu-small": {"device": "cpu", "backend": "aot_eager",
                  "shape": {"samples": 96, "first": (2, 8, 8), "second": (6,), "classes": 3}, "batch_size": 16,
                  "fast_epochs": 2, "plain_epochs": 1, "example": "synthetic", "epochs": 3, "kill_after": 1,
                  "budget": 8 * 60,
                  "budgets": {"a_end_to_end": 120, "b_trajectories": 120, "c_kill_resume": 120, "d_tests": 300}},
}
VARIANTS = {"eager fp32": ("no", "fp32"), "compiled fp32": ("yes", "fp32"), "eager bf16": ("no", "bf16")}
# (c)'s runs: main_DisCoM-KD.py with deterministic algorithms (warn_only: an operation without a
# deterministic kernel warns instead of failing the run; the tolerance above covers it)
DETERMINISTIC_RUN = ("import runpy, sys, torch; torch.use_deterministic_algorithms(True, warn_only=True); "
                     "sys.argv = ['main_DisCoM-KD.py', *sys.argv[1:]]; "
                     "runpy.run_module('discomkd.commands.train', run_name='__main__')")




def _die_with_parent() -> None:
    """Run in a child process before it starts (Linux): SIGKILL when its parent dies, so that a check
    killed mid-way leaves no step, and a step no training run, behind."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


PR_SET_PDEATHSIG = 1  # prctl's option (linux/prctl.h)
DIE_WITH_PARENT = _die_with_parent if sys.platform.startswith("linux") else None


# ----------------------------------------------------------------------------- the steps (each in its own process)
class StepRecord:
    """A step's result so far, rewritten to OUTDIR/steps/<step>.json at each `save`."""

    def __init__(self, output: str, name: str):
        self.path = os.path.join(output, "steps", f"{name}.json")
        self.values: dict = {}

    def save(self, **values) -> None:
        self.values.update(values)
        write_json(self.path, self.values)


def end_to_end(preset: dict, work: str, record: StepRecord) -> None:
    """(a): DisCoM-KD's fast path, then its plain path, on synthetic data of the preset's shape."""
    shape = preset["shape"]
    folder = os.path.join(work, "synthetic")
    os.makedirs(folder)
    started = time.perf_counter()
    write_synthetic_folder(folder, shape["samples"], shape["first"], shape["second"], shape["classes"])
    record.save(shape={k: list(v) if isinstance(v, tuple) else v for k, v in shape.items()},
                encoders=[default_encoder(p, s) for p, s in zip(PREFIXES, (shape["first"], shape["second"]))],
                data_generation_seconds=time.perf_counter() - started)
    fast = Config(device=preset["device"], batch_size=preset["batch_size"], verbose=0,
                  compile="auto" if preset["device"] == "cuda" else "yes")
    try:
        for name, config, epochs in (("fast", fast, preset["fast_epochs"]),
                                     ("plain", plain_path(fast), preset["plain_epochs"])):
            record.save(**{name: measure_end_to_end(config, folder, epochs, "discomkd")})
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    record.save(plain_over_fast=record.values["plain"]["mean"]["whole"] / record.values["fast"]["mean"]["whole"])


def example_folder(preset: dict, work: str) -> tuple[str, tuple[str, str]]:
    folder = os.path.join(work, "example")
    if preset["example"] == "digits":
        make_digits_example(folder, overwrite=True)
        return folder, ("IMAGE", "PROJ")
    os.makedirs(folder, exist_ok=True)
    write_synthetic_folder(folder, 120, (8,), (6,), 3)
    return folder, ("FIRST", "SECOND")


def trajectories(preset: dict, work: str, record: StepRecord) -> None:
    """(b): the example trained by each variant (compile, precision), same seed and epochs, in one process:
    each setup resets dynamo's caches when it is built."""
    folder, prefixes = example_folder(preset, work)
    runs = {}
    for name, (compile_setting, precision) in VARIANTS.items():
        config = Config(epochs=preset["epochs"], device=preset["device"], compile=compile_setting,
                        precision=precision, verbose=0, output=os.path.join(work, "runs", name.replace(" ", "-")))
        started = time.perf_counter()
        results = run(config, folder, *prefixes)
        runs[name] = {"seconds": time.perf_counter() - started, "environment": results["environment"],
                      "total_loss": [h["loss"]["total"] for h in results["history"]],
                      "valid_weighted_f1": {p: [h[p]["valid"]["weighted_f1"] for h in results["history"]]
                                            for p in prefixes}}
        reference = runs["eager fp32"]["total_loss"]
        runs[name]["max_relative_loss_difference"] = max(abs(a - b) / max(abs(b), 1e-12)
                                                         for a, b in zip(runs[name]["total_loss"], reference))
        record.save(runs=runs)


def kill_and_resume(preset: dict, work: str, record: StepRecord) -> None:
    """(c): a run with deterministic algorithms, uninterrupted (in this process), then the same run killed
    with SIGKILL once `kill_after` epochs are in results.json and state.pt is there, and resumed (each in
    a process of its own); then the snapshot check."""
    folder, prefixes = example_folder(preset, work)
    # cuBLAS's deterministic workspace, for this process's runs and the processes it starts
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.use_deterministic_algorithms(True, warn_only=True)  # this process runs step (c) alone
    config = Config(epochs=preset["epochs"], device=preset["device"], compile="no", precision="fp32",
                    save_every_seconds=0.0, verbose=0, output=os.path.join(work, "uninterrupted"))
    expected = [h["loss"] for h in run(config, folder, *prefixes)["history"]]

    def command(output: str) -> list[str]:  # the same run through main_DisCoM-KD.py
        return [sys.executable, "-c", DETERMINISTIC_RUN, folder, *prefixes, "--epochs", str(config.epochs),
                "--device", config.device, "--compile", "no", "--precision", "fp32", "--save-every-seconds", "0",
                "--output", output, "--quiet"]

    output = os.path.join(work, "killed")
    process = subprocess.Popen(command(output), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, preexec_fn=DIE_WITH_PARENT)
    done, deadline = 0, time.time() + 180
    while process.poll() is None and time.time() < deadline:
        try:
            with open(os.path.join(output, "results.json")) as handle:
                done = len(json.load(handle)["history"])
        except (OSError, ValueError, KeyError):
            done = 0
        if done >= preset["kill_after"] and os.path.exists(os.path.join(output, "state.pt")):
            break
        time.sleep(0.01)
    if process.poll() is not None:
        raise RuntimeError(f"the run ended (status {process.returncode}) before it could be killed: "
                           f"{process.stderr.read()[-500:]}")
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = subprocess.run([sys.executable, "-c", DETERMINISTIC_RUN, "--resume", output], cwd=ROOT,
                             capture_output=True, text=True, timeout=300, preexec_fn=DIE_WITH_PARENT)
    if resumed.returncode != 0:
        raise RuntimeError(f"--resume exited with {resumed.returncode}: {resumed.stderr[-500:]}")
    with open(os.path.join(output, "results.json")) as handle:
        results = json.load(handle)
    losses = read_losses(output)
    difference = max(abs(a - b) / max(abs(b), 1e-12) for epoch, other in zip(losses, expected)
                     for a, b in zip(epoch.values(), other.values()))
    record.save(killed_after_epochs=done, resumed_at_epoch=results["resumed_at_epoch"], status=results["status"],
                epochs=[h["epoch"] for h in results["history"]], total_loss=[e["total"] for e in losses],
                state_left=os.path.exists(os.path.join(output, "state.pt")),
                identical_to_uninterrupted=losses == expected, max_relative_loss_difference=difference,
                tolerance=RESUME_TOLERANCE)
    if results["status"] != "finished" or record.values["epochs"] != list(range(1, preset["epochs"] + 1)):
        raise RuntimeError(f"resumed run: status {results['status']}, epochs {record.values['epochs']}")
    record.save(snapshot=snapshot_check(preset, folder, prefixes))


def read_losses(output: str) -> list[dict]:
    with open(os.path.join(output, "results.json")) as handle:
        return [h["loss"] for h in json.load(handle)["history"]]


def snapshot_check(preset: dict, folder: str, prefixes) -> dict:
    """The state.pt snapshot (writer.HostCopy: on CUDA a side-stream copy into pinned buffers) taken in the
    middle of an epoch whose steps are still queued on the GPU, the rest of the epoch queued right after;
    compared with a copy of the same tensors taken on the training stream at the same point."""
    config = Config(device=preset["device"], batch_size=preset["batch_size"], compile="no", precision="fp32",
                    verbose=0)
    data = load_data_folder(folder, *prefixes)
    seed_everything(config.seed)
    setup = build_setup(config, data, torch.device(preset["device"]))
    cuda = setup.device.type == "cuda"
    progress = start_epoch(setup)
    half = max(2, len(progress.bounds) // 2)
    # the first step alone: its one-time set-up (augmentation tables, cuDNN) waits for the device
    train_one_epoch(setup, 1, progress, should_stop=lambda: progress.step >= 1)
    if cuda:
        torch.cuda._sleep(HOLD_CYCLES)  # the next steps queue up behind this
    train_one_epoch(setup, 1, progress, should_stop=lambda: progress.step >= half)
    payload = state_payload(setup, 1, None, {}, {}, {})  # what an epoch-end snapshot holds (no host sync)
    host, done = HostCopy(setup.device).copy(payload)
    queued = cuda and not torch.cuda.current_stream(setup.device).query()
    same_point = [t.clone() for _, t in tensors_of(payload)]  # on the training stream, after the snapshot's copy
    train_one_epoch(setup, 1, progress)  # the rest of the epoch, queued behind the snapshot
    if done is not None:
        done.synchronize()
    snapshot = [t for _, t in tensors_of(host)]
    later = [t.detach().cpu() for _, t in tensors_of(state_payload(setup, 1, None, {}, {}, {}))]
    same_point = [t.cpu() for t in same_point]
    return {"tensors": len(snapshot), "bytes": sum(t.numel() * t.element_size() for t in snapshot),
            "steps_before": half, "steps_after": len(progress.bounds) - half, "steps_queued_at_snapshot": queued,
            "equal": all(torch.equal(a, b) for a, b in zip(snapshot, same_point)),
            "changed_by_later_steps": any(not torch.equal(a, b) for a, b in zip(same_point, later))}


def tensors_of(value, path: str = ""):
    """(path, tensor) of every tensor in a payload of nested dicts, lists and tuples, in order."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from tensors_of(item, f"{path}/{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from tensors_of(item, f"{path}/{i}")


def test_suite(preset: dict, work: str, record: StepRecord, seconds: float) -> None:
    """(d): the test suite on the CPU (CUDA hidden), within `seconds` (less a margin for this process)."""
    if importlib.util.find_spec("pytest") is None:
        record.save(ran=False, summary="pytest is not installed here (nothing is installed from the network)")
        return
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    seconds = max(1.0, seconds - 15)
    try:
        completed = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=ROOT,
                                   env=environment, capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired as expired:
        tail = expired.stdout or b""
        record.save(ran=True, timed_out=True, tail=(tail.decode() if isinstance(tail, bytes) else tail)[-2000:])
        raise RuntimeError(f"the test suite ran past {seconds:.0f} s") from None
    lines = completed.stdout.strip().splitlines()
    record.save(ran=True, returncode=completed.returncode, summary=lines[-1] if lines else "",
                tail=completed.stdout[-3000:] + completed.stderr[-1000:])
    if completed.returncode != 0:
        raise RuntimeError(f"pytest exited with {completed.returncode}: {record.values['summary']}")


STEP_FUNCTIONS = {"a_end_to_end": end_to_end, "b_trajectories": trajectories, "c_kill_resume": kill_and_resume}


def run_step(name: str, preset: dict, output: str, work: str, seconds: float) -> int:
    """The child process of one step: its results in OUTDIR/steps/<name>.json, updated as it goes; its
    exit status 0 when it finished without error."""
    record = StepRecord(output, name)
    record.save(device=torch.cuda.get_device_name() if preset["device"] == "cuda" else "cpu")
    compiling.BACKEND = preset["backend"]
    os.makedirs(work, exist_ok=True)
    try:
        if name == "d_tests":
            test_suite(preset, work, record, seconds)
        else:
            STEP_FUNCTIONS[name](preset, work, record)
    except Exception as error:  # noqa: BLE001 (the step's failure is recorded; the parent runs the next step)
        record.save(error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc()[-3000:])
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


# ----------------------------------------------------------------------------- the parent: steps, report, verdict
def launch(name: str, preset_name: str, output: str, work: str, seconds: float) -> dict:
    """Runs step `name` in a child process within `seconds`; returns what the step recorded, with "ok",
    "seconds", "returncode", and on failure the end of its log."""
    log_path = os.path.join(output, "logs", f"{name}.log")
    command = [sys.executable, "-m", "discomkd.commands.gpu_check", output, "--step", name, "--work", work,
               "--seconds", str(int(seconds))] + (["--cpu-small"] if preset_name == "cpu-small" else [])
    environment = {**os.environ, "TORCH_LOGS": TORCH_LOGS}
    started = time.perf_counter()
    with open(log_path, "w") as log:
        # a session of its own: on a timeout the step's own children (the killed run of (c)) go with it
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=DIE_WITH_PARENT)
        try:
            returncode = process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            returncode = process.wait()
    result = {}
    step_path = os.path.join(output, "steps", f"{name}.json")
    if os.path.exists(step_path):
        with open(step_path) as handle:
            result = json.load(handle)
    elapsed = time.perf_counter() - started
    result.update(seconds=elapsed, returncode=returncode, log=os.path.relpath(log_path, output))
    if returncode != 0 and "error" not in result:
        result["error"] = (f"ran past its budget of {seconds:.0f} s: killed" if elapsed >= seconds
                           else f"exited with status {returncode}")
    result["ok"] = returncode == 0 and step_passed(name, result, preset_name)
    if returncode != 0:
        with open(log_path, errors="replace") as handle:
            result["log_tail"] = handle.read()[-3000:]
    return result


def step_passed(name: str, result: dict, preset_name: str) -> bool:
    """Whether a finished step shows what it checks (a step that crashed has failed already)."""
    if name == "a_end_to_end":
        environment = result["fast"]["environment"]
        return compiled_as_asked(environment, preset_name)
    if name == "b_trajectories":
        runs = result["runs"]
        finite = all(math.isfinite(x) for r in runs.values() for x in r["total_loss"])
        exact = preset_name != "cpu-small" or runs["compiled fp32"]["max_relative_loss_difference"] == 0
        return finite and exact and compiled_as_asked(runs["compiled fp32"]["environment"], preset_name)
    if name == "c_kill_resume":
        return result["max_relative_loss_difference"] <= RESUME_TOLERANCE and result["snapshot"]["equal"]
    return True


def compiled_as_asked(environment: dict, preset_name: str) -> bool:
    """Compiled throughout, one graph per batch shape, no graph break; on the GPU no graph left out of
    CUDA graphs."""
    compile_stats = environment.get("compile", {})
    return (environment["compiled"] and "compile_error" not in environment and compile_stats.get("graphs", 0) > 0
            and compile_stats["recompiles"] == 0 and compile_stats["graph_breaks"] == 0
            and (preset_name == "cpu-small" or compile_stats["cudagraph_skips"] == 0))


def compile_text(environment: dict) -> str:
    stats = environment.get("compile")
    text = f"compiled {environment['compiled']}"
    if stats:
        text += (f" ({stats['graphs']} graphs for batches of {'/'.join(map(str, stats['batch_rows']))} rows, "
                 f"{stats['graph_breaks']} graph breaks, {stats['recompiles']} recompiles, "
                 f"{stats['cudagraph_skips']} graphs without CUDA graphs)")
    if "compile_error" in environment:
        text += f", compile error: {environment['compile_error']}"
    return text


def verdict(report: dict) -> str:
    rows = [("step", "ok", "result")]
    for name in STEPS:
        step = report["steps"].get(name)
        if step is None:
            rows.append((TITLES[name], "-", "not run yet"))
            continue
        if step.get("skipped"):
            rows.append((TITLES[name], "skipped", step["skipped"]))
            continue
        if "error" in step:
            rows.append((TITLES[name], "NO", step["error"]))
            continue
        rows.append((TITLES[name], "yes" if step.get("ok") else "NO", step_text(name, step)))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{r[0]:<{width}}  {r[1]:<7}  {r[2]}" for r in rows)


def step_text(name: str, step: dict) -> str:
    if name == "a_end_to_end":
        fast, plain = step["fast"], step["plain"]
        return (f"fast {fast['mean']['whole']:.2f} s/epoch (train {fast['mean']['train']:.2f}, eval "
                f"{fast['mean']['eval']:.2f}, writes {fast['mean']['write']:.3f}; first epoch "
                f"{fast['epochs'][0]['whole']:.1f} s; state.pt {fast['state_bytes'] / 1e6:.0f} MB every epoch, "
                f"{100 * fast['state_write_share_of_epoch']:.1f}% of an epoch), plain {plain['mean']['whole']:.2f} "
                f"s/epoch, plain/fast {step['plain_over_fast']:.2f}x"
                + (f", peak model side {fast['peak_model_side_gib']:.2f} GiB" if "peak_model_side_gib" in fast else "")
                + f"; {compile_text(fast['environment'])}; data generated in {step['data_generation_seconds']:.0f} s")
    if name == "b_trajectories":
        return "; ".join(f"{variant}: loss diff {r['max_relative_loss_difference']:.2%}, last valid wF1 "
                         + "/".join(f"{v[-1]:.3f}" for v in r["valid_weighted_f1"].values())
                         + (f", {compile_text(r['environment'])}" if variant.startswith("compiled") else "")
                         for variant, r in step["runs"].items())
    if name == "c_kill_resume":
        snapshot = step["snapshot"]
        return (f"killed after epoch {step['killed_after_epochs']}, resumed at {step['resumed_at_epoch']}, "
                f"{step['status']}, same losses as uninterrupted: {step['identical_to_uninterrupted']} (max relative "
                f"diff {step['max_relative_loss_difference']:.1e}, tolerance {step['tolerance']:.0e}); snapshot with "
                f"steps queued ({snapshot['steps_queued_at_snapshot']}) equals the copy at the same point: "
                f"{snapshot['equal']} ({snapshot['tensors']} tensors, changed by later steps: "
                f"{snapshot['changed_by_later_steps']})")
    return step.get("summary", "")


def save_report(output: str, report: dict, started: float) -> None:
    """gpu_check.json and verdict.txt as they stand now (each written whole, or not at all)."""
    report["seconds"] = time.perf_counter() - started
    write_json(os.path.join(output, "gpu_check.json"), report)
    write_text(os.path.join(output, "verdict.txt"), verdict(report) + (
        f"\n({report['seconds']:.0f} s, {report['device']}, torch {report['torch']}, python {report['python']})\n"))


def run_check(output: str, preset_name: str, chosen: set[str], tests: bool) -> bool:
    """The parent: each chosen step in a process of its own, within the preset's budget, gpu_check.json and
    verdict.txt rewritten before and after each; prints a line per step and the verdict. Returns whether every
    step that ran passed."""
    preset = PRESETS[preset_name]
    output = os.path.abspath(output)  # the steps' processes start in ROOT, not in this folder
    for folder in ("", "steps", "logs"):
        os.makedirs(os.path.join(output, folder), exist_ok=True)
    device = torch.cuda.get_device_name() if preset["device"] == "cuda" else "cpu"
    report = {"preset": preset_name, "python": sys.version.split()[0], "torch": str(torch.__version__),
              "cuda": torch.version.cuda, "device": device,
              "budget_seconds": preset["budget"], "torch_logs": TORCH_LOGS, "steps": {}}
    started = time.perf_counter()
    scratch = tempfile.mkdtemp(prefix="discomkd-gpu-check-")  # large data never goes to OUTDIR
    try:
        for name in STEPS:
            # (d), asked for with --tests, has its own budget beyond the check's
            left = preset["budget"] - (time.perf_counter() - started) if name != "d_tests" else math.inf
            if name not in chosen or (name == "d_tests" and not tests):
                report["steps"][name] = {"skipped": "not asked for" + (" (--tests runs it, on the CPU)"
                                                                       if name == "d_tests" else "")}
            elif left < MINIMUM_STEP_SECONDS:
                report["steps"][name] = {"skipped": f"{max(left, 0):.0f} s of the {preset['budget']} s budget left"}
            else:
                seconds = min(preset["budgets"][name], left)
                report["steps"][name] = {"error": f"started, not finished (budget {seconds:.0f} s): the check was "
                                                  "stopped during this step"}
                save_report(output, report, started)
                report["steps"][name] = launch(name, preset_name, output, os.path.join(scratch, name), seconds)
                print(f"[{name}] {'ok' if report['steps'][name]['ok'] else 'FAILED'} "
                      f"({report['steps'][name]['seconds']:.0f} s)", flush=True)
            save_report(output, report, started)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(verdict(report))
    return all(s.get("ok") or "skipped" in s for s in report["steps"].values())
