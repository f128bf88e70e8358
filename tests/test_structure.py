"""The package's import structure.

* ``import inhernet`` loads neither ``transformers`` nor anything of ``inhernet.hf`` (checked in a
  fresh interpreter; the import time is printed, not asserted);
* the graph of imports between inhernet's modules has no cycle — deferred imports (inside
  functions, ``if`` blocks, ``try`` blocks, ``if TYPE_CHECKING:`` too) included, since a deferred
  import only moves a cycle from import time to call time;
* nothing outside ``inhernet/hf`` imports ``inhernet.hf`` (or a submodule of it) or ``transformers``;
* no module imports another module's private (``_name``) name.

The graph is read from the source with :mod:`ast` (nothing is imported). Its edges, for a module
``m`` importing the module ``t``: ``m → t``, plus ``m → p`` for every package ``p`` above ``t`` that
is not also above ``m`` (importing ``inhernet.hf.conv1d`` runs ``inhernet/hf/__init__.py`` first;
the packages above ``m`` are already being imported, so a submodule importing a sibling does not
count as importing its parent). ``from P import x`` imports the submodule ``P.x`` when there is one,
else it reads the name ``x`` from ``P`` (``P``'s ``__init__``); so a submodule doing
``from . import name`` imports its own package's ``__init__``, which is a cycle when that
``__init__`` imports the submodule back. A package importing its own submodules is an ordinary edge.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "inhernet"
HF = f"{PACKAGE}.hf"


# ------------------------------------------------------------------------------------------ parsing
@dataclass(frozen=True)
class Import:
    """One import statement (or ``importlib.import_module("...")`` call) in ``module``."""

    module: str  # the importing module
    line: int
    target: str  # the absolute module imported (for ``from X import ...``: X)
    names: tuple[str, ...]  # the names of ``from X import a, b``; () for ``import X``
    deferred: bool  # inside a function / class body / if / try, i.e. not a plain top-level statement

    def where(self) -> str:
        return f"{self.module}:{self.line}"


def _package_root() -> Path:
    root = SRC / PACKAGE
    assert (root / "__init__.py").is_file(), f"no package at {root}"
    return root


def _modules() -> dict[str, tuple[Path, bool]]:
    """``module name → (file, is_package)`` for every .py file of the package."""
    out = {}
    for path in sorted(_package_root().rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


def _resolve(module: str, is_pkg: bool, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name> import ...`` written in ``module``."""
    if level == 0:
        return name or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    if level - 1:
        base = base[: -(level - 1)]
    return ".".join([*base, name] if name else base)


def _imports(module: str, path: Path, is_pkg: bool) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        deferred = id(node) not in top
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(module, node.lineno, alias.name, (), deferred))
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_pkg, node.level, node.module)
            found.append(Import(module, node.lineno, target, tuple(a.name for a in node.names), deferred))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if fname in ("import_module", "__import__") and not node.args[0].value.startswith("."):
                found.append(Import(module, node.lineno, node.args[0].value, (), True))
    return found


@pytest.fixture(scope="module")
def modules() -> dict[str, tuple[Path, bool]]:
    return _modules()


@pytest.fixture(scope="module")
def imports(modules) -> list[Import]:
    return [imp for name, (path, is_pkg) in modules.items() for imp in _imports(name, path, is_pkg)]


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _imported_modules(imp: Import, modules: dict) -> set[str]:
    """The package modules whose code ``imp`` runs (see the module docstring for the rule)."""
    if imp.target != PACKAGE and not imp.target.startswith(PACKAGE + "."):
        return set()
    targets = set()
    if imp.names:
        for name in imp.names:
            sub = f"{imp.target}.{name}"
            targets.add(sub if sub in modules else imp.target)
    else:
        targets.add(imp.target)
    mine = set(_ancestors(imp.module))
    out = set()
    for t in targets:
        # an unknown name (a module that does not exist) still points at its nearest existing package
        while t not in modules and "." in t:
            t = t.rpartition(".")[0]
        out.add(t)
        out.update(p for p in _ancestors(t) if p not in mine and p != imp.module)
    return out


def _graph(imports: list[Import], modules: dict) -> dict[str, dict[str, list[Import]]]:
    """``module → {imported module → the statements that import it}``."""
    graph: dict[str, dict[str, list[Import]]] = {m: {} for m in modules}
    for imp in imports:
        for t in _imported_modules(imp, modules):
            graph[imp.module].setdefault(t, []).append(imp)
    return graph


