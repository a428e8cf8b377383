"""The layer contract: bratslab's import graph has no cycle and never imports upwards.

Layers, lowest first (a module may import its own layer, as long as no cycle forms, and any
layer below it; ``data`` and ``models`` share a layer and do not import each other):

====  ===========  ===============================================================================
   0  foundation   the package root (config, settings, atomic, names, shutdown, cluster, console)
                   and ``compat/``
   1  data         ``data/`` (raw NIfTI → store, loaders, augmentation)
   1  models       ``models/`` (the architecture zoo)
   2  tracking     ``tracking/`` (MLflow only)
   3  evaluate     ``evaluate/`` (metrics, scoring, label maps, export, reports)
   4  postprocess  ``postprocess/`` (fit and apply thresholds over label maps and metrics)
   5  inference    ``inference/`` (sliding window, TTA, predict, model loading and evaluation)
   6  train        ``train/``
   7  tune         ``tune/``
   8  jobs         ``jobs/`` (Ray Jobs submission and the job-spec format)
   9  app          ``app/`` and ``__main__`` (the ``bratslab`` command line, the demo)
====  ===========  ===============================================================================

The graph is built from the source with :mod:`ast`: ``import`` statements at module level and
inside functions both count (an import inside a function runs as surely as one at the top, it
only runs later); imports under ``if TYPE_CHECKING:`` do not (they never run).

Inside functions, bratslab modules may be imported by the application layer (its commands import
the stages they run, so ``bratslab --help`` stays fast) and, elsewhere, only when the module
pulls in a heavy third-party package (:data:`HEAVY`: torch, Ray, MLflow, ...) as it is imported:
deferring it is then deferring that package. Every other bratslab import belongs at the top of
the module, where the graph is plain to see.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "bratslab"

#: Layer of each unit (a folder of the package, or "foundation" for the root's modules).
LAYERS = {
    "foundation": 0,
    "compat": 0,
    "data": 1,
    "models": 1,
    "tracking": 2,
    "evaluate": 3,
    "postprocess": 4,
    "inference": 5,
    "train": 6,
    "tune": 7,
    "jobs": 8,
    "app": 9,
}
#: Modules allowed at the package root; everything else lives in a layer's folder.
ROOT_MODULES = {
    "__init__": "foundation",
    "config": "foundation",
    "settings": "foundation",
    "atomic": "foundation",
    "names": "foundation",
    "shutdown": "foundation",
    "cluster": "foundation",
    "console": "foundation",
    "native_stderr": "foundation",
    "__main__": "app",  # `python -m bratslab` runs the command line
}
#: Units whose functions may import bratslab modules (CLI commands import the stage they run).
LAZY_IMPORTERS = {"app"}
#: Third-party packages slow enough to import that a module using them may be imported lazily.
HEAVY = {
    "torch", "ray", "mlflow", "monai", "optuna", "matplotlib", "scipy", "pandas", "pyarrow",
    "panoptica", "fvcore", "schedulefree", "boto3", "psycopg", "sqlalchemy",
}  # fmt: skip


@dataclass(frozen=True)
class Import:
    """One import of a bratslab module: who imports what, where, and whether inside a function."""

    source: str  # importing module, dotted ("bratslab.inference.predict")
    target: str  # imported module, dotted
    line: int
    in_function: bool

    def where(self) -> str:
        kind = "inside a function" if self.in_function else "at module level"
        return f"{_path(self.source)}:{self.line} imports {self.target} ({kind})"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _path(module: str) -> str:
    return MODULES[module].relative_to(PACKAGE.parent).as_posix()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(name: str) -> str | None:
    """The bratslab module that importing ``name`` loads (its longest known prefix)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool):
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.depth = 0
        self.found: list[Import] = []

        self.heavy: set[str] = set()  # heavy third-party packages imported at module level

    def _add(self, name: str, line: int) -> None:
        if name != "bratslab" and not name.startswith("bratslab."):
            if self.depth == 0 and name.split(".")[0] in HEAVY:
                self.heavy.add(name.split(".")[0])
            return
        target = _resolve(name)
        found = Import(self.module, target, line, self.depth > 0) if target else None
        if found is not None and target != self.module and found not in self.found:
            self.found.append(found)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):  # annotations only: never runs
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def _function(self, node) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if not node.level and not base.startswith("bratslab"):
            self._add(base, node.lineno)
            return
        if node.level:
            anchor = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            base = ".".join([*anchor, *([node.module] if node.module else [])])
        for alias in node.names:
            # `from bratslab.x import y` loads module bratslab.x.y when there is one.
            full = f"{base}.{alias.name}"
            self._add(full if full in MODULES else base, node.lineno)


def _imports() -> tuple[list[Import], dict[str, set[str]]]:
    found, heavy = [], {}
    for module, path in MODULES.items():
        collector = _Collector(module, path.name == "__init__.py")
        collector.visit(ast.parse(path.read_text(), str(path)))
        found += collector.found
        heavy[module] = collector.heavy
    return found, heavy


IMPORTS, _DIRECTLY_HEAVY = _imports()


def heavy_packages(module: str) -> set[str]:
    """The heavy third-party packages that importing ``module`` loads: its own module-level
    imports and, transitively, those of the bratslab modules it imports at module level."""
    seen, todo, out = {module}, [module], set()
    while todo:
        m = todo.pop()
        out |= _DIRECTLY_HEAVY[m]
        for i in IMPORTS:
            if i.source == m and not i.in_function and i.target not in seen:
                seen.add(i.target)
                todo.append(i.target)
    return out


