"""The layers, read from the source: protocols <- securefedrec <- attacks <- benchmarks, and no cycles.

Every ``import`` of every .py file in the four packages counts, also the lazy
ones inside functions and those under ``if TYPE_CHECKING`` (so the graph cannot
go stale, and a lazy import is no way around a rule). Rules:

- ``protocols`` never imports torch, securefedrec, attacks or benchmarks;
- ``securefedrec`` never imports attacks or benchmarks; ``attacks`` never imports benchmarks;
- no import cycle between modules anywhere (a package's ``__init__`` counts as a module;
  a module importing its own parent package is not an edge, since the parent runs first).

Today's known violations sit in explicit allow-lists, each with the issue that
removes it; a second test fails when a listed violation is gone, so the lists
can only shrink. Also: ``protocols`` imports and aggregates (plaintext, SecAgg)
with torch, securefedrec and the Paillier extras (phe, gmpy2) blocked.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("protocols", "securefedrec", "attacks", "benchmarks")
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "protocols": ("torch", "securefedrec", "attacks", "benchmarks"),
    "securefedrec": ("attacks", "benchmarks"),
    "attacks": ("benchmarks",),
}
"""top-level package -> top-level names its modules must never import."""

ALLOWED_LAYERING: dict[tuple[str, str], str] = {}
"""(importing module, imported module) -> the issue that removes it. Only shrinks."""

ALLOWED_CYCLES: dict[frozenset[str], str] = {}
"""Strongly connected components (exactly these members) -> the issue that removes it. Only shrinks."""


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages."""
    mods: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


def _imported_names(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted name) for every import in ``path``, relative ones made absolute.

    ``from a.b import c`` yields ``a.b`` and ``a.b.c`` (``c`` may be a submodule).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    """The project module ``name`` refers to (its longest known prefix), else ``None``."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], list[str]]]:
    """Module -> project modules it imports; (module, imported) -> ``file:line`` of each layering break."""
    mods = _modules()
    edges: dict[str, set[str]] = {}
    breaks: dict[tuple[str, str], list[str]] = {}
    for mod, path in mods.items():
        targets: set[str] = set()
        banned = FORBIDDEN.get(mod.split(".")[0], ())
        for line, name in _imported_names(mod, path):
            target = _resolve(name, mods)
            if name.split(".")[0] in banned:
                key = (mod, target or name)
                where = f"{path.relative_to(ROOT)}:{line}"
                if where not in breaks.setdefault(key, []):
                    breaks[key].append(where)
            if target and target != mod and not mod.startswith(target + "."):
                targets.add(target)
        edges[mod] = targets
    return edges, breaks


def _cycles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                component = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.add(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def test_the_graph_reader_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    # the checks below are only as good as this reader: it must see what a lazy import hides
    src = tmp_path / "m.py"
    src.write_text("def f():\n    import torch.nn\n    from . import sib\n    from ..up import x\n")
    names = [n for _, n in _imported_names("pkg.sub.m", src)]
    assert names == ["torch.nn", "pkg.sub", "pkg.sub.sib", "pkg.up", "pkg.up.x"]
    ring = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(ring) == [frozenset({"a", "b", "c"})]


def test_no_import_against_the_layering() -> None:
    _, breaks = _graph()
    new = {k: v for k, v in breaks.items() if k not in ALLOWED_LAYERING}
    assert not new, "imports against the layering:\n" + "\n".join(
        f"{', '.join(where)}: {mod} imports {name}" for (mod, name), where in sorted(new.items()))


def test_no_import_cycle() -> None:
    edges, _ = _graph()
    assert "securefedrec.server.simulation" in edges and "protocols.secagg" in edges  # the walk found it all
    new = [c for c in _cycles(edges) if c not in ALLOWED_CYCLES]
    assert not new, "import cycles:\n" + "\n".join(" <-> ".join(sorted(c)) for c in new)


def test_allow_lists_only_shrink() -> None:
    edges, breaks = _graph()
    cycles = set(_cycles(edges))
    gone = [f"{m} imports {n} ({why})" for (m, n), why in ALLOWED_LAYERING.items() if (m, n) not in breaks]
    gone += [f"cycle {' <-> '.join(sorted(c))} ({why})" for c, why in ALLOWED_CYCLES.items()
             if c not in cycles]
    assert not gone, "fixed, so remove from the allow-list in tests/test_layering.py:\n" + "\n".join(gone)


def _run_blocked(body: str, blocked: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh interpreter at the repository root, where importing ``blocked`` fails."""
    code = textwrap.dedent(
        f"""
        import sys
        BLOCKED = {blocked!r}
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked: {{name}}")
                return None
        sys.meta_path.insert(0, Block())
        """
    ) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          cwd=ROOT)


def test_protocols_aggregate_with_torch_securefedrec_and_the_paillier_extras_blocked() -> None:
    body = """
        import numpy as np
        import protocols
        from protocols import RoundConfig, get_aggregator
        rng = np.random.default_rng(0)
        inputs = {c: rng.uniform(-1, 1, 5) for c in range(4)}
        want = sum(inputs.values())
        for name in ("plaintext", "secagg", "secagg+"):
            res = get_aggregator(name).aggregate(inputs, RoundConfig(threshold=3, clip_range=1.0))
            assert np.abs(res.total - want).max() < 1e-6, name
        try:
            get_aggregator("paillier")
        except ImportError as exc:
            assert "securefedrec[paillier]" in str(exc), exc
        else:
            raise SystemExit("paillier built without gmpy2")
        loaded = sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED))
        print("ok", loaded)
        """
    out = _run_blocked(body, ("torch", "securefedrec", "attacks", "benchmarks", "phe", "gmpy2"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok []"


def test_every_protocol_module_imports_without_torch_and_securefedrec() -> None:
    body = """
        import importlib, pkgutil
        import protocols
        for info in pkgutil.walk_packages(protocols.__path__, "protocols."):
            importlib.import_module(info.name)
        print("ok")
        """
    out = _run_blocked(body, ("torch", "securefedrec", "attacks", "benchmarks"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
