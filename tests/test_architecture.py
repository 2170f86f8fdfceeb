"""The import architecture of the three packages, read from their sources (packages/*/src).

What counts as an import of module ``b`` by module ``a``: an ``import b`` or ``from b import x``
(``from p import b`` when ``p.b`` is a module) anywhere in ``a`` — at the top or inside a
function, since a lazy import is a dependency all the same. Two kinds are not counted:

* imports under ``if TYPE_CHECKING:``: they never run, type checkers resolve them lazily;
* the parent packages Python executes on the way (``import a.b.c`` runs ``a/b/__init__.py``):
  a package ``__init__`` that re-exports its modules would otherwise make every module of the
  package a circle with it.

The package face ``tm_gym`` (its ``__init__``) may be imported from anywhere (importing it only
registers the environment ids): it loads its public API lazily, by name, and is checked to import
nothing of tm_gym at run time, so it cannot close a circle.

The rules:

1. no circle between modules, in any of the three packages;
2. tm_gym's layers (:data:`TM_GYM_LAYERS`, lowest first): a module imports only from its own
   layer package or from lower layers, and two packages on one layer never import each other;
3. packages build on each other in one direction (tm_gym < tm_algos < tm_dist), and tm_algos and
   tm_dist use only tm_gym's public modules (:data:`TM_GYM_PUBLIC`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

import pytest

SRC_ROOTS = sorted((Path(__file__).resolve().parent.parent / "packages").glob("*/src"))
PACKAGE_ORDER = ("tm_gym", "tm_algos", "tm_dist")
"""Lowest first: a package may import the ones before it, never those after it."""

TM_GYM_LAYERS: tuple[tuple[str, ...], ...] = (
    ("tm_gym.error",),
    ("tm_gym.core",),
    ("tm_gym.reward", "tm_gym.preprocess", "tm_gym.viz"),
    ("tm_gym.sim", "tm_gym.game"),
    ("tm_gym.realtime",),
    ("tm_gym.recording",),
    ("tm_gym.envs",),
    ("tm_gym.backends",),
    ("tm_gym.emulator", "tm_gym.testing", "tm_gym.human"),
    ("tm_gym.cli",),
    ("tm_gym.__main__",),
)
"""tm_gym's floors, lowest first (see packages/tm-gym/README.md, "Layout"):

0. ``error`` — the exception classes;
1. ``core`` — shared types, no Numba, no environments: telemetry record, capture, step info,
   settings and spaces, camera/LIDAR geometry, action checking, port protocols, config toolkit;
2. pure functions over those types: ``reward``, ``preprocess`` (screenshot → frame, pixel
   LIDAR), ``viz`` (plots, race-time formatting);
3. ``sim`` (the simulator) and ``game`` (adapters to the live game) — siblings;
4. ``realtime`` — the rtgym layer over the ports;
5. ``recording`` — the .tmrec format, the recorder, replay;
6. ``envs`` — the synchronous simulator's environments;
7. ``backends`` — the backend registry behind ``make_env``;
8. ``emulator``, ``testing`` (fakes, emulator process), ``human`` (the human-driving window);
9. ``cli``; 10. ``__main__``.
"""

TM_GYM_PUBLIC: tuple[str, ...] = (
    "tm_gym",
    "tm_gym.error",
    "tm_gym.core",
    "tm_gym.reward",
    "tm_gym.viz",
    "tm_gym.sim.track",
    "tm_gym.sim.tracks",
    "tm_gym.sim.expert",
    "tm_gym.recording",
    "tm_gym.envs",
    "tm_gym.backends",
    "tm_gym.testing",
    "tm_gym.cli._common",
)
"""What tm_algos and tm_dist may import from tm_gym (a module or a package and its modules).

