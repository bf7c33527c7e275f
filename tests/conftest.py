"""Shared pytest setup: registers the fixture modules; under pytest-xdist (scripts/test.sh runs 2 workers), keeps the
tests that share an expensive fixture on one worker and gives each worker its share of the CPU threads."""
import os

import pytest

pytest_plugins = ["tests.slurm_cluster", "tests.trainer_fixtures"]

# Fixtures that take seconds to minutes to build: every test that uses one runs on the same xdist worker (one group
# per fixture, `--dist loadgroup`), so each is built once per session, not once per worker. The SLURM cluster is one
# per session and its tests submit jobs to it. (module, fixture) -> group; module None: any module.
SHARED_FIXTURES = {
    (None, "slurm_cluster"): "slurm",
    (None, "two_seeds"): "two-seeds",  # test_ensemble.py and test_predict.py
    ("test_doctor.py", "report"): "doctor",
    ("test_trainer.py", "trained"): "trainer-runs",  # one test uses both runs: one group for the two
    ("test_trainer.py", "ddp"): "trainer-runs",
    ("test_loaders.py", "shards"): "loaders-sample",
    ("test_device_path.py", "shards"): "device-path-sample",  # the same fixture, imported: one instance per module
    ("test_predict.py", "shards"): "predict-sample",
}

WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    # Set before any test module imports torch, and inherited by the train.py/accelerate processes the tests start:
    # two workers each using every core would oversubscribe the CPU (OpenMP threads spin while they wait).
    threads = str(max(1, (os.cpu_count() or 1) // WORKERS))
    os.environ.setdefault("OMP_NUM_THREADS", threads)
    os.environ.setdefault("MKL_NUM_THREADS", threads)


def xdist_group(item: pytest.Item) -> str | None:
    """The SHARED_FIXTURES group of ITEM, or None when it uses none of them (then xdist balances it freely)."""
    module = item.path.name
    for (where, fixture), group in SHARED_FIXTURES.items():
        if where in (None, module) and fixture in item.fixturenames:
            return group
    return None


def pytest_itemcollected(item: pytest.Item) -> None:
    """Mark each test as it is collected: xdist turns the marks into the nodeids' "@group" afterwards."""
    if group := xdist_group(item):
        item.add_marker(pytest.mark.xdist_group(group))
