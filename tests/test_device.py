"""ravdess_dist.device: GPUs that torch cannot use are an error, not a silent CPU run; provenance never fails.

The machine's view is faked: an `nvidia-smi` script first on PATH, a folder standing for /dev or /proc, and
torch.cuda.is_available() patched to False where a test needs "torch cannot use the GPU" (as on a node whose driver
is older than torch's CUDA build), so the tests mean the same on a CPU machine and on a GPU machine.
"""
import json
import os
import stat
from pathlib import Path

import pytest
import torch

from ravdess_dist import device
from ravdess_dist.device import driver_version, gpu_ids, provenance, resolve_device, visible_gpus
from tests.gpu import gpu

H100 = "NVIDIA H100 80GB HBM3"


def fake_nvidia_smi(bin_dir: Path, rows: list[str], rc: int = 0) -> Path:
    """An executable `nvidia-smi` in BIN_DIR that prints ROWS for the query the module makes, and fails otherwise."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "nvidia-smi"
    body = "\n".join(f"echo '{row}'" for row in rows)
    script.write_text(f"""#!/bin/sh
case "$*" in
  *--query-gpu=name,driver_version*--format=csv,noheader*) ;;
  *) echo "unexpected arguments: $*" >&2; exit 2 ;;
esac
{body}
exit {rc}
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


@pytest.fixture
def no_cuda(monkeypatch):
    """torch cannot use any GPU, as with a driver too old for its CUDA build; CUDA_VISIBLE_DEVICES unset, and no
    SLURM GPU allocation (also when the tests themselves run in a SLURM job)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("CUDA_VISIBLE_DEVICES", *device.SLURM_GPU_VARS):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def two_old_h100s(tmp_path, monkeypatch, no_cuda):
    """nvidia-smi (first on PATH) shows two H100s on driver 550.54.15; the fake /dev is empty."""
    fake_nvidia_smi(tmp_path / "bin", [f"{H100}, 550.54.15, GPU-aaaa-1111", f"{H100}, 550.54.15, GPU-bbbb-2222"])
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "dev").mkdir()
    return tmp_path / "dev"


@pytest.fixture
def no_smi(tmp_path, monkeypatch, no_cuda):
    """No nvidia-smi anywhere on PATH (only an empty folder); returns an empty folder standing for /dev."""
    (tmp_path / "empty_bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty_bin"))
    (tmp_path / "dev").mkdir()
    return tmp_path / "dev"


@pytest.mark.parametrize("choice", ["auto", "cuda"])
def test_gpus_seen_but_unusable_is_an_error_with_the_fix(two_old_h100s, choice):
    """H100s on driver 550 and torch without CUDA: RuntimeError naming GPUs, driver, torch's build and the fixes."""
    with pytest.raises(RuntimeError) as raised:
        resolve_device(choice, dev_root=two_old_h100s)
    message = str(raised.value)
    assert "550.54.15" in message and "--device cpu" in message
    assert f"2 x {H100}" in message
    assert torch.__version__ in message and str(torch.version.cuda) in message
    assert "RAVDESS_CUDA=12 bash scripts/setup.sh" in message
    if torch.version.cuda and torch.version.cuda.startswith("13"):
        assert ">= 580" in message and "Driver 550.54.15 is too old" in message


def test_cpu_choice_is_cpu_whatever_the_machine_shows(two_old_h100s):
    """--device cpu is the explicit way out: "cpu" even with GPUs that torch cannot use."""
    assert resolve_device("cpu", dev_root=two_old_h100s) == "cpu"


def test_no_gpu_anywhere_gives_cpu_for_auto_and_an_error_for_cuda(no_smi):
    """No nvidia-smi, no /dev/nvidiaN: auto means the CPU; cuda asked for explicitly is an error."""
    assert visible_gpus(dev_root=no_smi) == []
    assert resolve_device("auto", dev_root=no_smi) == "cpu"
    with pytest.raises(RuntimeError, match="no NVIDIA GPU visible.*--device cpu"):
        resolve_device("cuda", dev_root=no_smi)


@pytest.mark.parametrize("name, value", [("SLURM_JOB_GPUS", "0,1"), ("SLURM_STEP_GPUS", "2"),
                                         ("SLURM_GPUS_ON_NODE", "4")])
def test_slurm_gpu_allocation_nobody_can_see_is_an_error(no_smi, monkeypatch, name, value):
    """SLURM gave the job GPUs, but no nvidia-smi, no /dev/nvidiaN and no CUDA here: an error naming the allocation,
    not a silent CPU run; --device cpu still runs on the CPU on purpose."""
    monkeypatch.setenv(name, value)
    for choice in ("auto", "cuda"):
        with pytest.raises(RuntimeError, match=f"SLURM allocated GPUs to this job \\({name}='{value}'\\).*--device cpu"):
            resolve_device(choice, dev_root=no_smi)
    assert resolve_device("cpu", dev_root=no_smi) == "cpu"


def test_slurm_job_without_gpus_runs_on_the_cpu(no_smi, monkeypatch):
    """A SLURM job that was given no GPU (SLURM_GPUS_ON_NODE=0) is an ordinary CPU run."""
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "0")
    assert resolve_device("auto", dev_root=no_smi) == "cpu"


