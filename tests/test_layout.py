"""The project's shape, read from the source: imports run commands -> functions.py -> discomkd ->
model_pytorch.py, with no cycle, no library module importing a command, and no sys.path edit."""
import ast
import os
import re

import pytest
from toy import ROOT

LIBRARY_FILES = ("model_pytorch.py", "functions.py")  # the two top-level modules the original layout names
PACKAGE = "discomkd"


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


def imported_modules(path: str, known: set[str]) -> set[str]:
    """The project modules `path` imports, anywhere in the file (lazy imports inside functions count)."""
    tree = ast.parse(open(os.path.join(ROOT, path)).read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # from discomkd import data
    return {name for name in names if name in known}


def import_graph() -> dict[str, set[str]]:
    files = [f for f in python_files() if not f.startswith("tests" + os.sep)]
    known = {module_name(f) for f in files}
    return {module_name(f): imported_modules(f, known) - {module_name(f)} for f in files}


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


def is_library(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".") or module + ".py" in LIBRARY_FILES


def test_the_import_graph_has_no_cycle():
    assert find_cycle(import_graph()) is None, f"import cycle: {' -> '.join(find_cycle(import_graph()))}"


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_library_module_imports_a_command():
    graph = import_graph()
    wrong = [(module, target) for module, targets in graph.items() if is_library(module)
             for target in targets if not is_library(target)]
    assert not wrong, f"library modules importing commands or tools: {wrong}"


def test_imports_run_one_way():
    """The package never imports functions.py (the run behind main_DisCoM-KD.py); the model imports nothing
    of the project."""
    graph = import_graph()
    assert not graph["model_pytorch"], graph["model_pytorch"]
    for module, targets in graph.items():
        if module.startswith(PACKAGE):
            assert "functions" not in targets, f"{module} imports functions.py"


def test_only_commands_and_the_named_files_sit_at_the_top_level():
    """A top-level file is a command (it has a main() it calls under __main__) or one of the named library files."""
    for path in python_files():
        if os.sep in path or path in LIBRARY_FILES:
            continue
        source = open(os.path.join(ROOT, path)).read()
        assert re.search(r"^def main\(", source, re.M) and "__main__" in source, f"{path} is not a command"


# the second pattern matches the environment variable's name without spelling it in this file
@pytest.mark.parametrize("pattern", [r"sys\.path\.(insert|append|extend)|sys\.path\s*=", r"PYTHON(PATH)"])
def test_nothing_edits_the_import_path(pattern):
    offenders = [path for path in python_files() if path != os.path.join("tests", "test_layout.py")
                 and re.search(pattern, open(os.path.join(ROOT, path)).read())]
    assert not offenders, f"{pattern} in {offenders}"
