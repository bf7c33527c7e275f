"""The xdist grouping in tests/conftest.py: every shared fixture it names still exists and groups its tests."""
from tests.conftest import SHARED_FIXTURES, xdist_group


def test_every_shared_fixture_groups_the_tests_that_use_it(request):
    """A renamed fixture or module would silently split its tests over workers (and build the fixture twice, or start
    two SLURM clusters): each SHARED_FIXTURES entry must match collected tests, all of them in its group."""
    items = request.session.items
    for (module, fixture), group in SHARED_FIXTURES.items():
        users = [i for i in items if fixture in i.fixturenames and module in (None, i.path.name)]
        if module is None and not users:
            continue  # a -k selection without SLURM tests
        if module is not None and not any(i.path.name == module for i in items):
            continue  # the module is not part of this selection
        assert users, f"no collected test in {module} uses the fixture {fixture!r} named in SHARED_FIXTURES"
        assert {xdist_group(i) for i in users} == {group}, (module, fixture)
        marks = {m.kwargs.get("name") or m.args[0] for i in users for m in i.iter_markers("xdist_group")}
        assert marks == {group}, (module, fixture, marks)


def test_tests_without_a_shared_fixture_are_balanced_freely(request):
    """Only tests that share an expensive fixture are pinned: this one has no group."""
    assert xdist_group(request.node) is None
    assert not list(request.node.iter_markers("xdist_group"))
