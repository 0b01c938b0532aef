"""One-way layers (docs/design.md, "Layers"): ``mksgn`` ← ``export`` ← ``hw_sim`` ← ``cli`` and
``benchmarks``, and no import cycles, judged from the source with ``ast`` (imports inside
functions included)."""
import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _all_imports(path: Path):
    """Absolute names of every module ``path`` imports, at any depth (inside functions too),
    relative imports resolved; ``from p import n`` yields ``p`` and ``p.n``."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)


#: Import direction (docs/design.md, "Layers"): a module may import its own package and the
#: packages of lower rank only; cli and benchmarks are both the top and do not import each other.
RANK = {"mksgn": 0, "export": 1, "hw_sim": 2, "cli": 3, "benchmarks": 3}


def _source_modules():
    return {_module_name(p): p for pkg in RANK for p in (ROOT / pkg).rglob("*.py")}


def test_layers_import_one_way():
    """mksgn ← export ← hw_sim ← cli, benchmarks: no module of any package imports a package of
    its own rank or above (other than its own), not even inside a function."""
    bad = set()
    for name, path in _source_modules().items():
        own = name.split(".")[0]
        for m in _all_imports(path):
            top = m.split(".")[0]
            if top in RANK and top != own and RANK[top] >= RANK[own]:
                bad.add(f"{path.relative_to(ROOT)} imports {m}")
    assert not bad, sorted(bad)


def test_no_import_cycles():
    """No two modules import each other, directly or round a loop, counting imports inside
    functions (so a function-level import cannot hide a cycle), e.g. mksgn.evaluate ↔
    mksgn.train."""
    mods = _source_modules()

    def resolve(m):
        while m and m not in mods:
            m = m.rpartition(".")[0]
        return m

    graph = {n: {r for m in _all_imports(p) if (r := resolve(m)) and r != n} for n, p in mods.items()}
    # Tarjan's strongly connected components, iteratively
    index, low, on, stack, cycles, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1
        stack.append(root); on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1
                    stack.append(w); on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop(); on.discard(w); comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    cycles.append(sorted(comp))
    assert not cycles, cycles


def test_the_layer_checks_can_fail(tmp_path, monkeypatch):
    """The two checks above see an upward import inside a function and a two-module cycle."""
    pkg = tmp_path / "mksgn"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from export.fixed_point import MAX_DELAY\n    from . import b\n")
    (pkg / "b.py").write_text("from .a import f\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError, match="mksgn/a.py imports export.fixed_point"):
        test_layers_import_one_way()
    with pytest.raises(AssertionError, match="mksgn.a"):
        test_no_import_cycles()
