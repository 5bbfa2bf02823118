"""Report import cycles between the modules of ``src/focus_detr``.

    python tools/import_cycles.py            # module-level imports
    python tools/import_cycles.py --all      # function-level (deferred) imports too

Exit status 1 when a cycle exists. Type-checking-only imports do not count. A package's
``__init__`` counts as importing what it imports; ``from package import name`` is an import of
``package.name`` when that is a module, else of ``package``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "focus_detr"
ROOT = Path(__file__).resolve().parents[1] / "src" / PACKAGE


def module_names() -> dict[str, Path]:
    names = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path, modules: dict[str, Path], deferred: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(nodes: list) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if full in modules:
                        found.add(full)
                    elif node.module in modules:
                        found.add(node.module)
            is_scope = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            if is_scope and not deferred:
                continue
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    visit(children)

    visit(tree.body)
    return found


def find_cycles(deferred: bool) -> list[list[str]]:
    modules = module_names()
    graph = {name: imports(path, modules, deferred) - {name} for name, path in modules.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                dfs(target)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            dfs(name)
    return cycles


def main() -> int:
    deferred = "--all" in sys.argv[1:]
    cycles = find_cycles(deferred)
    kind = "module-level and deferred" if deferred else "module-level"
    for cycle in cycles:
        print(" -> ".join(cycle))
    print(f"{len(cycles)} {kind} import cycles in {PACKAGE}")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
