"""Imports only point down the layers that docs/architecture.md lists, lazy imports included.

The order is written once, in docs/architecture.md between the `<!-- layers: begin` and
`<!-- layers: end -->` markers: one numbered line per layer, top first, its packages (or
top-level modules) in backticks before the first colon. A module may import its own package
and any package on a later line; names on one line are peers and import neither each other.
The graph is tests/test_import_cycles.py's: every `import` / `from ... import` anywhere in a
file, read with `ast`, so nothing is imported.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import test_import_cycles as cycles_test

DOC = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"
_BEGIN, _END = "<!-- layers: begin", "<!-- layers: end -->"


def read_layers(text: str) -> list[list[str]]:
    """The layers, top first, each a list of package names, from the marked list in `text`."""
    if _BEGIN not in text or _END not in text:
        raise ValueError(f"no {_BEGIN!r} ... {_END!r} block")
    block = text.split(_BEGIN, 1)[1].split(_END, 1)[0]
    layers = []
    for line in block.splitlines():
        numbered = re.match(r"\s*(\d+)\.\s+(.*)", line)
        if not numbered:
            continue
        if int(numbered.group(1)) != len(layers) + 1:
            raise ValueError(f"layer list out of order at {line!r}")
        names = re.findall(r"`([\w.]+)`", numbered.group(2).split(":", 1)[0])
        if not names:
            raise ValueError(f"layer line names no package: {line!r}")
        layers.append(names)
    return layers


def unit(module: str) -> str | None:
    """The top-level package or module of `pkg.a.b` (`a`); None for the root package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def violations(graph: dict[str, set[str]], layers: list[list[str]]) -> list[str]:
    """Every import that points up or sideways, or touches a package the list does not name."""
    rank = {name: i for i, names in enumerate(layers) for name in names}
    found = []
    for module in sorted(graph):
        for target in sorted(graph[module]):
            a, b = unit(module), unit(target)
            if a is None or b is None or a == b:
                continue
            missing = [u for u in (a, b) if u not in rank]
            if missing:
                found.append(f"{module} -> {target}: {missing[0]!r} is in no layer")
            elif rank[a] > rank[b]:
                found.append(f"{module} -> {target}: up from {a!r} (layer {rank[a] + 1}) "
                             f"to {b!r} (layer {rank[b] + 1})")
            elif rank[a] == rank[b]:
                found.append(f"{module} -> {target}: sideways between peers {a!r}, {b!r}")
    return found


def test_every_import_points_down():
    layers = read_layers(DOC.read_text(encoding="utf-8"))
    graph = cycles_test.import_graph()
    listed = {name for names in layers for name in names}
    units = {unit(m) for m in graph} - {None}
    assert len(layers) > 10 and "data" in listed  # parsed the document's list
    assert units <= listed, f"not in docs/architecture.md's layers: {sorted(units - listed)}"
    found = violations(graph, layers)
    assert not found, f"{len(found)} import(s) against the layers:\n" + "\n".join(found)


def test_an_upward_lazy_import_is_reported(tmp_path):
    """A real package on disk: each bad import is caught, and the good ones are not."""
    files = {
        "pkg/__init__.py": "",
        "pkg/top/__init__.py": "from pkg.low import base\n",  # down: allowed
        "pkg/top/run.py": "import pkg.mid.work\n",  # down: allowed
        "pkg/mid/__init__.py": "",
        "pkg/mid/work.py": "def f():\n    from pkg.top import run\n",  # lazy, up
        "pkg/mid/side.py": "from pkg.peer import thing\n",  # sideways
        "pkg/peer.py": "thing = 1\n",
        "pkg/low/__init__.py": "",
        "pkg/low/base.py": "from . import helper\nfrom ..stray import x\n",  # own; unlisted
        "pkg/low/helper.py": "",
        "pkg/stray.py": "x = 1\n",
    }
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    doc = ("intro\n<!-- layers: begin -->\n1. `top`: the top\n2. `mid`, `peer`: peers\n"
           "3. `low`: bottom\n<!-- layers: end -->\n")
    layers = read_layers(doc)
    assert layers == [["top"], ["mid", "peer"], ["low"]]
    assert violations(cycles_test.import_graph(tmp_path / "pkg"), layers) == [
        "pkg.low.base -> pkg.stray: 'stray' is in no layer",
        "pkg.mid.side -> pkg.peer: sideways between peers 'mid', 'peer'",
        "pkg.mid.work -> pkg.top: up from 'mid' (layer 2) to 'top' (layer 1)",
        "pkg.mid.work -> pkg.top.run: up from 'mid' (layer 2) to 'top' (layer 1)",
    ]


@pytest.mark.parametrize("doc", [
    "no markers",
    "<!-- layers: begin -->\n1. `a`: x\n3. `b`: y\n<!-- layers: end -->",  # a number skipped
    "<!-- layers: begin -->\n1. nothing named\n<!-- layers: end -->",
])
def test_a_malformed_list_is_an_error(doc):
    with pytest.raises(ValueError):
        read_layers(doc)
