"""The docs cannot rot unseen: every relative link and `#anchor` in README.md and docs/*.md resolves, every
`--option` the docs give a command exists in that command's argparse parser, and the README stays a front door.

Which command an option belongs to, read from the Markdown:
- in a code block line or a code span, an option belongs to the last command named before it in the same shell
  command (`python compare.py DIR A B --runs 5`); options before any command name there (`pip install --index-url`)
  are not checked;
- a code span that is only options (`--runs 5`) belongs to the last command named earlier in its paragraph, table
  row or list item, else to the command its nearest heading names, else to any command (the option must then exist
  in at least one).
"""
from __future__ import annotations

import functools
import glob
import importlib
import json
import os
import re
from dataclasses import dataclass
from urllib.parse import unquote

import pytest
from command_table import COMMAND_MODULES, DOORS, ROOT, SCRIPTS

README_MAX_BYTES = 15_000  # the front door's bound: everything else lives in docs/
# Every name the docs run a command by, and the command's module: its installed script (discomkd-train), its door
# in a checkout (main_DisCoM-KD.py), the module itself (python -m discomkd.commands.train), and the GPU check's
# shell wrapper, which passes its options on.
SPELLINGS = {**SCRIPTS, **DOORS, **{module: module for module in COMMAND_MODULES},
             "gpu_check.sh": "discomkd.commands.gpu_check"}
ANY = "any command"

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
NEW_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s")  # a list item starts a block of its own
CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
COMMAND = re.compile(r"(?<![\w./-])(?:tools/)?(" + "|".join(re.escape(c) for c in sorted(SPELLINGS, key=len,
                                                                                       reverse=True))
                     + r")(?![\w.-])")
SHELL_SEPARATOR = re.compile(r"&&|\|\||;|\s\|\s")


# ----------------------------------------------------------------------------- reading Markdown
@dataclass
class Block:
    kind: str  # "heading", "code" (a fenced block's body) or "text" (a paragraph, table row or list item)
    text: str
    line: int  # of the block's first line, counted from 1
    level: int = 0  # a heading's


def parse_blocks(markdown: str) -> list[Block]:
    """The headings, fenced code blocks and text blocks of `markdown`, in order."""
    blocks, paragraph, start = [], [], 0
    lines = markdown.split("\n")

    def flush():
        if paragraph:
            blocks.append(Block("text", "\n".join(paragraph), start))
            paragraph.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line)
        if fence:
            flush()
            closing = re.compile(rf"^ {{0,3}}{re.escape(fence.group(1)[0])}{{{len(fence.group(1))},}}\s*$")
            end = next((j for j in range(i + 1, len(lines)) if closing.match(lines[j])), len(lines))
            blocks.append(Block("code", "\n".join(lines[i + 1:end]), i + 2))
            i = end + 1
            continue
        heading = HEADING.match(line)
        if heading:
            flush()
            blocks.append(Block("heading", heading.group(2), i + 1, len(heading.group(1))))
        elif not line.strip():
            flush()
        elif line.lstrip().startswith("|") or NEW_ITEM.match(line):
            flush()
            paragraph.append(line)
            start = i + 1
            if line.lstrip().startswith("|"):
                flush()  # each table row on its own
        else:
            if not paragraph:
                start = i + 1
            paragraph.append(line)
        i += 1
    flush()
    return blocks


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text (a link's text, no code markers) in lower case, every character
    but letters, digits, `_`, `-` and spaces removed, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def heading_anchors(markdown: str) -> set[str]:
    """Every heading's anchor; a repeated slug gets -1, -2, ... as on GitHub."""
    anchors, seen = set(), {}
    for block in parse_blocks(markdown):
        if block.kind == "heading":
            slug = github_slug(block.text)
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


@functools.cache
def page_anchors(path: str) -> frozenset[str]:
    return frozenset(heading_anchors(read(path)))


# ----------------------------------------------------------------------------- links
def link_problems(path: str) -> list[str]:
    """One line per relative link of the Markdown file `path` whose file or `#anchor` does not exist."""
    problems = []
    for block in parse_blocks(read(path)):
        if block.kind == "code":
            continue
        text = CODE_SPAN.sub(lambda span: re.sub(r"[^\n]", " ", span.group(0)), block.text)  # offsets kept
        for link in LINK.finditer(text):
            target = link.group(1)
            if SCHEME.match(target):
                continue  # a web address or mail link: not checked here
            line = block.line + text[:link.start()].count("\n")
            where = f"{os.path.relpath(path, ROOT)}:{line}: {target}"
            file_part, _, anchor = target.partition("#")
            linked = os.path.normpath(os.path.join(os.path.dirname(path), unquote(file_part))) if file_part else path
            if not os.path.exists(linked):
                problems.append(f"{where}: no such file")
            elif anchor and linked.endswith(".md") and unquote(anchor) not in page_anchors(linked):
                problems.append(f"{where}: no heading with the anchor #{anchor} in {os.path.relpath(linked, ROOT)}")
    return problems


# ----------------------------------------------------------------------------- options
def command_named(match: re.Match) -> str:
    """The module of the command a COMMAND match names."""
    return SPELLINGS[match.group(1)]


def shell_options(segment: str) -> list[tuple[str | None, str]]:
    """(command, option) for each `--option` in a code span or a code line: the command is the last one named
    before the option in the same shell command, None where none is."""
    found = []
    for piece in SHELL_SEPARATOR.split(segment):
        commands = [(match.end(), command_named(match)) for match in COMMAND.finditer(piece)]
        for option in OPTION.finditer(piece):
            named = [command for end, command in commands if end <= option.start()]
            found.append((named[-1] if named else None, option.group(0)))
    return found


def code_lines(block: Block) -> list[tuple[int, str]]:
    """(line, text) of each command line of a code block, a line ending in a backslash joined to the next."""
    lines, text, start = [], "", block.line
    for number, line in enumerate(block.text.split("\n"), block.line):
        start = number if not text else start
        text += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            lines.append((start, text))
            text = ""
    return lines + ([(start, text)] if text else [])


def option_uses(markdown: str) -> list[tuple[str, str, int]]:
    """(command or ANY, option, line) for every `--option` that `markdown` gives a command."""
    uses, headings = [], []  # headings: (level, the command the heading names or None), outermost first
    for block in parse_blocks(markdown):
        if block.kind == "code":
            for line, text in code_lines(block):
                uses += [(command, option, line) for command, option in shell_options(text) if command]
            continue
        if block.kind == "heading":
            named = COMMAND.search(block.text)
            headings = [h for h in headings if h[0] < block.level] + [(block.level, named and command_named(named))]
        context = next((command for _, command in reversed(headings) if command), ANY)
        for span in CODE_SPAN.finditer(block.text):
            line = block.line + block.text[:span.start()].count("\n")
            content = span.group(2).strip()
            for command, option in shell_options(content):
                if command:
                    uses.append((command, option, line))
                elif content.startswith("--"):  # options alone: the command around them
                    earlier = [command_named(m) for m in COMMAND.finditer(block.text[:span.start()])]
                    uses.append((earlier[-1] if earlier else context, option, line))
    return uses


@functools.cache
def parser_options(command: str) -> frozenset[str]:
    """Every option string of the parser of `command` (a module), from its `build_parser()`."""
    parser = importlib.import_module(command).build_parser()
    return frozenset(s for action in parser._actions for s in action.option_strings)


def known_options(command: str) -> frozenset[str]:
    return frozenset().union(*map(parser_options, COMMAND_MODULES)) if command == ANY else parser_options(command)


def option_problems(path: str) -> list[str]:
    problems = []
    for command, option, line in option_uses(read(path)):
        if option not in known_options(command):
            problems.append(f"{os.path.relpath(path, ROOT)}:{line}: {option}: not an option of {command}")
    return problems


# ----------------------------------------------------------------------------- the project's docs
PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))


