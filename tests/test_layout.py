"""The project's shape, read from the source: every library module in one of the package's rooms
(subpackages), each room importing only rooms below it in LAYERS, no cycle, the models knowing torch
alone, every command installed, the top-level files thin doors, and nothing editing the import path."""
import ast
import os
import re
import subprocess
import sys

import pytest
from command_table import DOORS, SCRIPTS
from toy import ROOT

PACKAGE = "discomkd"
# The rooms from the ground up: a module may import its own room and the rooms before it, never one after.
LAYERS = ("utils", "models", "data", "evaluation", "runs", "training", "preparing", "analysis", "comparison",
          "commands")
# The two top-level modules the original layout names: they hand on the package's names and hold no code.
NAMED_FILES = {"model_pytorch.py": "discomkd.models.discomkd", "functions.py": "discomkd.training.run"}
# What the models may import besides their own room: torch and the standard library (no files, metrics or
# command lines; numpy and scikit-learn are the data's and the scores')
MODEL_IMPORTS = ("torch", "__future__", "math", "typing", "dataclasses")


def python_files() -> list[str]:
    """Every tracked-looking .py file of the project, relative to the root (no virtual environments)."""
    found = []
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [s for s in subfolders if not s.startswith(".") and s not in ("build", "__pycache__")
                         and not s.endswith(".egg-info")]
        found += [os.path.relpath(os.path.join(folder, f), ROOT) for f in files if f.endswith(".py")]
    return sorted(found)


def module_name(path: str) -> str:
    return path[:-3].replace(os.sep, ".").removesuffix(".__init__")