def test_device_files_count_as_gpus_without_nvidia_smi(no_smi):
    """Without nvidia-smi, /dev/nvidia0 and /dev/nvidia1 are two GPUs (nvidiactl and nvidia-uvm are not): auto fails."""
    for name in ("nvidia1", "nvidia0", "nvidiactl", "nvidia-uvm", "nvidia-modeset"):
        (no_smi / name).touch()
    assert visible_gpus(dev_root=no_smi) == [str(no_smi / "nvidia0"), str(no_smi / "nvidia1")]
    with pytest.raises(RuntimeError, match="2 NVIDIA GPU"):
        resolve_device("auto", dev_root=no_smi)


@pytest.mark.parametrize("value", ["", "-1", "NoDevFiles"])
def test_cuda_visible_devices_empty_hides_every_gpu(two_old_h100s, monkeypatch, value):
    """CUDA_VISIBLE_DEVICES "" (or -1, or SLURM's NoDevFiles): no GPU visible, so auto quietly means the CPU."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert visible_gpus(dev_root=two_old_h100s) == []
    assert resolve_device("auto", dev_root=two_old_h100s) == "cpu"


def test_cuda_visible_devices_selects_by_index_and_uuid(two_old_h100s, monkeypatch):
    """Entries pick GPUs by index (CUDA stops at the first invalid one) or by UUID prefix."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert visible_gpus(dev_root=two_old_h100s) == [H100]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,0")
    assert visible_gpus(dev_root=two_old_h100s) == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb")
    assert len(visible_gpus(dev_root=two_old_h100s)) == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert visible_gpus(dev_root=two_old_h100s) == [H100, H100]


def test_gpu_ids_name_each_usable_gpu_for_a_child_process(two_old_h100s, tmp_path, monkeypatch):
    """gpu_ids: "0", "1", ... for the GPUs seen, or this process's own CUDA_VISIBLE_DEVICES entries; none without GPUs."""
    assert gpu_ids(dev_root=two_old_h100s) == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb,GPU-aaaa")
    assert gpu_ids(dev_root=two_old_h100s) == ["GPU-bbbb", "GPU-aaaa"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,7")  # CUDA stops at the first invalid entry
    assert gpu_ids(dev_root=two_old_h100s) == ["1"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    (tmp_path / "empty_bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty_bin"))  # no nvidia-smi, and the fake /dev is empty
    assert gpu_ids(dev_root=two_old_h100s) == []


def test_driver_version_from_nvidia_smi_or_proc(no_smi, tmp_path):
    """The driver comes from nvidia-smi when there is one, else from /proc/driver/nvidia/version, else None."""
    proc = tmp_path / "proc"
    assert driver_version(proc_root=proc) is None
    (proc / "driver/nvidia").mkdir(parents=True)
    (proc / "driver/nvidia/version").write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 19:39:15 UTC 2024\n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
    assert driver_version(proc_root=proc) == "535.183.01"
    fake_nvidia_smi(tmp_path / "bin", [f"{H100}, 550.54.15, GPU-aaaa-1111"])
    assert driver_version(proc_root=proc, path=str(tmp_path / "bin")) == "550.54.15"  # nvidia-smi wins


def test_failing_nvidia_smi_falls_back_to_device_files(tmp_path, monkeypatch, no_cuda):
    """nvidia-smi that exits 9 ("driver/library version mismatch", say): the device files decide."""
    fake_nvidia_smi(tmp_path / "bin", ["NVIDIA-SMI has failed"], rc=9)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    (tmp_path / "dev").mkdir()
    assert visible_gpus(dev_root=tmp_path / "dev") == []
    (tmp_path / "dev/nvidia0").touch()
    assert visible_gpus(dev_root=tmp_path / "dev") == [str(tmp_path / "dev/nvidia0")]


def test_unknown_choice_is_rejected():
    with pytest.raises(ValueError, match="auto, cuda or cpu"):
        resolve_device("gpu")


def test_provenance_on_this_machine():
    """provenance() of the machine the tests run on: versions filled in, JSON-serialisable, no error."""
    used = "cuda:0" if torch.cuda.is_available() else "cpu"
    info = provenance(used)
    assert json.loads(json.dumps(info)) == info
    assert info["torch"] == torch.__version__ and info["torch_cuda"] == torch.version.cuda
    assert info["python"].count(".") == 2 and info["hostname"]
    assert info["accelerate"] == __import__("accelerate").__version__
    assert info["device"] == used and len(info["devices"]) == 1
    if used == "cpu":
        assert info["devices"][0]["type"] == "cpu" and info["devices"][0]["cores"] == os.cpu_count()
        assert info["nccl"] is None
    else:
        assert info["devices"][0]["memory_bytes"] > 2**30 and info["nccl"] and info["driver"]


def test_provenance_with_unusable_gpus_records_what_was_seen(two_old_h100s, monkeypatch):
    """Where GPUs show but torch cannot use them, provenance still works and records driver and GPUs."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    info = provenance("cpu")
    assert info["driver"] == "550.54.15" and info["visible_gpus"] == [H100]
    assert info["cuda_visible_devices"] == "0" and info["nccl"] is None


def test_provenance_survives_a_broken_probe(monkeypatch):
    """A probe that raises (here: the device listing) costs its field, not the run."""
    monkeypatch.setattr(device, "_devices_used", lambda _: 1 / 0)
    info = provenance("cpu")
    assert info["devices"] == [] and info["torch"] == torch.__version__


@gpu
def test_usable_gpu_resolves_to_cuda():
    """On a working GPU machine auto and cuda both give "cuda", and provenance lists that GPU's name and memory."""
    assert resolve_device("auto") == resolve_device("cuda") == "cuda"
    info = provenance("cuda")
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    assert [d["name"] for d in info["devices"]] == names
