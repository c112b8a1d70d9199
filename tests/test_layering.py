"""Layers that only point down: no import cycle among the project's modules, and function-level
imports of project modules only where a comment says why (docs/layers.md has the layers).

Static, from the AST of every file (nothing is imported): an `import` anywhere in a file counts,
inside a function too, so a cycle cannot hide in a function body. `scripts/` folders have no
`__init__.py`; their files import each other by bare name (through `sys.path`), so a bare name
that is a script's file name is that script.

Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_layering.py`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LIBRARY = ("align", "reward_models")

# The function-level imports of project modules left in align/ and reward_models/, each for a
# measured start-up cost (`align` answers config-help, report or a recipe error in ~0.1 s instead
# of ~3 s): align/cli.py 7 (build_base, build_pairs, profile_memory, export), align/config.py 4
# (lora, losses, reward_models: torch). Lower this when one goes; never raise it to hide a cycle.
MAX_FUNCTION_LEVEL_IMPORTS = 11


def _modules(packages, root: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """{dotted module name: file}, and {bare file name: module} of the script folders."""
    mods, bare = {}, {}
    for pkg in packages:
        is_scripts = not (root / pkg / "__init__.py").exists()
        for f in sorted((root / pkg).rglob("*.py")):
            name = ".".join(f.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            mods[name] = f
            if is_scripts:
                bare.setdefault(f.stem, name)
    return mods, bare


def _imported_names(name: str, f: Path, node: ast.AST) -> list[str]:
    """The dotted names an import node may refer to (a from-import's names may be submodules)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:  # relative: from the package of this module (an __init__ is its own package)
        parts = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
    return [base] + [f"{base}.{a.name}" for a in node.names]


def _resolve(candidate: str, mods: dict[str, Path], bare: dict[str, str]) -> str | None:
    if candidate not in mods and candidate.split(".")[0] in bare:
        candidate = bare[candidate.split(".")[0]]
    while candidate and candidate not in mods:
        candidate = candidate.rpartition(".")[0]
    return candidate or None


def import_graph(packages, root: Path = REPO) -> dict[str, set[str]]:
    mods, bare = _modules(packages, root)
    graph: dict[str, set[str]] = {}
    for name, f in mods.items():
        targets = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for candidate in _imported_names(name, f, node):
                    target = _resolve(candidate, mods, bare)
                    if target is not None and target != name:
                        targets.add(target)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as one cycle
    through its first module: every import cycle lies inside one of them."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_one_cycle(graph, set(c), c[0]) for c in components]


def _one_cycle(graph: dict[str, set[str]], component: set[str], start: str) -> list[str]:
    """A shortest path start -> ... -> start inside the component (breadth first)."""
    parents, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while parents[path[-1]] is not None:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError("a strongly connected component without a cycle")


def function_level_imports(packages=LIBRARY, root: Path = REPO) -> list[tuple[str, int, str, bool]]:
    """(file, line, import text, has a comment on its line or the line before) for every import
    of a project module inside a function body."""
    project = {p.split("/")[0] for p in packages}
    found = []
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            text = f.read_text()
            lines = text.splitlines()
            seen = set()
            for fn in ast.walk(ast.parse(text, str(f))):
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(fn):
                    if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.lineno in seen:
                        continue
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    relative = isinstance(node, ast.ImportFrom) and node.level > 0
                    if relative or any(n.split(".")[0] in project for n in names):
                        seen.add(node.lineno)
                        line = lines[node.lineno - 1]
                        before = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
                        commented = "#" in line or before.startswith("#")
                        found.append((str(f.relative_to(root)), node.lineno, line.strip(), commented))
    return found


# ---------------------------------------------------------------- the checker itself


def test_cycles_are_found_and_only_real_ones():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert cycles({"x": {"y"}, "y": {"x"}}) == [["x", "y", "x"]]


def test_the_graph_reads_function_level_relative_and_bare_script_imports(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("from . import leaf\n")
    (tmp_path / "pkg" / "sub" / "leaf.py").write_text("def f():\n    from pkg import top  # why: a test\n\n\ndef g():\n    from ..top import x\n")
    (tmp_path / "pkg" / "top.py").write_text("from pkg.sub import leaf\n")
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "one.py").write_text("import two\n")
    (tmp_path / "tools" / "two.py").write_text("def g():\n    from one import x\n")
    graph = import_graph(("pkg", "tools"), tmp_path)
    assert graph["pkg.sub"] == {"pkg.sub.leaf"} and graph["pkg.sub.leaf"] == {"pkg", "pkg.top"}
    # pkg.top imports pkg.sub (the package) and pkg.sub.leaf; the bare `two` and `one` are the scripts
    assert cycles(graph) == [["pkg.sub", "pkg.sub.leaf", "pkg.top", "pkg.sub"], ["tools.one", "tools.two", "tools.one"]]
    found = function_level_imports(("pkg",), tmp_path)
    assert [(f, n, ok) for f, n, _, ok in found] == [("pkg/sub/leaf.py", 2, True), ("pkg/sub/leaf.py", 6, False)]


# ---------------------------------------------------------------- the project


def test_no_import_cycle_in_the_library():
    found = cycles(import_graph(LIBRARY))
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_import_cycle_with_the_scripts():
    found = cycles(import_graph((*LIBRARY, "scripts")))
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_function_level_imports_of_project_modules_are_few_and_say_why():
    found = function_level_imports()
    listing = "\n".join(f"{f}:{n}: {text}" for f, n, text, _ in found)
    assert len(found) <= MAX_FUNCTION_LEVEL_IMPORTS, (
        f"{len(found)} function-level imports of project modules (at most {MAX_FUNCTION_LEVEL_IMPORTS}); lift them "
        f"to the top of their files, or say why on the line:\n{listing}")
    silent = [f"{f}:{n}: {text}" for f, n, text, commented in found if not commented]
    assert not silent, "function-level imports without a comment saying why:\n" + "\n".join(silent)