@pytest.mark.parametrize("page", PAGES)
def test_links_and_anchors_resolve(page):
    assert link_problems(os.path.join(ROOT, page)) == []


@pytest.mark.parametrize("page", PAGES)
def test_options_exist_in_their_command(page):
    assert option_problems(os.path.join(ROOT, page)) == []


def test_every_command_has_its_options_checked():
    """The check above sees options of every command, so an attribution rule that found nothing cannot pass."""
    checked = {command for page in PAGES for command, _, _ in option_uses(read(os.path.join(ROOT, page)))}
    assert set(COMMAND_MODULES) <= checked


def test_every_docs_page_is_reachable_from_the_readme():
    reached, queue = set(), [os.path.join(ROOT, "README.md")]
    while queue:
        page = queue.pop()
        if page in reached or not os.path.exists(page):
            continue
        reached.add(page)
        for block in parse_blocks(read(page)):
            if block.kind != "code":
                for link in LINK.finditer(CODE_SPAN.sub("", block.text)):
                    target = link.group(1).partition("#")[0]
                    if target.endswith(".md") and not SCHEME.match(target):
                        queue.append(os.path.normpath(os.path.join(os.path.dirname(page), unquote(target))))
    assert {os.path.join(ROOT, p) for p in PAGES} - reached == set()


def test_readme_is_a_front_door():
    assert os.path.getsize(os.path.join(ROOT, "README.md")) <= README_MAX_BYTES


# ----------------------------------------------------------------------------- the checks can fail
def test_github_slug_rule():
    assert github_slug("Is the invariant part invariant?") == "is-the-invariant-part-invariant"
    assert github_slug("The epoch users run: `--end-to-end`") == "the-epoch-users-run---end-to-end"
    assert github_slug("`predict.py`: one modality alone") == "predictpy-one-modality-alone"
    assert github_slug("DisCoM-KD and the baselines") == "discom-kd-and-the-baselines"
    assert heading_anchors("# A\n## Setup\n## Setup\n```\n# not a heading\n```\n") == {"a", "setup", "setup-1"}


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Known part\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n[ok](other.md#known-part) [ok](#page) [web](https://example.org/x#y)\n"
                    "[gone](missing.md) [bad](other.md#unknown-part)\n\n"
                    "- [nowhere](#nowhere) and `[in code](missing-too.md)`\n\n```\n[in a block](missing-3.md)\n```\n")
    problems = link_problems(str(page))
    assert len(problems) == 3, problems
    assert ["missing.md" in problems[0], "#unknown-part" in problems[1], "#nowhere" in problems[2]] == [True] * 3
    assert problems[0].split(":")[1] == "4"  # the line of the broken link


