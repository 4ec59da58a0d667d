"""The project's commands as users type them, read from the checkout: each installed script (pyproject.toml's
`[project.scripts]`) and its module, and the top-level file that runs the same `main` from a checkout."""
from __future__ import annotations

import os
import re
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

with open(os.path.join(ROOT, "pyproject.toml"), "rb") as _handle:
    SCRIPTS: dict[str, str] = {name: target.partition(":")[0]  # discomkd-train -> discomkd.commands.train
                               for name, target in tomllib.load(_handle)["project"]["scripts"].items()}
COMMAND_MODULES = sorted(set(SCRIPTS.values()))
DOOR = re.compile(r"^from (discomkd\.commands\.\w+) import main$", re.M)


def _doors() -> dict[str, str]:
    """{top-level file: the command module it runs}, e.g. {"main_DisCoM-KD.py": "discomkd.commands.train"}."""
    doors = {}
    for name in sorted(os.listdir(ROOT)):
        if name.endswith(".py"):
            with open(os.path.join(ROOT, name)) as handle:
                found = DOOR.search(handle.read())
            if found:
                doors[name] = found.group(1)
    return doors


DOORS = _doors()
SCRIPT_OF = {module: name for name, module in SCRIPTS.items()}  # discomkd.commands.train -> discomkd-train
