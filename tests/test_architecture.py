"""The package's layering (docs/architecture.md), read from the code's own imports with ``ast``.

Every ``import`` of a project module counts, at module level or inside a function, as an edge to
the module it names (``from wrinklefree.nn import X`` names the package ``wrinklefree.nn``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import wrinklefree

SRC = Path(wrinklefree.__file__).parent

# Floors, bottom first: a module may import from its own floor and the floors below.
FLOORS = [
    {"errors", "assets", "allocator", "files"},
    {"quant"},
    {"nn"},
    {"convert", "models", "block_diffusion"},
    {"sampling", "generate", "compiled", "speculative", "llamacpp"},
    {"data", "objectives", "teacher", "eval", "export", "info", "chat"},
    {"train"},
    {"cli"},
]
MAX_UPWARD = 2  # imports that climb a floor (docs/architecture.md names them)


def module_name(path: Path) -> str:
    parts = ["wrinklefree", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports() -> list[tuple[str, str, str]]:
    """(importing module, imported module, imported name) for every project import."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    edges = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges += [(name, a.name, "*") for a in node.names
                          if a.name.startswith("wrinklefree")]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                if not base.startswith("wrinklefree"):
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    edges.append((name, sub if sub in modules else base, alias.name))
    return [(a, b, n) for a, b, n in edges if a != b]


def floor_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    return next((i for i, names in enumerate(FLOORS) if top in names), len(FLOORS))


def test_every_module_has_a_floor():
    unplaced = {b for _, b, _ in project_imports() if b != "wrinklefree"} | {
        module_name(p) for p in SRC.rglob("*.py")}
    unplaced = sorted(m for m in unplaced if m != "wrinklefree" and floor_of(m) == len(FLOORS))
    assert not unplaced, f"add these modules to a floor in FLOORS: {unplaced}"


def test_no_import_circles():
    graph: dict[str, set[str]] = {}
    for a, b, _ in project_imports():
        graph.setdefault(a, set()).add(b)
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(node):] + [node]))
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, [*path, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])


def test_few_upward_imports():
    upward = sorted({(a, b) for a, b, _ in project_imports()
                     if a != "wrinklefree" and floor_of(b) > floor_of(a)})
    assert len(upward) <= MAX_UPWARD, f"imports climbing a floor: {upward}"


def test_no_private_name_imported_across_modules():
    private = sorted(f"{a} imports {b}.{n}" for a, b, n in project_imports()
                     if n.startswith("_"))
    assert not private, private