def test_an_unknown_option_is_found():
    markdown = ("## Using `predict.py`\n\nIt takes `--rows` and `--no-such-row-option`.\n\n"
                "```bash\npython compare.py DIR A B --runs 5 \\\n    --no-such-compare-option  # comment\n"
                "pip install --index-url URL torch && python tune.py DIR A B --trials 3\n```\n\n"
                "| `--output` | `compare.py`'s `--methods` |\n\n## Elsewhere\n\n`--no-such-anywhere`\n\n"
                "```\ndiscomkd-gpu-check OUT --cpu-small --no-such-check-option\n```\n")
    uses = option_uses(markdown)
    predict, compare, tune, check = (f"discomkd.commands.{name}" for name in ("predict", "compare", "tune", "gpu_check"))
    assert (predict, "--rows", 3) in uses and (predict, "--no-such-row-option", 3) in uses
    assert (compare, "--runs", 6) in uses and (compare, "--no-such-compare-option", 6) in uses
    assert (tune, "--trials", 8) in uses and not any(option == "--index-url" for _, option, _ in uses)
    assert (predict, "--output", 11) in uses and (compare, "--methods", 11) in uses
    assert (ANY, "--no-such-anywhere", 15) in uses
    assert (check, "--cpu-small", 18) in uses and (check, "--no-such-check-option", 18) in uses
    unknown = {(command, option) for command, option, _ in uses if option not in known_options(command)}
    assert unknown == {(predict, "--no-such-row-option"), (compare, "--no-such-compare-option"),
                       (ANY, "--no-such-anywhere"), (check, "--no-such-check-option")}


# ----------------------------------------------------------------------------- the README's numbers
MACHINE = re.compile(r"^Machine: (?P<cpu>[^,]+), (?P<cores>\d+) cores[^;]*; Python (?P<python>\S+); PyTorch "
                     r"(?P<torch>\S+);", re.M)
DEMO_RUN = os.path.join(ROOT, "example_digits", "DisCoM-KD_IMAGE_PROJ", "results.json")


def readme_quick_start() -> tuple[dict, dict[str, list[str]]]:
    """The README's quick-start machine line ({cpu, cores, python, torch}) and its table {modality: cells}."""
    text = read(os.path.join(ROOT, "README.md"))
    section = text[text.index("## Results"):text.index("## Layout")]
    machine = MACHINE.search(section)
    assert machine, "the quick-start table names its machine: 'Machine: CPU, N cores...; Python X; PyTorch Y;'"
    rows = [line.strip("|").split("|") for line in section.splitlines() if re.match(r"\| (IMAGE|PROJ) \|", line)]
    return machine.groupdict(), {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def this_machine() -> dict:
    import platform
    import sys

    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return {"cpu": cpu, "cores": str(os.cpu_count()), "python": sys.version.split()[0], "torch": torch.__version__}


def test_the_readme_quick_start_table_is_what_make_demo_prints_on_its_machine(tmp_path):
    """The README's table against `make demo`'s own run (example_digits/DisCoM-KD_IMAGE_PROJ), or, with
    DISCOMKD_SLOW_TESTS=1, against its training run anew (2-3 minutes); skipped on another machine, whose CPU and
    libraries give other digits, and where make demo has not run."""
    machine, table = readme_quick_start()
    here = this_machine()
    if here != machine:
        pytest.skip(f"the README's table is of {machine}; this machine is {here}")
    if not os.path.exists(DEMO_RUN) and not os.environ.get("DISCOMKD_SLOW_TESTS"):
        pytest.skip("make demo has not run here (DISCOMKD_SLOW_TESTS=1 runs its training)")
    path = DEMO_RUN
    if os.environ.get("DISCOMKD_SLOW_TESTS"):
        import subprocess
        import sys

        from discomkd.data.example import make_digits_example

        make_digits_example(str(tmp_path / "example"))
        subprocess.run([sys.executable, os.path.join(ROOT, "main_DisCoM-KD.py"), str(tmp_path / "example"), "IMAGE",
                        "PROJ", "--epochs", "30", "--augment-first", "none", "--quiet"], check=True, timeout=900)
        path = str(tmp_path / "example" / "DisCoM-KD_IMAGE_PROJ" / "results.json")
    with open(path) as handle:
        results = json.load(handle)
    if results["config"]["epochs"] != 30 or results["status"] != "finished":
        pytest.skip(f"{path} is not make demo's 30-epoch run")
    printed = {column: [r["encoder"], str(r["best_epoch"]), f"{r['valid']['weighted_f1']:.4f}",
                        *(f"{r['test'][k]:.4f}" for k in ("weighted_f1", "macro_f1", "accuracy"))]
               for column, r in results["final"].items()}
    assert printed == table
