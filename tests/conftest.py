"""Shared pytest setup: registers the fixture modules."""

pytest_plugins = ["tests.slurm_cluster"]
