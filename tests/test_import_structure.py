"""The package's and the benchmarks' modules import each other without cycles: each module only
imports modules below it. The graph is read from the source with `ast`, so imports inside functions count too
(importing the modules would miss exactly the deferred imports that hide a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "difnet"
BENCHMARKS = PACKAGE.parent / "benchmarks"


def module_name(path: Path, package: Path) -> str:
    """`difnet/models/base.py` -> `difnet.models.base`; a package's `__init__.py` -> the package."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, name: str, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports anywhere in its source. `from X import n` imports
    `X.n` when that is a module, else `X` itself; parent packages run on the way are not counted
    (every module would otherwise depend on `difnet/__init__.py`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up `level - 1` packages
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                         for alias in node.names)  # fmt: skip
    return {_known_prefix(module, modules) for module in found} - {None, name}


def _known_prefix(module: str, modules: set[str]) -> str | None:
    """`module`, or its longest prefix that is one of the package's modules (None if none is)."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def import_graph(*packages: Path) -> dict[str, set[str]]:
    """`{module: the packages' modules it imports}` for every module of `packages` (default: difnet)."""
    names = {path: module_name(path, package) for package in packages or (PACKAGE,)
             for path in sorted(package.rglob("*.py"))}  # fmt: skip
    modules = set(names.values())
    return {name: imported_modules(path, name, modules) for path, name in names.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle `[a, b, ..., a]` of `graph`, or None (depth-first search)."""
    done: set[str] = set()

    def visit(path: list[str]) -> list[str] | None:
        for target in sorted(graph[path[-1]]):
            if target in path:
                return [*path[path.index(target) :], target]
            if target not in done:
                cycle = visit([*path, target])
                if cycle:
                    return cycle
        done.add(path[-1])
        return None

    for module in sorted(graph):
        if module not in done:
            cycle = visit([module])
            if cycle:
                return cycle
    return None


def test_the_package_and_the_benchmarks_have_no_import_cycle():
    graph = import_graph(PACKAGE, BENCHMARKS)
    assert "benchmarks.camvid_variants" in graph["benchmarks.camvid"]  # the benchmarks are in the graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize(
    "graph, cycle",
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
    ],
)
def test_the_cycle_finder_finds_cycles(graph, cycle):
    assert find_cycle(graph) == cycle


def test_deferred_and_relative_imports_are_edges(tmp_path):
    package = tmp_path / "difnet"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from difnet.sub import low\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "low.py").write_text("def f():\n    from difnet import __version__\n")
    (package / "sub" / "high.py").write_text("from . import low\nfrom ..sub.low import f\n")
    graph = import_graph(package)
    assert graph["difnet.sub.low"] == {"difnet"} and graph["difnet.sub.high"] == {"difnet.sub.low"}
    assert find_cycle(graph) == ["difnet", "difnet.sub.low", "difnet"]


def test_the_version_lives_in_a_leaf_module_that_pyproject_reads():
    tomllib = pytest.importorskip("tomllib")
    expand = pytest.importorskip("setuptools.config.expand")
    import difnet

    root = PACKAGE.parent
    attr = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["dynamic"]["version"]
    assert expand.read_attr(attr["attr"], root_dir=root) == difnet.__version__
    assert import_graph()["difnet.version"] == set()
