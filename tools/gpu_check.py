"""The GPU check: one call on one H100/H200, under 8 minutes, nothing from the network.

    bash tools/gpu_check.sh OUTDIR                  # the GPU check (python tools/gpu_check.py OUTDIR)
    python tools/gpu_check.py OUTDIR --cpu-small    # the same steps at toy size on a CPU, in seconds (tested)

(a) the EuroSAT-shape end-to-end epoch (benchmark.py --end-to-end), fast and plain path in one process,
    state.pt snapshots included; (b) compiled vs eager and bf16 vs fp32 on the embedded example, same
    seed: loss trajectories and validation F1 side by side; (c) a run killed with SIGKILL after an epoch,
    resumed, finished, compared with the uninterrupted run; (d) the test suite, when pytest is importable.
Writes OUTDIR/gpu_check.json and OUTDIR/verdict.txt (also printed). Each step records its error, if
any, and the next one runs.
"""
from __future__ import annotations

import argparse
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import benchmark  # noqa: E402
import make_example  # noqa: E402
from discomkd.config import Config  # noqa: E402
from functions import run  # noqa: E402

BUDGET_SECONDS = 8 * 60
# Sizes per preset. GPU: the EuroSAT shape for (a), 3 epochs (the first compiles and is left out of the
# means); the example for (b) and (c). CPU: toy sizes, so that the test suite runs the script in seconds.
PRESETS = {
    "gpu": {"shape": ["--shape", "eurosat"], "epochs": 3, "device": "cuda", "example": "digits",
            "variants": {"eager fp32": ("no", "fp32"), "compiled fp32": ("yes", "fp32"),
                         "eager bf16": ("no", "bf16")},  # compiled bf16, the default, is (a)'s fast path
            "kill_after": 2, "kill_epochs": 8},
    "cpu-small": {"shape": ["--shape", "tiny", "--first-shape", "8"], "epochs": 2, "device": "cpu",
                  "example": "synthetic", "variants": {"eager fp32": ("no", "fp32"), "eager bf16": ("no", "bf16")},
                  "kill_after": 1, "kill_epochs": 3},
}


def step(report: dict, name: str, function) -> None:
    started = time.perf_counter()
    try:
        report[name] = {"ok": True, **function()}
    except Exception as error:  # noqa: BLE001 (a step's failure is recorded, the next step runs)
        report[name] = {"ok": False, "error": f"{type(error).__name__}: {error}",
                        "traceback": traceback.format_exc()[-3000:]}
    report[name]["seconds"] = time.perf_counter() - started
    print(f"[{name}] {'ok' if report[name]['ok'] else 'FAILED: ' + report[name]['error']} "
          f"({report[name]['seconds']:.0f} s)", flush=True)


def end_to_end(preset: dict, out: str) -> dict:
    folder = os.path.join(out, "benchmark")
    status = benchmark.main([*preset["shape"], "--epochs", str(preset["epochs"]), "--device", preset["device"],
                             "--end-to-end", "--compare-plain", "--methods", "discomkd", "--output", folder])
    if status != 0:
        raise RuntimeError(f"benchmark.py exited with {status}")
    (name,) = os.listdir(folder)
    with open(os.path.join(folder, name)) as handle:
        report = json.load(handle)
    fast, plain = report["end_to_end"]["fast"]["discomkd"], report["end_to_end"]["plain"]["discomkd"]
    return {"device": report["device"], "torch": report["torch"], "fast": fast, "plain": plain,
            "plain_over_fast": report["plain_over_fast_end_to_end_ratio"]["discomkd"]}


def example_folder(preset: dict, out: str) -> tuple[str, tuple[str, str]]:
    folder = os.path.join(out, "example")
    if preset["example"] == "digits":
        make_example.make_digits_example(folder, overwrite=True)
        return folder, ("IMAGE", "PROJ")
    os.makedirs(folder, exist_ok=True)
    benchmark.write_synthetic_folder(folder, 120, (8,), (6,), 3)
    return folder, ("FIRST", "SECOND")


