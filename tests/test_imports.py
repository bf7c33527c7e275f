"""The project's import graph, read statically from the sources: no module reaches itself through imports (lazy imports
inside functions included), and data flows one way: preprocess -> shards <- ravdess_dist."""
import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ravdess_dist", "shards", "preprocess")


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the project's packages."""
    mods = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules that PATH imports anywhere in its body (`from pkg import mod` counts as importing pkg.mod)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


@functools.cache
def graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (read once per session)."""
    mods = module_files()
    return {name: imports_of(path, set(mods)) - {name} for name, path in mods.items()}


def cycle_from(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start through the import graph, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(graph[node]):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def test_the_graph_sees_the_packages_and_their_imports():
    """The reader finds the modules and an import that is known to exist (else the tests below prove nothing)."""
    g = graph()
    assert {"ravdess_dist.trainer", "shards.atomic", "preprocess.scan", "ravdess_dist.models.registry"} <= set(g)
    assert "ravdess_dist.models.registry" in g["ravdess_dist.models.resnet"]
    assert cycle_from({"a": {"b"}, "b": {"a"}}, "a") == ["a", "b", "a"]


@pytest.mark.parametrize("module", sorted(module_files()))
def test_no_import_cycle(module):
    """No module imports itself through others (the registry is its own module: the models import it, not the
    package that imports them; the loader factory imports the backends, never the reverse)."""
    assert cycle_from(graph(), module) is None, " -> ".join(cycle_from(graph(), module))


def test_data_flows_one_way():
    """shards imports neither preprocess nor ravdess_dist; preprocess does not import ravdess_dist."""
    for name, deps in graph().items():
        if name.startswith("shards"):
            assert not [d for d in deps if d.split(".")[0] in ("preprocess", "ravdess_dist")], (name, deps)
        if name.startswith("preprocess"):
            assert not [d for d in deps if d.startswith("ravdess_dist")], (name, deps)
