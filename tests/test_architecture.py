"""The layers hold: an import graph of app/, read with `ast`, checked against the intended layering.

Every import counts: module level, lazy imports inside functions, and imports under
`if TYPE_CHECKING:` too (a type-only import of a layer above is still a layer above: the honest
fix is a Protocol in the lower layer). `from vrollout.pkg import name` counts as an import of
`vrollout.pkg.name` when that is a module, else of `vrollout.pkg`. A module does not count as
importing its parent package implicitly (a package `__init__` re-exporting its own modules is not
a cycle).

Layers, bottom to top (a module may import its own layer and the ones below):
base (config, errors, ids, rules) < schema < verdicts < inputs < metrics < pipeline < models <
(local | vllm) < storage < jobs < report < web < cli < notebook < integrations.
Siblings joined by `|` share a rank but do not import each other. Where this differs from the
first sketch of the layers (issue 23): verdicts (a pure function of two texts) sit below the
inputs, which use them to pick a sibling whose answer was right; `vrollout.models` (loading
weights and tokenizers) is the piece both backends share, so vllm need not reach into local;
the TRL integration is a client of the notebook API (`vrollout.load`), so it sits above it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app"
PACKAGE = "vrollout"

# (rank, group): a module may import another of lower rank, or of the same rank and the same group.
LAYERS: dict[str, tuple[int, str]] = {
    "config": (0, "base"),
    "errors": (0, "base"),
    "ids": (0, "base"),
    "rules": (0, "base"),
    "schema": (1, "schema"),
    "verdicts": (2, "verdicts"),
    "inputs": (3, "inputs"),
    "metrics": (4, "metrics"),
    "pipeline": (5, "pipeline"),
    "models": (6, "models"),
    "local": (7, "local"),
    "vllm": (7, "vllm"),
    "storage": (8, "storage"),
    "jobs": (9, "jobs"),
    "report": (10, "report"),
    "web": (11, "web"),
    "cluster": (12, "cluster"),
    "cli": (13, "cli"),
    "notebook": (14, "notebook"),
    "integrations": (15, "integrations"),
}
PIPELINE_RANK = LAYERS["pipeline"][0]
# What the pipeline and everything below it must not import: it runs without a model framework,
# a web framework or a database.
HEAVY = ("torch", "transformers", "fastapi", "vrollout.storage")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(APP).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(APP.rglob("*.py"))}


MODULES = all_modules()


def _resolve_relative(module: str, path: Path, node: ast.ImportFrom) -> str:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports_of(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import statement in the file, wherever it sits."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(module, path, node) if node.level else node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield (submodule if submodule in MODULES else base), node.lineno


def _owner(imported: str) -> str | None:
    """The project module an import names (itself or its nearest package), or None if outside."""
    name = imported
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {module: set() for module in MODULES}
    for module, path in MODULES.items():
        for imported, _ in imports_of(module, path):
            target = _owner(imported) if imported.startswith(PACKAGE) else None
            if target is not None and target != module:
                edges[module].add(target)
    return edges


def layer_of(module: str) -> tuple[int, str] | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (the import cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in MODULES if m != PACKAGE and layer_of(m) is None]
    assert not unplaced, f"modules outside every layer (add them to LAYERS): {unplaced}"


def test_no_import_cycles() -> None:
    cycles = strongly_connected(graph())
    assert not cycles, "modules that import each other (directly or around a loop):\n" + "\n".join(
        " <-> ".join(component) for component in cycles
    )


def test_no_module_imports_a_layer_above_or_a_sibling() -> None:
    breaches = []
    for module, path in MODULES.items():
        own = layer_of(module)
        if own is None:  # vrollout/__init__.py: checked on its own below
            continue
        for imported, line in imports_of(module, path):
            target = _owner(imported) if imported.startswith(PACKAGE) else None
            other = layer_of(target) if target else None
            if other is None or other == own:
                continue
            if other[0] >= own[0]:
                where = f"{path.relative_to(APP.parent)}:{line}"
                breaches.append(f"{where} {module} ({own[1]}) imports {target} ({other[1]})")
    assert not breaches, "imports of a layer above (or of a sibling backend):\n" + "\n".join(
        dict.fromkeys(breaches)  # one line per import statement
    )


def test_pipeline_and_below_import_no_framework_and_no_storage() -> None:
    breaches = []
    for module, path in MODULES.items():
        own = layer_of(module)
        if own is None or own[0] > PIPELINE_RANK:
            continue
        for imported, line in imports_of(module, path):
            if any(imported == heavy or imported.startswith(heavy + ".") for heavy in HEAVY):
                breaches.append(f"{path.relative_to(APP.parent)}:{line} {module} imports {imported}")
    assert not breaches, (
        "the pipeline and the layers below stay torch-, web- and storage-free:\n"
        + "\n".join(dict.fromkeys(breaches))
    )


def test_package_import_stays_torch_free() -> None:
    # A fresh interpreter: this one has torch loaded by other tests already.
    heavy = ("torch", "transformers", "fastapi")
    code = f"import sys, vrollout; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", f"`import vrollout` loads {loaded.strip()}"


def test_the_checker_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    """The graph reader itself: an import inside a function or under TYPE_CHECKING is an edge."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from vrollout.storage.store import Store\n"
        "def f():\n    from vrollout.local import engine\n    import torch\n"
    )
    path = tmp_path / "probe.py"
    path.write_text(source)
    seen = {name for name, _ in imports_of("vrollout.pipeline.probe", path)}
    assert {"vrollout.storage.store", "vrollout.local.engine", "torch"} <= seen