``tm_gym.cli._common`` is the CLI runner shared by every command line of the three packages."""


# -- the import graph ----------------------------------------------------------------------------
def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in SRC_ROOTS:
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement outside ``if TYPE_CHECKING:`` blocks (their ``else`` counts)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_pkg: bool) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        here = module.split(".") if is_pkg else module.split(".")[:-1]
        here = here[: len(here) - (node.level - 1)]
        base = ".".join([*here, base] if base else here)
    yield base
    yield from (f"{base}.{alias.name}" for alias in node.names)


@cache
def import_graph() -> dict[str, frozenset[str]]:
    """Module → the package modules it imports at run time (see the module docstring)."""
    modules = _modules()
    graph: dict[str, frozenset[str]] = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        deps: set[str] = set()
        for node in _runtime_imports(tree):
            for target in _targets(node, name, is_pkg):
                if target in modules and target != name:
                    deps.add(target)
        # "from p import m" with p.m a module: the import is of p.m, not of p itself
        deps -= {d for d in deps if any(o.startswith(d + ".") for o in deps)}
        graph[name] = frozenset(deps)
    return graph


def _cycles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _a_loop(graph: dict[str, frozenset[str]], comp: list[str]) -> list[str]:
    """One loop through ``comp``'s first module, as a path ``a → b → … → a``."""
    members, start = set(comp), comp[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    raise AssertionError(f"no loop in {comp}")  # pragma: no cover - Tarjan found one


def _package(module: str) -> str:
    return module.split(".")[0]


def _show(pairs: Iterable[str]) -> str:
    return "\n  ".join(pairs)


# -- the rules -----------------------------------------------------------------------------------
@pytest.mark.parametrize("package", PACKAGE_ORDER)
def test_no_import_circles(package: str) -> None:
    graph = import_graph()
    loops = [
        " → ".join(_a_loop(graph, comp))
        for comp in _cycles(graph)
        if any(_package(m) == package for m in comp)
    ]
    assert not loops, f"{len(loops)} import circle(s) in {package}:\n  " + _show(loops)


def _layer_of(module: str) -> tuple[int, str] | None:
    """(floor, the layer package ``module`` belongs to), by the longest matching prefix."""
    best: tuple[int, str] | None = None
    for floor, packages in enumerate(TM_GYM_LAYERS):
        for pkg in packages:
            if (module == pkg or module.startswith(pkg + ".")) and (
                best is None or len(pkg) > len(best[1])
            ):
                best = (floor, pkg)
    return best


def test_every_tm_gym_module_has_a_layer() -> None:
    homeless = sorted(
        m for m in import_graph() if _package(m) == "tm_gym" and m != "tm_gym" and not _layer_of(m)
    )
    assert not homeless, "modules outside TM_GYM_LAYERS (add them):\n  " + _show(homeless)


def test_the_tm_gym_face_imports_nothing_at_run_time() -> None:
    deps = sorted(import_graph()["tm_gym"])
    assert not deps, (
        "tm_gym/__init__.py must load its API lazily (PEP 562), not import " + ", ".join(deps)
    )


def test_no_upward_import_between_tm_gym_layers() -> None:
    bad = []
    for module, deps in sorted(import_graph().items()):
        here = _layer_of(module)
        if here is None:
            continue
        for dep in sorted(deps):
            there = _layer_of(dep)
            if there is None or there[1] == here[1]:
                continue
            if there[0] > here[0]:
                bad.append(f"{module} (floor {here[0]}) → {dep} (floor {there[0]}): upward")
            elif there[0] == here[0]:
                bad.append(f"{module} → {dep}: siblings on floor {here[0]}")
    assert not bad, f"{len(bad)} import(s) against tm_gym's layers:\n  " + _show(bad)


REALTIME_ONLY_OVER_PORTS = ("tm_gym.sim", "tm_gym.game")
"""Lower floors that ``tm_gym.realtime`` still must not use: it drives any backend through the
port protocols of ``tm_gym.core.ports``, never a simulator or game adapter directly."""


def test_realtime_runs_over_the_ports_only() -> None:
    bad = [
        f"{module} → {dep}"
        for module, deps in sorted(import_graph().items())
        if module.startswith("tm_gym.realtime")
        for dep in sorted(deps)
        if any(dep == p or dep.startswith(p + ".") for p in REALTIME_ONLY_OVER_PORTS)
    ]
    assert not bad, "tm_gym.realtime imports a backend's own modules:\n  " + _show(bad)


CORE_MUST_NOT_LOAD = ("numba", "rtgym", "torch")
"""The ground floor is cheap and holds no environment: no compiled kernels, and of Gymnasium
only ``gymnasium.spaces``."""


def _third_party(node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif not node.level and node.module:
        yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_the_core_is_light() -> None:
    bad = []
    for module, path in sorted(_modules().items()):
        if not (module == "tm_gym.core" or module.startswith("tm_gym.core.")):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in _runtime_imports(tree):
            for name in _third_party(node):
                top = name.split(".")[0]
                gym_env = top == "gymnasium" and not name.startswith("gymnasium.spaces")
                if top in CORE_MUST_NOT_LOAD or gym_env:
                    bad.append(f"{module} imports {name}")
    assert not bad, "tm_gym.core must stay light:\n  " + _show(sorted(set(bad)))


def test_packages_build_on_each_other_in_one_direction() -> None:
    bad = [
        f"{module} → {dep}"
        for module, deps in sorted(import_graph().items())
        for dep in sorted(deps)
        if PACKAGE_ORDER.index(_package(dep)) > PACKAGE_ORDER.index(_package(module))
    ]
    assert not bad, "imports of a higher package:\n  " + _show(bad)


def _public(module: str) -> bool:
    return any(module == p or (p != "tm_gym" and module.startswith(p + ".")) for p in TM_GYM_PUBLIC)


@pytest.mark.parametrize("package", ["tm_algos", "tm_dist"])
def test_only_public_tm_gym_modules_are_used(package: str) -> None:
    bad = [
        f"{module} → {dep}"
        for module, deps in sorted(import_graph().items())
        if _package(module) == package
        for dep in sorted(deps)
        if _package(dep) == "tm_gym" and not _public(dep)
    ]
    assert not bad, f"{package} imports tm_gym internals (see TM_GYM_PUBLIC):\n  " + _show(bad)


def test_the_graph_sees_lazy_imports_and_skips_type_checking_ones() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import a.hidden\nelse:\n    import a.shown\n"
        "def f():\n    from a import lazy\n"
        "from .rel import x\n"
    )
    names = {t for n in _runtime_imports(tree) for t in _targets(n, "a.b.m", False)}
    assert {"a.shown", "a.lazy", "a.b.rel", "a.b.rel.x"} <= names
    assert "a.hidden" not in names
    graph = {"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"}), "d": frozenset()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _a_loop(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]