def unit(module: str) -> str:
    """The layer unit of a dotted module: its top folder, or its role at the package root."""
    parts = module.split(".")
    if len(parts) == 1:
        return "foundation"
    if (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return ROOT_MODULES.get(parts[1], f"root:{parts[1]}")


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one node, as one cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:  # Tarjan; the graphs are small enough for recursion
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return [_cycle_in(sorted(c)[0], c, edges) for c in components]


def _cycle_in(start: str, component: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest cycle from ``start`` back to itself inside ``component`` (breadth first)."""
    previous = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(edges.get(v, ()) & component):
            if w == start:
                path = [v]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if w not in previous:
                previous[w] = v
                queue.append(w)
    return [start]


def _edge_lines(a: str, b: str, key) -> str:
    hits = [i for i in IMPORTS if key(i.source) == a and key(i.target) == b]
    return "; ".join(i.where() for i in hits[:3]) + (
        f"; +{len(hits) - 3} more" if len(hits) > 3 else ""
    )


def test_every_module_has_a_layer():
    unknown = sorted(f"{_path(m)} ({unit(m)})" for m in MODULES if unit(m) not in LAYERS)
    assert not unknown, (
        "modules outside the layer table (the package root keeps only foundation modules; "
        "a new folder needs a layer in tests/unit/test_layers.py and the README): "
        + ", ".join(unknown)
    )


def test_no_file_level_import_cycle():
    edges: dict[str, set[str]] = defaultdict(set)
    for i in IMPORTS:
        edges[i.source].add(i.target)
    cycles = _cycles(edges)
    lines = []
    for cycle in cycles:
        steps = [_edge_lines(a, b, lambda m: m) for a, b in zip(cycle, cycle[1:], strict=False)]
        lines.append(" -> ".join(cycle) + "\n      " + "\n      ".join(steps))
    assert not cycles, f"{len(cycles)} import cycle(s) between files:\n  " + "\n  ".join(lines)


def test_no_folder_level_import_cycle():
    edges: dict[str, set[str]] = defaultdict(set)
    for i in IMPORTS:
        if unit(i.source) != unit(i.target):
            edges[unit(i.source)].add(unit(i.target))
    cycles = _cycles(edges)
    lines = []
    for cycle in cycles:
        steps = [
            f"{a} -> {b}: {_edge_lines(a, b, unit)}" for a, b in zip(cycle, cycle[1:], strict=False)
        ]
        lines.append(" -> ".join(cycle) + "\n      " + "\n      ".join(steps))
    assert not cycles, f"{len(cycles)} import cycle(s) between folders:\n  " + "\n  ".join(lines)


def test_no_upward_import():
    upward = []
    for i in IMPORTS:
        src, dst = unit(i.source), unit(i.target)
        if src in LAYERS and dst in LAYERS and LAYERS[dst] > LAYERS[src]:
            upward.append(
                f"{i.where()}: {src} (layer {LAYERS[src]}) -> {dst} (layer {LAYERS[dst]})"
            )
    assert not upward, f"{len(upward)} upward import(s):\n  " + "\n  ".join(sorted(upward))


def test_data_and_models_do_not_import_each_other():
    crossing = [
        i.where() for i in IMPORTS if {unit(i.source), unit(i.target)} == {"data", "models"}
    ]
    assert not crossing, "data/ and models/ share a layer:\n  " + "\n  ".join(crossing)


def test_stages_do_not_import_jobs_or_the_app():
    # Stages take their configuration as objects (a JobSpec is injected, annotated under
    # TYPE_CHECKING); job submission and the command line sit above all of them.
    stages = {"data", "models", "tracking", "evaluate", "postprocess", "inference", "train", "tune"}
    bad = [
        i.where() for i in IMPORTS if unit(i.source) in stages and unit(i.target) in ("jobs", "app")
    ]
    assert not bad, "stages import job submission or the CLI:\n  " + "\n  ".join(sorted(bad))


def test_bratslab_imports_inside_functions_only_in_the_app_or_of_heavy_modules():
    lazy = [
        i.where()
        for i in IMPORTS
        if i.in_function and unit(i.source) not in LAZY_IMPORTERS and not heavy_packages(i.target)
    ]
    assert not lazy, (
        f"{len(lazy)} bratslab import(s) inside functions outside app/ of modules that import "
        "no heavy package (import them at the top of the module):\n  " + "\n  ".join(sorted(lazy))
    )


def test_the_graph_sees_function_level_and_skips_type_checking_imports():
    # The contract is only as good as its parser: prove both rules on known lines.
    source = (
        "from typing import TYPE_CHECKING\n"
        "import bratslab.config\n"
        "if TYPE_CHECKING:\n"
        "    from bratslab.jobs.spec import JobSpec\n"
        "def f():\n"
        "    from bratslab import settings\n"
        "    from . import atomic\n"
    )
    collector = _Collector("bratslab.cluster", is_package=False)
    collector.visit(ast.parse(source + "import torch.nn\ndef g():\n    import ray\n"))
    found = {(i.target, i.in_function) for i in collector.found}
    assert found == {
        ("bratslab.config", False),
        ("bratslab.settings", True),
        ("bratslab.atomic", True),
    }
    assert collector.heavy == {"torch"}  # ray is imported only inside a function
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
