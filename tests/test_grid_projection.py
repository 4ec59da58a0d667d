"""tools/grid_projection.py: the Ray wall-time projection reads a comparison's own model times."""
import json

from tools import grid_projection


def comparison(runs: int) -> dict:
    """A comparison.json's results: per run, mono (2 models of 10 s), kd (2 of 20 s after a 30 s teacher)."""
    methods = {"mono": {"status": "done", "seconds": 20.0, "part_seconds": [10.0, 10.0]},
               "kd": {"status": "done", "seconds": 70.0, "part_seconds": [20.0, 20.0]},
               "svm": {"status": "done", "seconds": 1.0}}  # classical: no model task
    return {"results": [{"seed": k, "methods": methods} for k in range(runs)]}


def test_tasks_are_read_from_the_comparison_with_the_teacher_first():
    tasks = grid_projection.tasks_of(comparison(1), as_ablation=False)
    assert tasks == [(0, "teacher", 30.0), (0, "mono", 10.0), (0, "mono", 10.0), (0, "kd", 20.0), (0, "kd", 20.0)]


def test_one_gpu_is_the_serial_time_and_kd_waits_for_its_teacher():
    tasks = grid_projection.tasks_of(comparison(2), as_ablation=False)
    assert grid_projection.wall_time(tasks, 1) == sum(t[2] for t in tasks) == 180.0
    # one run on 4 GPUs: teacher and both monos start at once; the kd models start at 30 s and end at 50 s
    assert grid_projection.wall_time(grid_projection.tasks_of(comparison(1), False), 4) == 50.0


def test_the_command_prints_the_projection_and_refuses_a_bad_file(tmp_path, capsys):
    path = tmp_path / "comparison.json"
    path.write_text(json.dumps(comparison(1)))
    assert grid_projection.main([str(path), "--gpus", "1", "4"]) == 0
    out = capsys.readouterr().out
    assert "1 GPU(s):    1.5 min, speed-up 1.00" in out and "4 GPU(s):    0.8 min, speed-up 1.80" in out
    path.write_text("{}")
    assert grid_projection.main([str(path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
