"""The package layout's rules, checked on the source: imports point one way, no cycles, no
private names borrowed across modules, no library module importing a script."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

SCRIPTS = {"train", "train_router", "test", "detect", "export", "benchmark", "dydet"}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for the library packages (models/, utils/)."""
    out = {}
    for pkg in ("models", "utils"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every import statement in ``path`` (lazy ones included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [a.name for a in node.names]))
    return found


def _targets(module: str, names: list[str], known: dict[str, Path]) -> list[str]:
    """The project modules an import statement loads (``from pkg import mod`` included)."""
    subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in known]
    return subs or ([module] if module in known else [])


def test_models_never_import_utils_or_scripts() -> None:
    bad = [(m, imp) for m, path in _modules().items() if m.startswith("models")
           for imp, _ in _imports(path) if imp.split(".")[0] in {"utils", *SCRIPTS}]
    assert not bad, f"models/ must not import utils/ or scripts: {bad}"


def test_no_library_module_imports_a_script() -> None:
    bad = [(m, imp) for m, path in _modules().items() for imp, _ in _imports(path) if imp in SCRIPTS]
    assert not bad, f"library modules import top-level scripts: {bad}"


def test_no_private_names_imported_across_modules() -> None:
    files = {**_modules(), **{s: REPO / f"{s}.py" for s in SCRIPTS}}
    bad = [(m, imp, n) for m, path in files.items() for imp, names in _imports(path)
           if imp.split(".")[0] in {"models", "utils"} for n in names if n.startswith("_") and n != "__version__"]
    assert not bad, f"private names imported from another module: {bad}"


def test_library_imports_have_no_cycles() -> None:
    known = _modules()
    graph = {m: {t for imp, names in _imports(p) for t in _targets(imp, names, known) if t != m}
             for m, p in known.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, f"import cycles: {cycles}"


def _package(module: str, known: dict[str, Path]) -> str:
    """``models``; a package of utils/ (``utils.routing``); or a helper module of utils/ itself."""
    parts = module.split(".")
    if parts[0] == "models":
        return "models"
    is_package = known[module].name == "__init__.py"
    return ".".join(parts[:2]) if len(parts) > 2 or is_package else module


def test_packages_have_no_cycles() -> None:
    """No package imports one that imports it back, however indirectly (module cycles aside)."""
    known = _modules()
    graph: dict[str, set[str]] = {}
    for m, p in known.items():
        src = _package(m, known)
        graph.setdefault(src, set()).update(_package(t, known) for imp, names in _imports(p)
                                            for t in _targets(imp, names, known) if _package(t, known) != src)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(nxt == goal or (nxt not in seen and not seen.add(nxt) and reaches(nxt, goal, seen))
                   for nxt in graph.get(start, ()))

    cycles = sorted((a, b) for a in graph for b in graph[a] if a < b and reaches(b, a, set()))
    assert not cycles, f"packages importing each other (directly or through others): {cycles}"