def imported_names(path: str) -> set[str]:
    """Every module name `path` imports, anywhere in the file (lazy imports inside functions count), and for
    `from X import y` also X.y (y may be a module)."""
    tree = ast.parse(open(os.path.join(ROOT, path)).read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # from discomkd.training import loop
    return names


def import_graph() -> dict[str, set[str]]:
    """{module: the project modules it imports}, tests left out."""
    files = [f for f in python_files() if not f.startswith("tests" + os.sep)]
    known = {module_name(f) for f in files}
    return {module_name(f): (imported_names(f) & known) - {module_name(f)} for f in files}


def room(module: str) -> str | None:
    """The subpackage a package module lives in (discomkd.training.loop -> training); None outside the package."""
    parts = module.split(".")
    return parts[1] if parts[0] == PACKAGE and len(parts) > 1 else None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) for each import of a package module from a room above its own (or from outside the
    package: a top-level file or tools/)."""
    wrong = []
    for module, targets in graph.items():
        if not module.startswith(PACKAGE):
            continue
        for target in targets:
            if target == PACKAGE or room(target) is None and target.startswith(PACKAGE):
                continue  # the package itself (a room's __init__ imports nothing)
            if room(target) is None or (room(module) is not None
                                        and LAYERS.index(room(target)) > LAYERS.index(room(module))):
                wrong.append((module, target))
    return sorted(wrong)


def test_every_library_module_lives_in_a_room():
    loose = [path for path in python_files() if os.path.dirname(path) == PACKAGE and path != "discomkd/__init__.py"]
    assert not loose, f"modules outside the package's rooms: {loose}"
    rooms = sorted(name for name in os.listdir(os.path.join(ROOT, PACKAGE))
                   if os.path.isfile(os.path.join(ROOT, PACKAGE, name, "__init__.py")))
    assert rooms == sorted(LAYERS), "LAYERS lists every room, and only rooms"


def test_the_import_graph_has_no_cycle():
    assert find_cycle(import_graph()) is None, f"import cycle: {' -> '.join(find_cycle(import_graph()))}"


def test_no_room_imports_one_above_it():
    assert upward_imports(import_graph()) == []


def test_the_checks_can_fail():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = {"discomkd.data.folder": {"discomkd.training.config", "discomkd.utils.errors"},
             "discomkd.utils.errors": {"model_pytorch"}, "discomkd.commands.train": {"discomkd.training.run"}}
    assert upward_imports(graph) == [("discomkd.data.folder", "discomkd.training.config"),
                                     ("discomkd.utils.errors", "model_pytorch")]


def test_the_models_know_torch_alone():
    """The networks and losses know no files, metrics or command lines: torch, and their own room."""
    for path in python_files():
        if path.startswith(os.path.join(PACKAGE, "models") + os.sep):
            outside = {name for name in imported_names(path) if not name.startswith(f"{PACKAGE}.models")
                       and name.split(".")[0] not in MODEL_IMPORTS}
            assert not outside, f"{path} imports {sorted(outside)}"


def test_top_level_files_are_thin_doors():
    """A top-level .py file is a command's door (it imports that command's main and calls it) or one of the two
    named files, which only hand on names of the package; none holds a definition of its own."""
    for path in python_files():
        if os.sep in path:
            continue
        tree = ast.parse(open(os.path.join(ROOT, path)).read(), path)
        definitions = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
        assert not definitions, f"{path} defines {[d.name for d in definitions]}"
        imports = {node.module for node in tree.body if isinstance(node, ast.ImportFrom)}
        if path in NAMED_FILES:
            assert imports == {NAMED_FILES[path]}, f"{path} imports {imports}"
        else:
            assert path in DOORS and imports == {DOORS[path]}, f"{path} is neither a door nor a named file"


def test_every_command_is_installed_and_every_door_opens_one():
    commands = sorted(module_name(os.path.join(PACKAGE, "commands", f)) for f in
                      os.listdir(os.path.join(ROOT, PACKAGE, "commands"))
                      if f.endswith(".py") and f not in ("__init__.py", "entry.py"))
    assert sorted(SCRIPTS.values()) == commands, "one [project.scripts] entry per command module"
    assert set(DOORS.values()) <= set(commands)
    for module in commands:
        source = open(os.path.join(ROOT, *module.split(".")) + ".py").read()
        assert re.search(r"^def main\(argv: list\[str\] \| None = None\) -> int:\n    return run_command\(", source,
                         re.M), f"{module}: main(argv) goes through run_command"
        assert source.rstrip().endswith('if __name__ == "__main__":\n    raise SystemExit(main())'), module


# the second pattern matches the environment variable's name without spelling it in this file
@pytest.mark.parametrize("pattern", [r"sys\.path\.(insert|append|extend)|sys\.path\s*=", r"PYTHON(PATH)"])
def test_nothing_edits_the_import_path(pattern):
    offenders = [path for path in python_files() if path != os.path.join("tests", "test_layout.py")
                 and re.search(pattern, open(os.path.join(ROOT, path)).read())]
    assert not offenders, f"{pattern} in {offenders}"


def test_scikit_learn_is_imported_where_it_is_used():
    """scikit-learn costs about a second to import: a module imports it inside the functions that use it, so that
    a command that stops before scoring (--help, a refused input) starts in the time torch alone takes."""
    offenders = []
    for path in python_files():
        if path.startswith(PACKAGE + os.sep):
            tree = ast.parse(open(os.path.join(ROOT, path)).read(), path)
            offenders += [f"{path}:{node.lineno}" for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                          and any(name.split(".")[0] == "sklearn" for name in
                                  ([node.module] if isinstance(node, ast.ImportFrom) else
                                   [alias.name for alias in node.names]))]
    assert not offenders, offenders


@pytest.mark.parametrize("preset", [None, "ACTIVE"])
def test_the_package_makes_openmp_threads_wait_passively_before_torch_loads(preset):
    """Spinning OpenMP threads slow a training 7-9x on a shared CPU (docs/performance.md): the package sets
    OMP_WAIT_POLICY=PASSIVE before anything imports torch, unless the user chose a policy."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    script = ("import os, sys\nimport discomkd\nassert 'torch' not in sys.modules\n"
              "import discomkd.commands.train\nprint(os.environ['OMP_WAIT_POLICY'])")
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                             timeout=120)
    assert process.returncode == 0, process.stderr
    assert process.stdout.strip() == (preset or "PASSIVE")
