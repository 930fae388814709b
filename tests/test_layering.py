"""Imports inside tokjax point down the layering; an upward import fails with its file:line.

The graph is read from the source with ``ast`` (nothing is imported), so a function-level import
counts as much as a module-level one: both make the lower layer depend on the higher one (and
function-level ones are how import cycles hide). Resolved forms: ``import tokjax.a.b``,
``from tokjax.a import b``, ``from tokjax import a`` (a module, or a name the ``tokjax`` facade
re-exports, resolved to where the facade imports it from), ``import tokjax`` followed by
``tokjax.a`` attribute uses in the same scope, and relative imports.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "tokjax"

# Rank of each top-level module or package of tokjax; an import may point to the same or a lower
# rank. A new top-level module must be added here (the test fails until it is). train includes
# tokjax/train/recipes/, where one-call fitting functions of the family modules live.
RANKS = {
    "model": 0, "_transform": 0, "_paths": 0,
    "logits": 1, "metrics": 1, "data": 1,
    "losses": 2, "decoding": 2, "tokenizers": 2, "analysis": 2, "io": 2, "vision": 2,
    # parallel is the public name of tokjax.model.sharding (rank 0), which the decode driver uses
    "parallel": 3, "train": 3,
    "pretrained": 4,
    "catalog": 5, "_readme": 5,
    "cli": 6, "demo": 6,
}
# tokjax/__init__.py is the public facade: it re-exports from every layer, so it is no layer's source.
FACADE = ROOT / "__init__.py"


@dataclass(frozen=True)
class Edge:
    """One import of a tokjax module by a tokjax source file."""

    path: str  # relative to the directory holding tokjax/, e.g. tokjax/losses/registry.py
    line: int
    source: str  # top-level module of the importing file
    target: str  # top-level module imported
    text: str  # what the import names, for the report

    def __str__(self):
        return (f"{self.path}:{self.line}: {self.source} (rank {RANKS.get(self.source, '?')}) imports {self.text} "
                f"({self.target}, rank {RANKS.get(self.target, '?')})")


def _top_level(root: Path) -> set[str]:
    return {p.stem for p in root.glob("*.py") if p.name != "__init__.py"} | {
        p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").exists()}


def facade_names(root: Path = ROOT) -> dict[str, str]:
    """Returns {name: top-level module} for every name ``tokjax/__init__.py`` imports from a tokjax module."""
    names: dict[str, str] = {}
    init = root / "__init__.py"
    if not init.exists():
        return names
    for node in ast.walk(ast.parse(init.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "tokjax" and len(parts) > 1:
                for a in node.names:
                    names[a.asname or a.name] = parts[1]
    return names


class _Resolver:
    def __init__(self, root: Path):
        self.root = root
        self.tops = _top_level(root)
        self.facade = facade_names(root)

    def name(self, name: str) -> str:
        """Returns the top-level module that ``tokjax.<name>`` (``from tokjax import name``) refers to."""
        if name in self.tops:
            return name
        return self.facade.get(name, f"<tokjax.{name}: not a module nor a facade name>")

    def module(self, dotted: str) -> str | None:
        """Returns the top-level module of an absolute ``tokjax.a.b`` name, None for non-tokjax names."""
        parts = dotted.split(".")
        if parts[0] != "tokjax":
            return None
        return parts[1] if len(parts) > 1 else ""

    def package_parts(self, path: Path) -> list[str]:
        rel = path.relative_to(self.root).with_suffix("")
        parts = ["tokjax", *rel.parts]
        return parts[:-1] if parts[-1] == "__init__" else parts


def _scopes(tree: ast.AST):
    """Yields the module and every function: each import is read in the scope that runs it."""
    yield tree
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _own_nodes(scope: ast.AST):
    """Yields the nodes of ``scope`` that do not belong to a nested function."""
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            stack.extend(ast.iter_child_nodes(node))


def import_edges(path: Path, source_text: str | None = None, root: Path = ROOT, resolver: _Resolver | None = None
                 ) -> list[Edge]:
    """Returns every import of a tokjax module by the file ``path`` (module- and function-level)."""
    res = resolver or _Resolver(root)
    text = path.read_text() if source_text is None else source_text
    tree = ast.parse(text, filename=str(path))
    src_parts = res.package_parts(path)
    rel = path.relative_to(res.root.parent).as_posix()
    source = src_parts[1] if len(src_parts) > 1 else ""
    edges: list[Edge] = []

    def add(node, target, what):
        if target is not None:
            edges.append(Edge(rel, node.lineno, source, target, what))

    for scope in _scopes(tree):
        bare: set[str] = set()  # names bound to the tokjax package itself in this scope
        own = list(_own_nodes(scope))
        for node in own:
            if isinstance(node, ast.Import):
                for a in node.names:
                    top = res.module(a.name)
                    if top is None:
                        continue
                    if top == "":
                        bare.add(a.asname or "tokjax")
                    else:  # `import tokjax.a.b [as x]` runs tokjax.a.b whatever name it binds
                        add(node, top, a.name)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this file's package
                    keep = len(src_parts) - node.level + (1 if path.name == "__init__.py" else 0)
                    module = ".".join(src_parts[:keep] + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                top = res.module(module)
                if top is None:
                    continue
                if top == "":  # from tokjax import a, b
                    for a in node.names:
                        add(node, res.name(a.name), f"tokjax.{a.name}")
                else:
                    add(node, top, module)
        if bare:  # uses anywhere below the import's scope (nested functions and lambdas close over it)
            for node in ast.walk(scope):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bare:
                    add(node, res.name(node.attr), f"tokjax.{node.attr}")
    return edges


def all_edges(root: Path = ROOT) -> list[Edge]:
    res = _Resolver(root)
    edges = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "__init__.py":
            continue
        edges.extend(import_edges(path, root=root, resolver=res))
    return edges


def violations(edges: list[Edge]) -> list[str]:
    """Returns one line per upward edge (or edge whose ends have no rank)."""
    bad = []
    for e in edges:
        if e.source not in RANKS or e.target not in RANKS:
            bad.append(f"{e}  <- unranked module: add it to RANKS in tests/test_layering.py")
        elif RANKS[e.target] > RANKS[e.source]:
            bad.append(str(e))
    return bad


def test_every_top_level_module_has_a_rank():
    missing = sorted(_top_level(ROOT) - set(RANKS))
    assert not missing, f"tokjax top-level modules without a rank in tests/test_layering.py: {missing}"


def test_imports_point_down():
    bad = violations(all_edges())
    assert not bad, "upward imports (a layer may import only the same or lower ranks):\n" + "\n".join(bad)


# ---------------------------------------------------------------------- the checker itself
@pytest.fixture
def fake_tree(tmp_path):
    root = tmp_path / "tokjax"
    for pkg in ("model", "losses", "train"):
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("")
    (root / "pretrained.py").write_text("")
    (root / "__init__.py").write_text("from tokjax.model import Model\nfrom tokjax.pretrained import pretrained\n")
    return root


@pytest.mark.parametrize("code, target, line", [
    ("from tokjax.train import train\n", "train", 1),
    ("import tokjax.train._loop as loop\n", "train", 1),
    ("import tokjax.train._loop\n", "train", 1),
    ("def f():\n    from tokjax.pretrained import pretrained\n    return pretrained\n", "pretrained", 2),
    ("def f():\n    from tokjax import train\n", "train", 2),
    ("def f():\n    from tokjax import pretrained\n", "pretrained", 2),
    ("from tokjax import Model, pretrained\n", "pretrained", 1),
    ("def f():\n    import tokjax\n\n    return tokjax.pretrained('x')\n", "pretrained", 4),
    ("def f():\n    import tokjax as tj\n    return tj.train\n", "train", 3),
    ("import tokjax\n\ndef f():\n    return tokjax.pretrained('x')\n", "pretrained", 4),
    ("from ..train import x\n", "train", 1),
])
def test_checker_finds_upward_imports(fake_tree, code, target, line):
    path = fake_tree / "losses" / "mod.py"
    path.write_text(code)
    edges = import_edges(path, root=fake_tree)
    bad = violations(edges)
    assert any(e.target == target and e.line == line for e in edges), edges
    assert len(bad) == 1 and f"losses/mod.py:{line}:" in bad[0], bad


@pytest.mark.parametrize("code", [
    "from tokjax.model import forward\n",
    "from tokjax import Model\n",
    "import tokjax\nx = tokjax.model\n",
    "from . import other\nfrom .other import y\n",
    "import numpy as np\nfrom jax import numpy\n",
    "def f():\n    import tokjax\n    return tokjax.Model\n",
])
def test_checker_allows_same_or_lower_imports(fake_tree, code):
    path = fake_tree / "losses" / "mod.py"
    path.write_text(code)
    assert violations(import_edges(path, root=fake_tree)) == []
