"""The GPU check (discomkd-gpu-check, tools/gpu_check.sh) at toy size on the CPU: each step in its own
process, its results on disk as soon as it ends, a killed check keeping the steps it finished, and a
verdict that says whether the fast path trained compiled."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from toy import ROOT

from discomkd.commands import gpu_check


def read_report(output) -> dict:
    with open(os.path.join(output, "gpu_check.json")) as handle:
        return json.load(handle)


def running_processes_naming(text: str, wait: float = 5.0) -> list[str]:
    """The command lines of this machine's processes that contain `text`, once the processes that are
    dying have had `wait` seconds to go (Linux: read from /proc)."""
    deadline = time.time() + wait
    while True:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    command = handle.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in command:
                found.append(command)
        if not found or time.time() > deadline:
            return found
        time.sleep(0.1)


def test_a_check_killed_during_a_step_keeps_the_steps_it_finished(tmp_path):
    """Through the launcher (python3 from the environment the tests run in): killed while (c) runs, the
    check leaves (b) complete, with the compiled variant's graphs, and (c) marked as stopped."""
    output = tmp_path / "check"
    environment = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    process = subprocess.Popen(["bash", os.path.join(ROOT, "tools", "gpu_check.sh"), str(output), "--cpu-small",
                                "--steps", "b_trajectories,c_kill_resume"], env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and process.poll() is None:
            if os.path.exists(output / "logs" / "c_kill_resume.log"):  # (b) is written, (c) has started
                break
            time.sleep(0.05)
        assert process.poll() is None, "the check ended before it could be killed"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert running_processes_naming(str(output)) == [], "a killed check leaves no step and no run behind"
    report = read_report(output)
    trajectories = report["steps"]["b_trajectories"]
    assert trajectories["ok"] and set(trajectories["runs"]) == {"eager fp32", "compiled fp32", "eager bf16"}
    compiled = trajectories["runs"]["compiled fp32"]
    # aot_eager runs the captured graph with eager kernels: the compiled trajectory is the eager one exactly
    assert compiled["max_relative_loss_difference"] == 0 and compiled["environment"]["compiled"] is True
    assert compiled["environment"]["compile"]["graphs"] >= 1 and compiled["environment"]["compile"]["recompiles"] == 0
    assert report["steps"]["c_kill_resume"]["error"].startswith("started, not finished")
    assert report["steps"]["a_end_to_end"] == {"skipped": "not asked for"}
    verdict = (output / "verdict.txt").read_text()
    assert "(b) compiled/bf16 vs eager fp32  yes" in verdict and "(c) SIGKILL and resume" in verdict
    assert (output / "logs" / "b_trajectories.log").exists()


@pytest.mark.skipif(not os.environ.get("DISCOMKD_SLOW_TESTS"),
                    reason="three processes, about 12 s on a 2-core CPU; set DISCOMKD_SLOW_TESTS=1 (test_resume.py and "
                           "test_durable_writes.py check resume and snapshots on the engine itself)")
def test_the_resume_step_repeats_the_uninterrupted_run_and_the_snapshot_the_training_state(tmp_path):
    assert gpu_check.main([str(tmp_path), "--cpu-small", "--steps", "c_kill_resume"]) == 0
    report = read_report(tmp_path)
    resumed = report["steps"]["c_kill_resume"]
    assert resumed["ok"] and resumed["status"] == "finished" and resumed["resumed_at_epoch"][0] >= 2
    assert resumed["identical_to_uninterrupted"], "on the CPU a killed and resumed run repeats the uninterrupted one"
    snapshot = resumed["snapshot"]
    # the later steps changed the weights: a snapshot copied after them would not equal the copy
    assert snapshot["equal"] and snapshot["changed_by_later_steps"] and snapshot["tensors"] > 0
    assert report["steps"]["d_tests"] == {"skipped": "not asked for (--tests runs it, on the CPU)"}
    verdict = (tmp_path / "verdict.txt").read_text()
    assert "(c) SIGKILL and resume           yes" in verdict and "NO " not in verdict


@pytest.mark.skipif(not os.environ.get("DISCOMKD_SLOW_TESTS"),
                    reason="ResNet-18 compiled (aot_eager): about 20 s on a 2-core CPU; set DISCOMKD_SLOW_TESTS=1")
def test_the_end_to_end_step_compiles_a_resnet_and_says_so(tmp_path):
    assert gpu_check.main([str(tmp_path), "--cpu-small", "--steps", "a_end_to_end"]) == 0
    end_to_end = read_report(tmp_path)["steps"]["a_end_to_end"]
    assert end_to_end["ok"] and end_to_end["encoders"] == ["resnet18", "mlp"]
    environment = end_to_end["fast"]["environment"]
    # two static graphs: the full batches of 16 rows and the last batch (69 training rows: 4 x 16 + 5)
    assert environment["compiled"] is True and "compile_error" not in environment
    assert environment["compile"] == {"graphs": 2, "graph_breaks": 0, "recompiles": 0, "cudagraph_skips": 0,
                                      "batch_rows": [16, 5]}
    assert end_to_end["plain"]["environment"]["compiled"] is False
    assert end_to_end["fast"]["state_bytes"] > 0 and end_to_end["plain_over_fast"] > 0
    assert "compiled True (2 graphs" in (tmp_path / "verdict.txt").read_text()
    # the recompile for the last batch's shape is in the step's log (TORCH_LOGS=recompiles)
    assert "Recompiling function step_losses" in (tmp_path / "logs" / "a_end_to_end.log").read_text()
