"""The modules of tttgraph import one another without a cycle.

Every module of the package (``tttgraph/``, ``passes/`` installed as ``tttgraph.passes``, ``kernels/ttt_mlp/``
installed as ``tttgraph.kernels.ttt_mlp``) is parsed with ``ast``; each ``import`` / ``from ... import`` of
another tttgraph module is an edge, wherever it is written: at module level, inside a function (the imports
that exist only to break a cycle at load time are edges too) or under ``if TYPE_CHECKING``. Relative imports
are resolved against the importing module. ``from pkg import name`` is an edge to ``pkg.name`` when that is a
module, else to ``pkg``; the packages above an imported module are not counted (importing ``a.b.c`` runs
``a/__init__`` and ``a/b/__init__``, but those rarely name the importer, and counting them would tie every
module to the package's public API).
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
# package name -> folder; the folders of pyproject.toml's package-dir, kernels/ttt_mlp included.
FOLDERS = {
    "tttgraph": ROOT / "tttgraph",
    "tttgraph.passes": ROOT / "passes",
    "tttgraph.kernels.ttt_mlp": ROOT / "kernels" / "ttt_mlp",
}


def discover(folders: dict[str, Path] = FOLDERS) -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is_package) for every ``.py`` under the folders."""
    modules: dict[str, tuple[Path, bool]] = {}
    for package, folder in folders.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [package, *rel.parts]
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            name = ".".join(parts)
            # A folder mapped elsewhere (tttgraph/kernels/ttt_mlp would be one) does not override the mapping.
            modules.setdefault(name, (path, is_package))
    return modules


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([target] if target else [])])


def _owner(name: str, modules: dict) -> str | None:
    """The longest known module that ``name`` is or lies in (``tttgraph.x.attr`` -> ``tttgraph.x``)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, source: str, is_package: bool, modules: dict) -> set[str]:
    """The tttgraph modules that ``module`` imports, anywhere in its source."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                owner = _owner(alias.name, modules)
                if owner is not None:
                    found.add(owner)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            for alias in node.names:
                owner = _owner(f"{base}.{alias.name}", modules)
                if owner is None or owner == base or not owner.startswith(f"{base}."):
                    owner = _owner(base, modules)
                if owner is not None:
                    found.add(owner)
    found.discard(module)
    return found


def import_graph(folders: dict[str, Path] = FOLDERS) -> nx.DiGraph:
    modules = discover(folders)
    graph = nx.DiGraph()
    for name, (path, is_package) in modules.items():
        graph.add_node(name)
        for target in imports_of(name, path.read_text(), is_package, modules):
            graph.add_edge(name, target)
    return graph


def _cycle_text(graph: nx.DiGraph) -> str | None:
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return None
    return " -> ".join([edge[0] for edge in cycle] + [cycle[-1][1]])


def test_package_imports_form_no_cycle():
    graph = import_graph()
    assert len(graph) > 50 and graph.number_of_edges() > 100, "the scan found too little: are the folders right?"
    cycles = [" -> ".join([*cycle, cycle[0]]) for cycle in nx.simple_cycles(graph)]
    for cycle in cycles:
        print(f"import cycle: {cycle}")
    assert not cycles, "import cycles (move what both sides need into a module of its own):\n" + "\n".join(cycles)


def test_scan_sees_every_folder_and_function_level_imports():
    graph = import_graph()
    for name in ("tttgraph.rewrite", "tttgraph.passes.insert_ttt", "tttgraph.kernels.ttt_mlp.cuda_sm90"):
        assert name in graph, name
    # Relative imports resolve: kernels/ttt_mlp/__init__.py does ``from .backends import ...``.
    assert graph.has_edge("tttgraph.kernels.ttt_mlp", "tttgraph.kernels.ttt_mlp.backends")
    # ``from tttgraph import ops`` names the module, not the package.
    assert graph.has_edge("tttgraph", "tttgraph.ops")


def test_shipped_code_imports_nothing_from_the_tests():
    """Test oracles (tests/eager_reference.py, tests/kernels/ttt_loop.py) stay with the tests: the package,
    the examples and the benchmarks never import them."""
    offenders = []
    for folder in ("tttgraph", "passes", "kernels", "examples", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno}: {name}" for name in names
                              if name == "tests" or name.startswith("tests.") or name == "tttgraph.eager"]
    assert not offenders, offenders
    assert not (ROOT / "tttgraph" / "eager.py").exists(), "the eager oracle lives in tests/eager_reference.py"


@pytest.mark.parametrize(
    ("files", "cycle"),
    [
        # The shape of the checkpoint <-> rewrite cycle: one side at module level, the other in a function.
        (
            {
                "a.py": "from pkg.b import helper\n",
                "b.py": "def helper():\n    from pkg.a import thing\n    return thing\n",
            },
            True,
        ),
        # The exporter <-> tensorrt_export shape: ``from pkg import module`` inside a function, relative form.
        (
            {
                "a.py": "def go():\n    from . import b\n    return b\n",
                "b.py": "from .a import go\n",
            },
            True,
        ),
        (
            {
                "a.py": "def go():\n    import pkg.b\n",
                "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import go\n",
            },
            True,
        ),
        ({"a.py": "from pkg.b import helper\n", "b.py": "import os\nimport torch\n"}, False),
        # ``from pkg import name`` where name is not a module is an edge to the package itself.
        ({"__init__.py": "from pkg.a import x\n", "a.py": "from pkg import b\nfrom pkg import y\n"}, True),
    ],
)
def test_scan_finds_cycles_at_module_and_function_level(tmp_path, files, cycle):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "__init__.py").touch(exist_ok=True)
    if "b.py" not in files:
        (tmp_path / "b.py").write_text("")
    graph = import_graph({"pkg": tmp_path})
    assert (_cycle_text(graph) is not None) == cycle, _cycle_text(graph)
