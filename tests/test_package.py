"""The package's shape: no import cycles between jbp's modules, counting imports inside
functions too (a lazy import only hides a cycle)."""

import ast
from pathlib import Path

import jbp

PKG = Path(jbp.__file__).parent


def _imports():
    mods = {p.stem for p in PKG.glob("*.py")} - {"__init__", "__main__"}
    graph = {}
    for m in mods:
        deps = set()
        for node in ast.walk(ast.parse((PKG / f"{m}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "jbp":
                deps |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jbp."):
                deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("jbp.")}
        graph[m] = deps & mods - {m}
    return graph


def _cycle(graph):
    """One import cycle as a list of modules, or None (depth-first search, three colours)."""
    colour, stack = {}, []

    def visit(m):
        colour[m] = "grey"
        stack.append(m)
        for d in sorted(graph[m]):
            if colour.get(d) == "grey":
                return stack[stack.index(d) :] + [d]
            if d not in colour and (found := visit(d)):
                return found
        colour[m] = "black"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in colour and (found := visit(m)):
            return found
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_in_jbp():
    graph = _imports()
    assert {"epoch", "train", "parallel", "model", "layers"} <= set(graph)
    assert "parallel" not in graph["epoch"] and "train" not in graph["parallel"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
