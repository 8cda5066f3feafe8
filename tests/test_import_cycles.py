"""No import cycles between the package's modules, lazy (function-level) imports included.

The graph is read with `ast`, so nothing is imported. Every `import` / `from ... import`
anywhere in a file counts (module level, inside functions and classes, under `if`/`try`,
`TYPE_CHECKING` blocks too): a lazy import hides a cycle at import time but does not remove
it. How names map to edges:

- `import a.b.c` and `from a.b import c` name `a.b.c`; it resolves to the longest prefix
  that is one of the package's modules, so `from m import function` is an edge to `m` and
  `from pkg import submodule` an edge to the submodule (and to `pkg`, see below).
- Relative imports resolve against the importing module's package.
- Packages: importing `a.b.c` first runs `a/__init__.py` and `a/b/__init__.py`, so the
  edge to `a.b.c` implies edges to those packages as well. Edges from a module to its own
  ancestor packages (implied or written out) are dropped: Python has already started
  running those `__init__` files before the module runs, and a package's `__init__` that
  imports its own submodules is the normal idiom, not a cycle. A checker that adds no
  implied edges to a target's parent packages can miss a cycle through a package
  `__init__` that this test sees.

A cycle is a strongly connected component of more than one module. The `cli` package keeps
its late imports (they let it set environment variables before jax and TensorFlow load);
nothing imports it, so it needs no exception here. tests/test_import_layers.py reads the same
graph and checks that every edge points down docs/architecture.md's layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "contrastive_jax"


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package at `root`."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _named(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The dotted names one import statement refers to (before resolution)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: level 1 is the importing module's own package
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    # `from a import b`: b may be a submodule (a.b) or a name defined in a.
    return [source] + [f"{source}.{alias.name}" for alias in node.names]


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of `name` that is one of the package's modules."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (edges as the module docstring says)."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for name in _named(node, module, is_package):
                target = _resolve(name, modules)
                while target:  # the target, then the packages Python runs first
                    if target != module and not module.startswith(target + "."):
                        graph[module].add(target)
                    target = _resolve(target.rpartition(".")[0], modules)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node, each sorted (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def _edges_within(graph: dict[str, set[str]], component: list[str]) -> str:
    members = set(component)
    return "; ".join(f"{m} -> {', '.join(sorted(graph[m] & members))}" for m in component)


def test_no_import_cycles():
    graph = import_graph()  # ~0.25 s for the whole package
    found = cycles(graph)
    assert len(graph) > 50 and "contrastive_jax.losses.family" in graph  # parsed the package
    report = "\n".join(f"cycle of {len(c)}: {', '.join(c)}\n    edges: {_edges_within(graph, c)}"
                       for c in found)
    assert not found, f"{len(found)} import cycle(s):\n{report}"


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "pkg"


def test_every_kind_of_import_is_an_edge(tmp_path):
    """Each import form closes its own two-module cycle; the checker must find all of them."""
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        # module level: `import a.b` and a function-level `from a import b` (a submodule)
        "pkg/top.py": "import pkg.lazy\n",
        "pkg/lazy.py": "def f():\n    from pkg import top\n",
        # relative imports, from a module and from a package __init__
        "pkg/rel_a.py": "from .sub import rel_b\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/rel_b.py": "from .. import rel_a\n",
        "pkg/rp/__init__.py": "from . import rel_c\n",
        "pkg/rp/rel_c.py": "from ..rel_d import thing\n",
        "pkg/rel_d.py": "class C:\n    def m(self):\n        from pkg.rp import rel_c\n",
        # a package __init__ that imports a module importing one of the package's submodules
        "pkg/p/__init__.py": "from pkg.user import x\n",
        "pkg/p/leaf.py": "",
        "pkg/user.py": "from pkg.p.leaf import y\n",  # runs pkg/p/__init__.py first
        # not cycles: a package importing its own submodules, which import it back
        "pkg/q/__init__.py": "from pkg.q.one import a\nfrom pkg.q import two\n",
        "pkg/q/one.py": "from pkg.q import two\nimport pkg.q\n",
        "pkg/q/two.py": "import os\nfrom pkg.q.one import a\n",  # but this is one
    })
    graph = import_graph(pkg)
    assert graph["pkg.user"] == {"pkg.p", "pkg.p.leaf"}
    assert graph["pkg.q.one"] == {"pkg.q.two"}  # edges to its own package dropped
    assert cycles(graph) == [
        ["pkg.lazy", "pkg.top"],
        ["pkg.p", "pkg.user"],
        ["pkg.q.one", "pkg.q.two"],
        ["pkg.rel_a", "pkg.sub.rel_b"],
        ["pkg.rel_d", "pkg.rp", "pkg.rp.rel_c"],
    ]
