"""The package stays readable: no module over 450 lines, no function body over 60 lines, MLflow
only in ``tracking/`` and private APIs of dependencies only in ``compat/``.

A function's length is counted from its first statement after the docstring to its end, so a
CLI command's long list of typer option declarations does not count against it. Which folder may
import which is the layer contract's business (``tests/unit/test_layers.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "bratslab"
MAX_BODY_LINES = 60
MAX_MODULE_LINES = 450


def _functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                body = node.body
                if (
                    len(body) > 1
                    and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)
                ):
                    body = body[1:]
                yield path.relative_to(PACKAGE), node.name, node.end_lineno - body[0].lineno + 1


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_function_body_exceeds_60_lines():
    long = [f"{p}:{name} ({n} lines)" for p, name, n in _functions() if n > MAX_BODY_LINES]
    assert not long, "functions to split: " + ", ".join(long)


def test_no_module_exceeds_450_lines():
    long = [
        f"{path.relative_to(PACKAGE)} ({n} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not long, "modules to split: " + ", ".join(long)


def test_mlflow_only_in_tracking():
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in ("tracking", "compat"):
            continue
        bad = {m for m in _imports(path) if m == "mlflow" or m.startswith("mlflow.")}
        assert not bad, f"{rel} imports {bad}: MLflow belongs in bratslab/tracking/"


PRIVATE_ATTRS = {
    "_tracking_uri", "_registry_uri",  # MLflow's module-level URIs
    "_is_mkldnn_bf16_supported",  # torch's oneDNN probe
    "_time_attr", "_max_t", "_num_stopped",  # Ray Tune's ASHAScheduler internals
    "ENABLE_RAY_CLUSTER", "_connect_and_get_accessor",  # Ray core
}  # fmt: skip


def test_private_apis_only_in_compat():
    # Private modules and attributes of Ray, MLflow and torch are reached only through
    # bratslab/compat/, where each access names the version it was checked against.
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "compat":
            continue
        private = {m for m in _imports(path) if "._" in m}
        assert not private, f"{rel} imports private modules {private}"
        tree = ast.parse(path.read_text(), str(path))
        attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not attrs & PRIVATE_ATTRS, f"{rel} uses {attrs & PRIVATE_ATTRS}"
