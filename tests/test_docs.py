"""The README and docs/ stay true: every module is named, links land, commands parse, code runs.

- docs/architecture.md names every module of models/ and utils/, every top-level script and
  every scripts/*.py and scripts/*.sh by its path, and every path it names exists;
- every relative link of README.md and docs/*.md points to a file that exists, and every
  ``#anchor`` to a heading of the target (GitHub's anchors);
- README.md stays short and holds the exact test command CI runs;
- every command line of a ```bash block that runs one of the project's Python scripts parses
  with that script's own argument parser;
- the ```python blocks of README.md and docs/*.md run as shown, against the shipped demo model
  and data/images, in a temporary folder (one subprocess for all of them).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from tests.conftest import REPO, load_script

DOCS = REPO / "docs"
README = REPO / "README.md"
TEST_COMMAND = "pip install -r requirements-dev.txt && python -m pytest -q"
README_MAX_LINES = 300

FENCE = re.compile(r"^(\s*)```(\w*)\s*$")


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def blocks(path: Path) -> list[tuple[str, int, str]]:
    """(language, first line number, text) of every fenced code block; indented fences included."""
    out, lang, start, indent, lines = [], None, 0, 0, []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = FENCE.match(line)
        if lang is None and m:
            lang, start, indent, lines = m.group(2) or "text", n + 1, len(m.group(1)), []
        elif lang is not None and line.strip() == "```":
            out.append((lang, start, "\n".join(lines)))
            lang = None
        elif lang is not None:
            lines.append(line[indent:] if line[:indent].strip() == "" else line)
    assert lang is None, f"{rel(path)}: a code block opened at line {start - 1} is never closed"
    return out


def prose(path: Path) -> str:
    """The file without its fenced code blocks (their lines blanked, so line numbers hold)."""
    out, inside = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if not inside and FENCE.match(line):
            inside = True
        elif inside and line.strip() == "```":
            inside = False
        else:
            out.append("" if inside else line)
            continue
        out.append("")
    return "\n".join(out)


# ---- architecture.md names every module ------------------------------------------------------
def modules_to_document() -> list[str]:
    found = [p for pkg in ("models", "utils") for p in (REPO / pkg).rglob("*.py")
             if p.name != "__init__.py" and "__pycache__" not in p.parts]
    found += [p for p in REPO.glob("*.py")]
    found += [*(REPO / "scripts").glob("*.py"), *(REPO / "scripts").glob("*.sh")]
    found.append(REPO / "data" / "make_demo_data.py")
    return sorted(rel(p) for p in found)


def named_paths(text: str) -> set[str]:
    """Paths written in backticks: `utils/routing/policy.py`, `detect.py`, `scripts/demo.sh`."""
    return set(re.findall(r"`([\w./-]+\.(?:py|sh))`", text))


def test_modules_are_found() -> None:
    names = modules_to_document()
    for expected in ("detect.py", "dydet.py", "models/dynamic.py", "utils/routing/policy.py",
                     "scripts/demo.sh", "scripts/strip_checkpoint.py"):
        assert expected in names


def test_architecture_names_every_module() -> None:
    named = named_paths((DOCS / "architecture.md").read_text(encoding="utf-8"))
    missing = [p for p in modules_to_document() if p not in named]
    assert not missing, f"docs/architecture.md does not name (as `path`): {missing}"


def test_architecture_names_only_existing_modules() -> None:
    named = named_paths((DOCS / "architecture.md").read_text(encoding="utf-8"))
    gone = sorted(p for p in named if not (REPO / p).is_file())
    assert not gone, f"docs/architecture.md names files that do not exist (paths from the repository root): {gone}"


def test_architecture_states_the_import_rule() -> None:
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    assert "tests/test_layout.py" in text and "never imports `utils/`" in text
    assert (REPO / "tests" / "test_layout.py").is_file()


# ---- links and anchors -----------------------------------------------------------------------
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: inline markup dropped, lower case, punctuation removed,
    spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()  # a link: its text
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        k = seen.get(base, 0)
        seen[base] = k + 1
        out.add(base if k == 0 else f"{base}-{k}")
    return frozenset(out)


def links(path: Path) -> list[tuple[int, str]]:
    text = re.sub(r"`[^`\n]*`", lambda m: " " * len(m.group(0)), prose(path))  # no links in code spans
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in LINK.finditer(text)]


def test_slug_is_githubs() -> None:
    assert slug("Measured set-up times") == "measured-set-up-times"
    assert slug("INT8 on every x86 CPU: saturation") == "int8-on-every-x86-cpu-saturation"
    assert slug("Deployment backends: `dy-yolov7-tiny` @ 320 (easy 3.4, hard 5.4 GFLOPs)") == \
        "deployment-backends-dy-yolov7-tiny--320-easy-34-hard-54-gflops"
    assert slug("The dial: choosing the threshold") == "the-dial-choosing-the-threshold"
    assert slug("One image, from `python detect.py` to a Result") == "one-image-from-python-detectpy-to-a-result"


def test_readme_links_every_docs_page() -> None:
    required = {"architecture", "training", "routing", "dualres", "export", "benchmark", "reliability", "api", "tests"}
    pages = {p.stem for p in DOCS.glob("*.md")}
    assert required <= pages, f"docs pages missing: {sorted(required - pages)}"
    linked = {Path(target.partition("#")[0]).stem for _, target in links(README) if target.startswith("docs/")}
    assert not pages - linked, f"README.md does not link {sorted(pages - linked)}"


def test_relative_links_and_anchors_resolve() -> None:
    bad = []
    for path in doc_files():
        for line, target in links(path):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                bad.append(f"{rel(path)}:{line}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{rel(path)}:{line}: {target} (no heading #{anchor} in {dest.name})")
    assert not bad, "broken links:\n" + "\n".join(bad)


# ---- the README ------------------------------------------------------------------------------
def test_readme_is_short_and_has_the_test_command() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES, f"README.md has {len(text.splitlines())} lines"
    assert TEST_COMMAND in text
    bash = "\n".join(t for lang, _, t in blocks(README) if lang == "bash")
    assert TEST_COMMAND in bash, "the test command belongs in a bash block of README.md"


def test_docs_name_no_tickets() -> None:
    """Docs say what things do, never which issue asked for them."""
    bad = [f"{rel(p)}:{n}" for p in doc_files()
           for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
           if re.search(r"\b(issue|ticket|PR)s?\s*#\d+", line, re.I)]
    assert not bad, f"issue references: {bad}"


# ---- commands parse with the scripts' own parsers ---------------------------------------------
SCRIPTS = ("detect.py", "test.py", "train.py", "train_router.py", "export.py", "benchmark.py")
LAUNCHERS = {"python", "python3", "torchrun", "time", "qemu-x86_64"}


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@cache
def parser_for(script: str):
    """A function argv -> None that raises SystemExit(!= 0) when ``script`` rejects ``argv``."""
    if script in SCRIPTS:
        module = importlib.import_module(script[:-3])
        if Path(module.__file__).resolve() != REPO / script:  # e.g. the standard library's `test`
            module = _load(REPO / script, script[:-3])
        return module.parse_args
    if script == "models/yolo.py":
        from models import yolo
        return yolo.parse_args
    if script == "data/make_demo_data.py":
        module = _load(REPO / script, "make_demo_data")

        def parse(argv: list[str]) -> None:  # its parser lives in main(): run it with the writer stubbed
            real = module.make_demo_dataset
            module.make_demo_dataset = lambda *a, **k: Path("demo.yaml")
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    module.main(argv)
            finally:
                module.make_demo_dataset = real
        return parse
    if script.startswith("scripts/") and (REPO / script).is_file():
        module = load_script(Path(script).stem)
        if hasattr(module, "parse_args"):
            return module.parse_args
        from utils.options import parse_options
        return lambda argv: parse_options(module.Options, argv)
    return None


def command_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, command) of every ```bash block line, continuations joined."""
    out = []
    for lang, start, text in blocks(path):
        if lang not in {"bash", "sh", "shell", "console"}:
            continue
        pending, first = "", 0
        for k, line in enumerate(text.splitlines()):
            if not pending:
                first = start + k
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            full = (pending + line).strip()
            pending = ""
            if full and not full.startswith("#"):
                out.append((first, full))
    return out


