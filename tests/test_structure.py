"""The package's structure (issue 22): imports go one way, one owner per job.

The import graph is read from the source with ``ast`` (every ``import`` of an ``ssa`` module, at module
level or inside functions; ``if TYPE_CHECKING:`` blocks excluded), so these tests import nothing heavy.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ssa"


def _modules() -> dict[str, Path]:
    mods = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        parts = file.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = file
    return mods


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _imports(name: str, file: Path, mods: dict[str, Path]) -> set[str]:
    """The ssa modules ``name`` imports when it runs (TYPE_CHECKING-only imports left out)."""
    is_package = file.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for stmt in child.orelse:
                    visit(stmt)
                continue
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = name.split(".") if is_package else name.split(".")[:-1]
                    parts = parts[: len(parts) - (child.level - 1)]
                    base = ".".join([*parts, *([base] if base else [])])
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in child.names]
            for target in targets:
                resolved = _resolve(target, mods) if target.startswith("ssa") else None
                if resolved and resolved != name:
                    found.add(resolved)
            visit(child)

    visit(ast.parse(file.read_text()))
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, file, mods) for name, file in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
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
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            connect(v)
    return out


def test_the_import_graph_has_no_cycle_not_even_through_lazy_imports():
    graph = _graph()
    assert "ssa.hub" in graph and "ssa.modeling.model" in graph  # the walk found the package
    assert _cycles(graph) == []


def test_cycles_are_detected():  # the check above can fail
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_its_parent_package():
    graph = _graph()
    upward = [(m, t) for m, targets in graph.items() for t in targets if m.startswith(t + ".")]
    assert upward == []


def test_the_checkpoint_code_does_not_import_the_model():
    """The model gets save/load through ``ssa.hub.PretrainedMixin``; the hub never imports it back."""
    graph = _graph()
    assert "ssa.hub" in graph["ssa.modeling.model"]
    assert not any(t.startswith("ssa.modeling") for t in graph["ssa.hub"])
    assert not any(t.startswith("ssa.modeling") or t == "ssa.hub" for t in graph["ssa.official"])


def test_io_takes_arrays_and_knows_nothing_of_models_or_pipelines():
    graph = _graph()
    for name, targets in graph.items():
        if name == "ssa.io" or name.startswith("ssa.io."):
            assert all(t == "ssa.io" or t.startswith("ssa.io.") for t in targets), (name, targets)


def test_one_atomic_write():
    """Rename-into-place is written once, in ssa.io.files; every other writer goes through it."""
    offenders = []
    for file in PACKAGE.rglob("*.py"):
        if file.relative_to(PACKAGE).as_posix() == "io/files.py":
            continue
        text = file.read_text()
        if re.search(r"tempfile\.mkstemp|tempfile\.mkdtemp|NamedTemporaryFile", text):
            offenders.append(f"{file.name}: makes its own temporary file")
        replaces = len(re.findall(r"\bos\.replace\(", text))
        allowed = 3 if file.name == "hub.py" else 0  # the checkpoint folder's files, moved in one by one
        if replaces > allowed:
            offenders.append(f"{file.name}: {replaces} os.replace")
    assert offenders == []


def test_one_preprocessing_and_one_mask_module():
    pipeline = (PACKAGE / "pipeline.py").read_text()
    training = (PACKAGE / "train" / "data.py").read_text()
    assert "from ssa.preprocessing import" in pipeline and "from ssa.preprocessing import" in training
    for file in PACKAGE.rglob("*.py"):
        if file.name in ("selection.py",):
            continue
        text = file.read_text()
        assert "F.interpolate(x, size=(4 * h4" not in text, file  # the official upsampling lives once
        assert not re.search(r"^Mode = Literal", text, re.M), file  # Mode is defined once