def trajectories(preset: dict, folder: str, prefixes, out: str) -> dict:
    """The example trained by each variant (compile, precision), same seed and epochs."""
    runs = {}
    for name, (compile_setting, precision) in preset["variants"].items():
        config = Config(epochs=preset["kill_epochs"], device=preset["device"], compile=compile_setting,
                        precision=precision, verbose=0, output=os.path.join(out, "runs", name.replace(" ", "-")))
        started = time.perf_counter()
        results = run(config, folder, *prefixes, log=lambda *args: None)
        runs[name] = {"seconds": time.perf_counter() - started, "environment": results["environment"],
                      "total_loss": [h["loss"]["total"] for h in results["history"]],
                      "valid_weighted_f1": {p: [h[p]["valid"]["weighted_f1"] for h in results["history"]]
                                            for p in prefixes},
                      "final": results["final"]}
    reference = runs["eager fp32"]["total_loss"]
    for result in runs.values():
        result["max_relative_loss_difference"] = max(abs(a - b) / max(abs(b), 1e-12)
                                                     for a, b in zip(result["total_loss"], reference))
    return {"runs": runs}


def kill_and_resume(preset: dict, folder: str, prefixes, out: str, reference: dict | None) -> dict:
    """Starts the eager fp32 run of (b) in a subprocess, SIGKILLs it once `kill_after` epochs are in
    results.json and state.pt is there, resumes it, and compares with the uninterrupted run."""
    output = os.path.join(out, "killed")
    command = [sys.executable, os.path.join(ROOT, "main_DisCoM-KD.py"), folder, *prefixes, "--epochs",
               str(preset["kill_epochs"]), "--device", preset["device"], "--compile", "no", "--precision", "fp32",
               "--save-every-seconds", "0", "--output", output, "--quiet"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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
    resumed = subprocess.run([sys.executable, os.path.join(ROOT, "main_DisCoM-KD.py"), "--resume", output],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    if resumed.returncode != 0:
        raise RuntimeError(f"--resume exited with {resumed.returncode}: {resumed.stderr[-500:]}")
    with open(os.path.join(output, "results.json")) as handle:
        results = json.load(handle)
    losses = [h["loss"]["total"] for h in results["history"]]
    result = {"killed_after_epochs": done, "resumed_at_epoch": results["resumed_at_epoch"],
              "status": results["status"], "epochs": [h["epoch"] for h in results["history"]],
              "total_loss": losses, "state_left": os.path.exists(os.path.join(output, "state.pt"))}
    if reference is not None:
        expected = reference["total_loss"]
        result["max_abs_loss_difference_to_uninterrupted"] = max(abs(a - b) for a, b in zip(losses, expected))
        result["identical_to_uninterrupted"] = losses == expected
    if results["status"] != "finished" or result["epochs"] != list(range(1, preset["kill_epochs"] + 1)):
        raise RuntimeError(f"resumed run: status {results['status']}, epochs {result['epochs']}")
    return result


def test_suite(seconds_left: float) -> dict:
    if importlib.util.find_spec("pytest") is None:
        return {"ran": False, "reason": "pytest is not installed here (nothing is installed from the network)"}
    if seconds_left < 60:
        return {"ran": False, "reason": f"{seconds_left:.0f} s of the budget left: skipped"}
    try:
        completed = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=ROOT,
                                   capture_output=True, text=True, timeout=seconds_left)
    except subprocess.TimeoutExpired as expired:
        tail = (expired.stdout or b"")[-2000:]
        return {"ran": True, "timed_out": True, "tail": tail.decode() if isinstance(tail, bytes) else tail}
    lines = completed.stdout.strip().splitlines()
    return {"ran": True, "returncode": completed.returncode, "summary": lines[-1] if lines else "",
            "tail": completed.stdout[-3000:] + completed.stderr[-1000:]}


def verdict(report: dict) -> str:
    rows = [("step", "ok", "result")]
    a = report.get("a_end_to_end", {})
    if a.get("ok"):
        fast, plain = a["fast"]["mean"], a["plain"]["mean"]
        rows.append(("(a) end-to-end epoch", "yes", f"fast {fast['whole']:.2f} s (train {fast['train']:.2f}, eval "
                     f"{fast['eval']:.2f}, writes {fast['write']:.3f}; state.pt "
                     f"{a['fast']['state_bytes'] / 1e6:.0f} MB every epoch, {100 * a['fast']['state_write_share_of_epoch']:.1f}% "
                     f"of an epoch), plain {plain['whole']:.2f} s, plain/fast {a['plain_over_fast']:.2f}x"
                     + (f", peak model side {a['fast']['peak_model_side_gib']:.2f} GiB" if "peak_model_side_gib" in a["fast"] else "")))
    else:
        rows.append(("(a) end-to-end epoch", "NO", a.get("error", "not run")))
    b = report.get("b_trajectories", {})
    if b.get("ok"):
        text = "; ".join(f"{name}: loss diff {r['max_relative_loss_difference']:.2%}, compiled "
                         f"{r['environment']['compiled']}, last valid wF1 "
                         + "/".join(f"{v[-1]:.3f}" for v in r["valid_weighted_f1"].values())
                         for name, r in b["runs"].items())
        finite = all(math.isfinite(x) for r in b["runs"].values() for x in r["total_loss"])
        rows.append(("(b) compiled/bf16 vs eager fp32", "yes" if finite else "NO", text))
    else:
        rows.append(("(b) compiled/bf16 vs eager fp32", "NO", b.get("error", "not run")))
    c = report.get("c_kill_resume", {})
    rows.append(("(c) SIGKILL and resume", "yes" if c.get("ok") else "NO",
                 f"killed after epoch {c['killed_after_epochs']}, resumed at {c['resumed_at_epoch']}, {c['status']}, "
                 f"same losses as uninterrupted: {c.get('identical_to_uninterrupted')} (max diff "
                 f"{c.get('max_abs_loss_difference_to_uninterrupted', float('nan')):.2e})" if c.get("ok")
                 else c.get("error", "not run")))
    d = report.get("d_tests", {})
    if d.get("ok") and d.get("ran"):
        rows.append(("(d) test suite", "yes" if d.get("returncode") == 0 else "NO",
                     "timed out" if d.get("timed_out") else d.get("summary", "")))
    else:
        rows.append(("(d) test suite", "skipped" if d.get("ok") else "NO", d.get("reason", d.get("error", "not run"))))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{r[0]:<{width}}  {r[1]:<7}  {r[2]}" for r in rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="folder for gpu_check.json and verdict.txt")
    parser.add_argument("--cpu-small", action="store_true", help="toy sizes on the CPU (seconds): the tested variant")
    parser.add_argument("--skip-tests", action="store_true", help="leave out (d), the test suite")
    args = parser.parse_args(argv)
    preset = PRESETS["cpu-small" if args.cpu_small else "gpu"]
    if preset["device"] == "cuda" and not torch.cuda.is_available():
        print("error: CUDA is not available here; --cpu-small runs the check's steps on the CPU", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)
    started = time.perf_counter()
    report = {"preset": "cpu-small" if args.cpu_small else "gpu", "python": sys.version.split()[0],
              "torch": str(torch.__version__), "cuda": torch.version.cuda,
              "device": torch.cuda.get_device_name() if preset["device"] == "cuda" else "cpu"}
    work = tempfile.mkdtemp(prefix="discomkd-gpu-check-")
    step(report, "a_end_to_end", lambda: end_to_end(preset, work))
    folder, prefixes = example_folder(preset, work)
    step(report, "b_trajectories", lambda: trajectories(preset, folder, prefixes, work))
    reference = report["b_trajectories"]["runs"]["eager fp32"] if report["b_trajectories"]["ok"] else None
    step(report, "c_kill_resume", lambda: kill_and_resume(preset, folder, prefixes, work, reference))
    if args.skip_tests:
        report["d_tests"] = {"ok": True, "ran": False, "reason": "--skip-tests"}
    else:
        step(report, "d_tests", lambda: test_suite(BUDGET_SECONDS - (time.perf_counter() - started)))
    shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = time.perf_counter() - started
    table = verdict(report)
    with open(os.path.join(args.output, "gpu_check.json"), "w") as handle:
        json.dump(report, handle, indent=1)
    with open(os.path.join(args.output, "verdict.txt"), "w") as handle:
        handle.write(table + f"\n({report['seconds']:.0f} s, {report['device']}, torch {report['torch']})\n")
    print(table)
    return 0 if all(report[k].get("ok") for k in ("a_end_to_end", "b_trajectories", "c_kill_resume", "d_tests")) else 1


if __name__ == "__main__":
    sys.exit(main())
