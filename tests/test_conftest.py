"""The xdist grouping in tests/conftest.py: every shared fixture it names still exists and groups its tests; the GPU
tests' mark (tests/gpu.py)."""
import importlib
import re
from pathlib import Path

from tests.conftest import SHARED_FIXTURES, pytest_plugins, xdist_group
from tests.gpu import gpu


def test_every_shared_fixture_still_exists():
    """A renamed fixture or module would silently split its tests over workers (the fixture built twice, two SLURM
    clusters): each SHARED_FIXTURES entry must name a fixture its module defines or imports (module None: a fixture
    of one of the plugin modules that conftest registers for every test)."""
    for (module, fixture) in SHARED_FIXTURES:
        names = [f"tests.{module.removesuffix('.py')}"] if module else pytest_plugins
        sources = [importlib.import_module(name) for name in names]
        assert any(callable(getattr(source, fixture, None)) for source in sources), f"{names} have no fixture {fixture!r}"


def test_the_tests_of_a_shared_fixture_share_one_group(request):
    """Every collected test that uses a shared fixture carries its group's mark; under `--dist loadgroup` xdist has
    seen the mark in time (the nodeid ends with @GROUP), so the group's tests run on one worker, one after another."""
    loadgroup = getattr(request.config.option, "loadgroup", False)  # set on xdist workers only
    for (module, fixture), group in SHARED_FIXTURES.items():
        users = [i for i in request.session.items if fixture in i.fixturenames and module in (None, i.path.name)]
        assert {xdist_group(i) for i in users} <= {group}, (module, fixture)
        for item in users:
            assert [m.kwargs.get("name") or m.args[0] for m in item.iter_markers("xdist_group")] == [group]
            assert not loadgroup or item.nodeid.endswith(f"@{group}"), item.nodeid


def test_tests_without_a_shared_fixture_are_balanced_freely(request):
    """Only tests that share an expensive fixture are pinned: this one has no group."""
    assert xdist_group(request.node) is None
    assert not list(request.node.iter_markers("xdist_group"))


def test_every_test_that_needs_a_gpu_carries_the_gpu_mark():
    """A GPU machine runs `pytest -m gpu` (scripts/device/*.sh): `tests.gpu.gpu` marks a test and skips it without a
    GPU; a test module skipping on its own (a skipif of its own on torch.cuda.is_available) would be left out there, as
    `-k gpu` left out the tests whose names do not say "gpu" until 2026-11-28b."""
    @gpu
    def needs_one():
        """A test that needs a GPU."""

    assert {mark.name for mark in needs_one.pytestmark} == {"gpu", "skipif"}
    own = [path.name for path in sorted(Path(__file__).parent.glob("test_*.py"))
           if re.search(r"skipif\(\s*not torch\.cuda\.is_available\(\)", path.read_text())]
    assert own == []
    # and the device scripts' list of GPU test modules (scripts/device/lib.sh, GPU_TESTS) names every module that has one
    lib = (Path(__file__).parents[1] / "scripts" / "device" / "lib.sh").read_text()
    listed = set(re.search(r'GPU_TESTS="([^"]+)"', lib).group(1).split())
    using = {f"tests/{path.name}" for path in Path(__file__).parent.glob("test_*.py")
             if re.search(r"^@gpu$|marks=GPU_MARKS\)", path.read_text(), re.MULTILINE)}
    assert using and using <= listed, sorted(using - listed)