def _strongly_connected(graph: dict[str, dict[str, list]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); components in a deterministic order."""
    index, low, on_stack, stack, comps, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1
        stack.append(root); on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter[0]; counter[0] += 1
                    stack.append(child); on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop(); on_stack.discard(w); comp.append(w)
                        if w == node:
                            break
                    comps.append(sorted(comp))
    return comps


def _a_cycle(graph: dict[str, dict[str, list]], comp: list[str]) -> list[str]:
    """One shortest cycle through the first module of a strongly connected component (BFS)."""
    members, start = set(comp), comp[0]
    prev, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child == start:
                    path = [node]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return [*reversed(path), start]
                if child in members and child not in prev:
                    prev[child] = node
                    nxt.append(child)
        frontier = nxt
    return comp


def _describe(graph, cycle: list[str]) -> str:
    steps = []
    for a, b in zip(cycle, cycle[1:]):
        imp = graph[a][b][0]
        how = f"from {imp.target} import {', '.join(imp.names)}" if imp.names else f"import {imp.target}"
        steps.append(f"    {a} -> {b}   ({imp.where()}: {how}{', deferred' if imp.deferred else ''})")
    return " -> ".join(cycle) + "\n" + "\n".join(steps)


# ---------------------------------------------------------------------------------------------- tests
def test_import_inhernet_loads_neither_transformers_nor_inhernet_hf():
    code = (
        "import json, sys, time\n"
        "t = time.perf_counter()\n"
        "import inhernet\n"
        "dt = time.perf_counter() - t\n"
        "mods = sorted(sys.modules)\n"
        "print(json.dumps({'seconds': dt, 'file': inhernet.__file__,\n"
        "    'transformers': [m for m in mods if m == 'transformers' or m.startswith('transformers.')],\n"
        f"    'hf': [m for m in mods if m == {HF!r} or m.startswith({HF + '.'!r})]}}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"import inhernet took {info['seconds']:.3f} s ({info['file']})")  # a timing, not asserted
    assert not info["transformers"], f"import inhernet imports transformers: {info['transformers'][:5]}"
    assert not info["hf"], f"import inhernet imports {PACKAGE}.hf: {info['hf']}"


def test_no_import_cycle_inside_the_package(modules, imports):
    graph = _graph(imports, modules)
    cycles = [c for c in _strongly_connected(graph) if len(c) > 1 or c[0] in graph[c[0]]]
    report = "\n\n".join(
        f"cycle among {len(c)} module(s) {c}:\n  e.g. " + _describe(graph, _a_cycle(graph, c))
        + "\n  every import inside it:\n" + "\n".join(
            f"    {a} -> {b}   ({', '.join(i.where() + (' deferred' if i.deferred else '') for i in graph[a][b])})"
            for a in c for b in sorted(graph[a]) if b in c)
        for c in cycles)
    assert not cycles, f"{len(cycles)} import cycle(s) in {PACKAGE} (deferred imports included):\n\n{report}"


#: the one module above inhernet.hf in the dependency order (core ← hf ← train/compare ← cli): the
#: command line offers the Hugging Face commands, so it may import inhernet.hf (never transformers)
#: the layers above inhernet.hf (core <- hf <- train / compare <- cli): they may import inhernet.hf,
#: never transformers itself
ABOVE_HF = (f"{PACKAGE}.cli", f"{PACKAGE}.train", f"{PACKAGE}.compare")


def test_hf_and_transformers_are_imported_only_inside_inhernet_hf(modules, imports):
    """The core (and data/, models/) never imports transformers or inhernet.hf; the layers above it
    (train/, compare/, the command line) may import inhernet.hf, none of them transformers."""
    bad = []
    for imp in imports:
        if imp.module == HF or imp.module.startswith(HF + "."):
            continue
        reached = _imported_modules(imp, modules)
        hf = sorted(m for m in reached if m == HF or m.startswith(HF + "."))
        if imp.target == "transformers" or imp.target.startswith("transformers."):
            bad.append(f"{imp.where()}: imports {imp.target}{' (deferred)' if imp.deferred else ''}")
        elif hf and not any(imp.module == m or imp.module.startswith(m + ".") for m in ABOVE_HF):
            bad.append(f"{imp.where()}: imports {', '.join(hf)}{' (deferred)' if imp.deferred else ''}")
    assert not bad, (f"{len(bad)} import(s) of transformers / {HF} outside {HF} (only {HF} may import them):\n"
                     + "\n".join(bad))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_module_imports_another_modules_private_name(modules, imports):
    bad = []
    for imp in imports:
        if imp.target != PACKAGE and not imp.target.startswith(PACKAGE + "."):
            continue
        for name in imp.names:
            if _private(name) and f"{imp.target}.{name}" not in modules:  # a private submodule is a module
                bad.append(f"{imp.where()}: from {imp.target} import {name}")
    assert not bad, f"{len(bad)} import(s) of another module's private name:\n" + "\n".join(bad)


# ----------------------------------------------------------------------------- the analysis itself
def test_the_import_analysis_on_known_cases():
    """The rules of the graph on hand-made cases (so a clean package is clean for the right reason)."""
    mods = {m: (None, p) for m, p in [("pkg", True), ("pkg.a", False), ("pkg.b", False), ("pkg.sub", True),
                                       ("pkg.sub.c", False)]}
    P = PACKAGE

    def edges(module, target, names=()):
        return _imported_modules(Import(module, 1, target, names, False), {k.replace("pkg", P): v for k, v in mods.items()})

    assert _resolve(f"{P}.sub.c", False, 2, "a") == f"{P}.a"
    assert _resolve(f"{P}.sub", True, 1, "c") == f"{P}.sub.c"
    assert _resolve(f"{P}.a", False, 1, None) == P
    assert edges(P, f"{P}.a", ("x",)) == {f"{P}.a"}  # a package importing its submodule
    assert edges(f"{P}.a", f"{P}.b", ("x",)) == {f"{P}.b"}  # a sibling: not the parent
    assert edges(f"{P}.a", P, ("b",)) == {f"{P}.b"}  # from . import b: the submodule
    assert edges(f"{P}.a", P, ("__name__",)) == {P}  # from . import name: the package's __init__
    assert edges(f"{P}.a", f"{P}.sub.c", ("x",)) == {f"{P}.sub.c", f"{P}.sub"}  # runs sub/__init__ too
    assert edges(f"{P}.sub.c", f"{P}.a", ("x",)) == {f"{P}.a"}
    assert edges(f"{P}.a", "torch") == set()
    g = {"x": {"y": []}, "y": {"z": []}, "z": {"x": []}, "w": {"x": []}}
    comps = [c for c in _strongly_connected(g) if len(c) > 1]
    assert comps == [["x", "y", "z"]] and _a_cycle(g, comps[0]) == ["x", "y", "z", "x"]
    assert _private("_x") and not _private("__version__") and not _private("x")