def split_commands(line: str) -> list[list[str]]:
    """Shell words of each simple command of ``line`` (split at &&, ||, ;, |; comments dropped)."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lex.whitespace_split = True
    lex.commenters = "#"
    commands, words = [], []
    for tok in lex:
        if tok in {"&&", "||", ";", "|", "&"}:
            commands.append(words)
            words = []
        else:
            words.append(tok)
    commands.append(words)
    return [c for c in commands if c]


def script_call(words: list[str]) -> tuple[str, list[str]] | None:
    """(script path, its arguments) when ``words`` run a Python file of this repository."""
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):  # VAR=value cmd
        words = words[1:]
    if not words or Path(words[0]).name not in LAUNCHERS or "-m" in words[:2] or "-c" in words[:2]:
        return None
    for i, w in enumerate(words[1:], 1):
        if w.endswith(".py"):
            return w.removeprefix("./"), words[i + 1:]
    return None


def doc_commands() -> list[tuple[str, str, list[str]]]:
    """(where, script, argv) of every command in a bash block that runs a Python script."""
    out = []
    for path in doc_files():
        for line, cmd in command_lines(path):
            for words in split_commands(cmd):
                call = script_call(words)
                if call:
                    out.append((f"{rel(path)}:{line}", *call))
    return out


def test_command_extraction() -> None:
    assert split_commands("pip install -r requirements-dev.txt && python -m pytest -q  # CI") == \
        [["pip", "install", "-r", "requirements-dev.txt"], ["python", "-m", "pytest", "-q"]]
    assert script_call(["OMP_NUM_THREADS=1", "python", "detect.py", "--source", "a b.jpg"]) == \
        ("detect.py", ["--source", "a b.jpg"])
    assert script_call(["torchrun", "--nproc_per_node", "2", "train.py", "--cfg", "x"]) == ("train.py", ["--cfg", "x"])
    assert script_call(["python", "-m", "pytest", "-q"]) is None
    lines = [c for _, c in command_lines(DOCS / "training.md")]
    assert any(c.startswith("python train.py --cfg dy-yolov7-tiny --weights runs/train/demo-plain") for c in lines)
    assert not any(c.endswith("\\") for c in lines)


def test_shell_scripts_in_commands_exist() -> None:
    bad = [f"{rel(p)}:{n}: {w[1]}" for p in doc_files() for n, cmd in command_lines(p) for w in split_commands(cmd)
           if len(w) > 1 and w[0] in {"bash", "sh"} and not (REPO / w[1]).is_file()]
    assert not bad, f"shell scripts that do not exist: {bad}"


def test_doc_commands_cover_every_script() -> None:
    used = {script for _, script, _ in doc_commands()}
    missing = sorted((set(SCRIPTS) | {"data/make_demo_data.py", "scripts/export_accuracy.py"}) - used)
    assert not missing, f"no documented command runs {missing}"


def test_a_bad_flag_is_caught() -> None:
    """The check below can fail: a flag a script does not have is refused."""
    for script in (*SCRIPTS, "data/make_demo_data.py", "scripts/strip_checkpoint.py", "models/yolo.py"):
        with pytest.raises(SystemExit) as e, contextlib.redirect_stderr(io.StringIO()):
            parser_for(script)(["--no-such-flag"])
        assert e.value.code != 0, script


def test_documented_commands_parse() -> None:
    commands = doc_commands()
    assert len(commands) >= 60, f"only {len(commands)} commands found"
    bad = []
    for where, script, argv in commands:
        parse = parser_for(script)
        if parse is None:
            bad.append(f"{where}: {script} is not a script of this repository")
            continue
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                parse(argv)
        except SystemExit as e:
            if e.code not in (0, None):
                why = (err.getvalue().strip().splitlines() or [f"exit {e.code}"])[-1]
                bad.append(f"{where}: {script} {shlex.join(argv)}\n    {why}")
        except (argparse.ArgumentError, ValueError, TypeError) as e:
            bad.append(f"{where}: {script} {shlex.join(argv)}\n    {e}")
    assert not bad, "commands that their script refuses:\n" + "\n".join(bad)


# ---- Python snippets run -----------------------------------------------------------------------
RUNNER = r'''
import json, sys, traceback
failed = []
for where, code in json.load(open(sys.argv[1], encoding="utf-8")):
    path, line = where.rsplit(":", 1)
    try:
        exec(compile("\n" * (int(line) - 1) + code, path, "exec"), {"__name__": "__main__"})
    except BaseException:
        failed.append(where + "\n" + traceback.format_exc(limit=-3))
open(sys.argv[2], "w", encoding="utf-8").write("\n".join(failed))
sys.exit(1 if failed else 0)
'''


def python_snippets() -> list[tuple[str, str]]:
    return [(f"{rel(p)}:{start}", text) for p in doc_files() for lang, start, text in blocks(p) if lang == "python"]


@pytest.mark.long(20)
def test_python_snippets_run(tmp_path: Path) -> None:
    import json
    snippets = python_snippets()
    where = {w.rsplit(":", 1)[0] for w, _ in snippets}
    assert {"README.md", "docs/api.md"} <= where, f"python blocks found only in {sorted(where)}"
    for name in ("data", "weights", "cfg"):  # read from the repository; everything written stays here
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / "snippets.json").write_text(json.dumps(snippets), encoding="utf-8")
    (tmp_path / "runner.py").write_text(RUNNER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "MPLBACKEND": "Agg"}
    out = subprocess.run([sys.executable, "runner.py", "snippets.json", "failed.txt"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    failed = tmp_path / "failed.txt"
    why = failed.read_text(encoding="utf-8") if failed.is_file() else out.stderr[-4000:]
    rc = out.returncode
    assert rc == 0, f"python blocks that fail:\n{why}"
