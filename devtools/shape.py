"""The code's shape in figures: what issue notes quote and tests/test_structure.py holds.

    python -m devtools.shape            # this checkout
    python -m devtools.shape --json     # machine-readable

Figures for the packages adapt/ and app/: files, lines, function-level imports (an import inside a
function body), functions over 80 and over 120 lines, and the import graph (imports at the top and
inside functions alike): its cycles, its floors (the longest chain of imports, counted in modules)
and its back-arrows, imports that run against the intended layering:
- a module of adapt/ below the use-case floor importing the floor (adapt.pipeline); only the CLI
  (adapt.__main__) may;
- the job side of app/ (app.run, app.jobs and what they import) importing the request side
  (app.studio, app.label_rest, app.ui, app.rest) or gradio.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("adapt", "app")
FLOOR = "adapt.pipeline"
FLOOR_USERS = {"adapt.__main__"}
JOB_SIDE = ("app.run", "app.jobs")
REQUEST_SIDE = ("app.studio", "app.label_rest", "app.ui", "app.rest")


def modules(package: str, root: Path = REPO) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under `package`."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imported(name: str, path: Path, node: ast.AST) -> list[str]:
    """The dotted names one import statement names (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        anchor = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        anchor = anchor[: len(anchor) - node.level + 1]
        base = ".".join(anchor + ([node.module] if node.module else []))
    return [base] + [f"{base}.{a.name}" for a in node.names]


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the modules of `mods` it imports, at the top or inside functions alike."""
    graph = {}
    for name, path in mods.items():
        targets = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets += _imported(name, path, node)
        graph[name] = {t for t in targets if t in mods and t != name}
    return graph


def external_imports(path: Path) -> set[str]:
    """Top-level package names a file imports (gradio, torch, ...), wherever the import stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def closure(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module `start` imports, directly or through others (itself included)."""
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += graph.get(name, ())
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def floors(graph: dict[str, set[str]]) -> int:
    """The longest chain of imports, in modules (a graph with cycles counts each module once)."""
    depth: dict[str, int] = {}

    def walk(v, path):
        if v in depth:
            return depth[v]
        if v in path:
            return 0
        depth[v] = 1 + max((walk(w, path | {v}) for w in graph[v]), default=0)
        return depth[v]

    return max((walk(v, frozenset()) for v in graph), default=0)


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def back_arrows(graph: dict[str, set[str]], mods: dict[str, Path]) -> list[str]:
    arrows = [f"{m} -> {FLOOR}" for m in graph if FLOOR in graph[m] and m.startswith("adapt.") and m not in FLOOR_USERS]
    for m in graph:
        if not _under(m, JOB_SIDE):
            continue
        arrows += [f"{m} -> {w}" for w in graph[m] if _under(w, REQUEST_SIDE)]
        if "gradio" in external_imports(mods[m]):
            arrows.append(f"{m} -> gradio")
    return sorted(arrows)


def functions(path: Path) -> list[tuple[str, int, int]]:
    """(name, first line, length) of every function and method in a file."""
    return [
        (node.name, node.lineno, node.end_lineno - node.lineno + 1)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]


def figures(root: Path = REPO) -> dict:
    mods = {name: path for pkg in PACKAGES for name, path in modules(pkg, root).items()}
    graph = import_graph(mods)
    out = {"files": {}, "lines": {}}
    for pkg in PACKAGES:
        paths = list(modules(pkg, root).values())
        out["files"][pkg] = len(paths)
        out["lines"][pkg] = sum(len(p.read_text().splitlines()) for p in paths)
    # nested functions are counted inside their parent too; each import once, at its innermost function
    out["function_level_imports"] = sum(_innermost_imports(p) for p in mods.values())
    long = [(str(p.relative_to(root)), n, k) for p in mods.values() for n, _, k in functions(p)]
    out["functions_over_80"] = sorted(f"{f}:{n} ({k})" for f, n, k in long if k > 80)
    out["functions_over_120"] = sorted(f"{f}:{n} ({k})" for f, n, k in long if k > 120)
    out["cycles"] = cycles(graph)
    out["floors"] = floors(graph)
    out["back_arrows"] = back_arrows(graph, mods)
    return out


def _innermost_imports(path: Path) -> int:
    """Imports that stand inside a function body (a nested function's import counts once)."""
    count = 0

    def visit(node, inside):
        nonlocal count
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and inside:
                count += 1
            visit(child, inside or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(ast.parse(path.read_text()), False)
    return count


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.shape", description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=str(REPO), help="a checkout (default: this one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    f = figures(Path(args.root).resolve())
    if args.json:
        print(json.dumps(f, indent=1))
        return
    for pkg in PACKAGES:
        print(f"{pkg}/: {f['files'][pkg]} files, {f['lines'][pkg]} lines")
    print(f"function-level imports: {f['function_level_imports']}")
    print(f"functions over 80 lines: {len(f['functions_over_80'])}; over 120: {len(f['functions_over_120'])}")
    for line in f["functions_over_80"]:
        print(f"  {line}")
    print(f"import graph: {f['floors']} floors, {len(f['cycles'])} cycles, {len(f['back_arrows'])} back-arrows")
    for line in f["back_arrows"]:
        print(f"  {line}")


if __name__ == "__main__":
    main()
