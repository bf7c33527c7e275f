"""Random states in checkpoints: the CUDA generator of this process's own device only; a CPU round trip through a file."""
import random

import numpy as np
import pytest
import torch

from ravdess_dist.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


def draws() -> tuple:
    """One draw from each CPU generator a training step uses."""
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda as a process sees it on a 4-GPU node whose current device is 2: every call recorded."""
    calls = {"get": [], "set": []}
    states = {d: torch.full((16,), d, dtype=torch.uint8) for d in range(4)}

    def get_rng_state(device="cuda"):
        calls["get"].append(device)
        return states[device].clone()

    def set_rng_state(state, device="cuda"):
        calls["set"].append((state.clone(), device))

    def every_device(*_):
        raise AssertionError("every visible GPU's state was touched, not only the current device's")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "get_rng_state", get_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", every_device)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", every_device)
    return calls, states


def test_only_the_current_device_state_is_saved_and_restored_there(fake_cuda):
    """rng_state() saves one CUDA state, the current device's; set_rng_state() puts it back on the current device
    (which may be another index after a resume with another number of GPUs per process)."""
    calls, states = fake_cuda
    saved = rng_state()
    assert calls["get"] == [2]
    assert torch.equal(saved["cuda"], states[2])
    set_rng_state(saved)
    assert len(calls["set"]) == 1
    state, device = calls["set"][0]
    assert torch.equal(state, states[2]) and device == 2


def test_cuda_state_is_skipped_without_cuda(monkeypatch):
    """Saved on a GPU, restored on a CPU-only machine: the CUDA state is ignored, the CPU states come back."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    saved = {**rng_state(), "cuda": torch.zeros(16, dtype=torch.uint8)}
    expected = draws()
    set_rng_state(saved)
    assert draws() == expected


def test_cpu_states_round_trip_through_a_checkpoint_file(tmp_path):
    """Python, NumPy and torch states saved in a checkpoint, loaded with weights_only=True and restored: the same
    draws as right after saving."""
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = rng_state()
    expected = draws()
    path = save_checkpoint(tmp_path / "last.pt", {"model": {}, "config": {}, "classes": [], "epoch": 0,
                                                  "rng": [state]})
    draws(), draws()  # move every generator on
    set_rng_state(load_checkpoint(path)["rng"][0])
    assert draws() == expected
    assert state["cuda"] is None or torch.cuda.is_available()  # no CUDA: nothing saved for it
