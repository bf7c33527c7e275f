"""Which device to train on, failing loudly when GPUs are there but torch cannot use them; and run provenance.

torch 2.11 from PyPI is a CUDA 13.0 build (torch.version.cuda == "13.0"): it needs an NVIDIA driver >= 580. On a node
with an older driver `torch.cuda.is_available()` is simply False, and `Accelerator(cpu=not torch.cuda.is_available())`
would train on the CPU without a word. `resolve_device` turns that case into an error that says what was seen and
how to fix it; `--device cpu` is the explicit way to run on the CPU anyway.

Intended use in the trainer (one call per process, before the Accelerator is built, so every rank decides alike):

    from ravdess_dist.device import provenance, resolve_device

    device = resolve_device(cfg.device)                       # "cuda" or "cpu"; RuntimeError with the fix
    accelerator = Accelerator(cpu=device == "cpu", ...)
    ...
    info = provenance(str(accelerator.device))                # e.g. "cuda:1" on local rank 1, or "cpu"
    # one dict per rank, JSON-serialisable: into ranks.json next to host/node, or a provenance.json per run

and `--device {auto,cuda,cpu}` (default auto) on the command line. Nothing here initialises CUDA in a way that
breaks a later fork, except `torch.cuda.init()` in the failure path, just before the error is raised.

The probes take their inputs from the environment so that tests can fake them: `nvidia-smi` is looked up on PATH
(`shutil.which`), CUDA_VISIBLE_DEVICES is read at call time, and the /dev and /proc roots are parameters.
"""

from __future__ import annotations

import glob
import importlib.metadata
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import torch

class DeviceUnusable(RuntimeError):
    """GPUs are there but torch cannot use them (or --device cuda without one): entry points print it in one line."""


# Oldest Linux driver for each CUDA major version of torch's build (CUDA's minor-version compatibility).
MIN_DRIVER = {"13": "580", "12": "525", "11": "450"}
CUDA12_SETUP = "RAVDESS_CUDA=12 bash scripts/setup.sh"
DALI_PACKAGES = ("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110", "nvidia-dali")
SMI_TIMEOUT_S = 20


def _smi_rows(path: str | None = None) -> list[list[str]] | None:
    """Rows of `nvidia-smi --query-gpu=name,driver_version,uuid` split on commas; None when nvidia-smi is not on
    PATH (or PATH, if given) or fails. nvidia-smi ignores CUDA_VISIBLE_DEVICES and lists every GPU of the machine."""
    smi = shutil.which("nvidia-smi", path=path)
    if smi is None:
        return None
    try:
        done = subprocess.run(
            [smi, "--query-gpu=name,driver_version,uuid", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=SMI_TIMEOUT_S, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return [[field.strip() for field in line.split(",")] for line in done.stdout.splitlines() if line.strip()]


def _dev_files(dev_root: str | os.PathLike) -> list[str]:
    """The /dev/nvidiaN device files (not nvidiactl, nvidia-uvm, ...), in numeric order."""
    found = glob.glob(os.path.join(glob.escape(str(dev_root)), "nvidia[0-9]*"))
    numbered = [f for f in found if re.fullmatch(r"nvidia\d+", os.path.basename(f))]
    return sorted(numbered, key=lambda f: int(os.path.basename(f)[len("nvidia"):]))


def _cuda_visible_entries() -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as a list of entries; None when unset; [] for "", "-1" or "NoDevFiles" (no GPU)."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    entries = [e.strip() for e in value.split(",") if e.strip()]
    if not entries or entries[0] in ("-1", "NoDevFiles"):
        return []
    return entries


def _select(items: list, uuids: list[str | None], entries: list[str] | None) -> list:
    """The items CUDA_VISIBLE_DEVICES lets a program see: integer entries pick by index (CUDA stops at the first
    invalid one), UUID entries (GPU-..., MIG-...) by UUID prefix where UUIDs are known, else by count."""
    if entries is None:
        return items
    chosen = []
    for entry in entries:
        if entry.isdigit():
            if int(entry) >= len(items):
                break
            chosen.append(items[int(entry)])
        else:
            matches = [i for i, u in enumerate(uuids) if u and (u.startswith(entry) or entry.startswith(u))]
            if matches:
                chosen.append(items[matches[0]])
            elif len(chosen) < len(items) and not any(uuids):  # no UUIDs to compare: count the entry
                chosen.append(items[len(chosen)])
            else:
                break
    return chosen


def visible_gpus(dev_root: str | os.PathLike = "/dev", path: str | None = None) -> list[str]:
    """The NVIDIA GPUs this machine shows to this process, whether or not torch can use them.

    From `nvidia-smi` (found on PATH, or on `path` if given): the GPUs' names ("NVIDIA H100 80GB HBM3"); without it
    from the device files DEV_ROOT/nvidiaN: their paths. CUDA_VISIBLE_DEVICES, when set, restricts the list
    ("" and "-1": none). An empty list means no GPU to be seen.
    """
    entries = _cuda_visible_entries()
    if entries == []:
        return []
    rows = _smi_rows(path)
    if rows is not None:
        names = [row[0] for row in rows]
        return _select(names, [row[2] if len(row) > 2 else None for row in rows], entries)
    files = _dev_files(dev_root)
    return _select(files, [None] * len(files), entries)


def gpu_ids(dev_root: str | os.PathLike = "/dev", path: str | None = None) -> list[str]:
    """A CUDA_VISIBLE_DEVICES entry for each GPU this process may use (its own entries where it is set, else "0",
    "1", ...): what a child process is given to see exactly one of them. [] without GPUs."""
    count, entries = len(visible_gpus(dev_root, path)), _cuda_visible_entries()
    return (entries if entries is not None else [str(i) for i in range(count)])[:count]


def driver_version(proc_root: str | os.PathLike = "/proc", path: str | None = None) -> str | None:
    """The NVIDIA driver version ("550.54.15"): from nvidia-smi, else from PROC_ROOT/driver/nvidia/version; None if
    neither is there. Independent of CUDA_VISIBLE_DEVICES."""
    rows = _smi_rows(path)
    if rows:
        versions = [row[1] for row in rows if len(row) > 1 and row[1]]
        if versions:
            return versions[0]
    try:
        text = (Path(proc_root) / "driver/nvidia/version").read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", text)
    return match.group(1) if match else None


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def _cuda_init_error() -> str | None:
    """torch's own reason why CUDA does not work (e.g. "The NVIDIA driver on your system is too old"), if any."""
    try:
        torch.cuda.init()
    except Exception as error:  # noqa: BLE001 - any failure is the diagnosis we want to show
        return " ".join(str(error).split()).split(". ")[0].rstrip(".")[:300]  # the first sentence
    return None


def gpu_unusable_message(gpus: list[str], driver: str | None, requested: str = "auto") -> str:
    """The one-paragraph error when torch cannot use a GPU: what was seen, torch's CUDA build, the fix."""
    build = torch.version.cuda
    if not gpus:
        cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
        return (f"--device {requested}: no NVIDIA GPU visible (no nvidia-smi output, no /dev/nvidiaN"
                + (f", CUDA_VISIBLE_DEVICES={cvd!r}" if cvd is not None else "")
                + f") and torch {torch.__version__} (CUDA build {build}) finds none. Run on a GPU node (under SLURM: "
                "--gpus-per-node=N), or pass --device cpu to train on the CPU on purpose.")
    kinds = ", ".join(f"{gpus.count(name)} x {name}" for name in dict.fromkeys(gpus))
    head = (f"--device {requested}: {len(gpus)} NVIDIA GPU(s) visible ({kinds}), driver {driver or 'unknown'}, "
            f"but torch {torch.__version__} cannot use them (torch.cuda.is_available() is False).")
    if build is None:
        cause = "This torch is a CPU-only build."
        fix = f"Fix: install the CUDA build of torch (bash scripts/setup.sh; with a driver < 580: {CUDA12_SETUP})"
    else:
        needed = MIN_DRIVER.get(build.split(".")[0])
        cause = f"torch is built for CUDA {build}" + (f", which needs an NVIDIA driver >= {needed}." if needed else ".")
        if needed and driver and _version_tuple(driver) < _version_tuple(needed):
            cause += f" Driver {driver} is too old."
        elif needed and driver:
            cause += (" The driver is new enough: check the GPUs' state, the device files' permissions, "
                      "CUDA_VISIBLE_DEVICES.")
        fix = (f"Fix: a driver >= {needed or 'matching the build'} for this build, or install the CUDA 12 builds of "
               f"torch and DALI ({CUDA12_SETUP}, for drivers >= 525)")
    reason = _cuda_init_error()
    return (f"{head} {cause}" + (f" torch says: {reason}." if reason else "")
            + f" {fix}; or pass --device cpu to train on the CPU on purpose.")


SLURM_GPU_VARS = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE")  # set by SLURM for a GPU allocation


def slurm_gpu_allocation() -> str | None:
    """The SLURM variable saying this job or step was given GPUs on this node ("SLURM_JOB_GPUS='0,1'"), or None."""
    for name in SLURM_GPU_VARS:
        value = os.environ.get(name, "").strip()
        if value and value not in ("0", "-1", "NoDevFiles"):
            return f"{name}={value!r}"
    return None


def slurm_gpus_unusable_message(allocation: str, requested: str = "auto") -> str:
    """The error when SLURM allocated GPUs but this process can see none (no nvidia-smi, no device files)."""
    return (f"--device {requested}: SLURM allocated GPUs to this job ({allocation}), but this process sees no NVIDIA "
            f"GPU (no nvidia-smi on PATH, no /dev/nvidiaN) and torch {torch.__version__} (CUDA build "
            f"{torch.version.cuda}) finds none: the node's driver or the job's device access (cgroups) is not set up. "
            "Ask the cluster's admins, or pass --device cpu to train on the CPU on purpose.")


def resolve_device(choice: str, dev_root: str | os.PathLike = "/dev", path: str | None = None) -> str:
    """The device to train on for `--device CHOICE`: "cuda" or "cpu".

    "cpu": always "cpu". "cuda": "cuda" if torch can use a GPU, else RuntimeError. "auto": "cuda" if torch can use a
    GPU; "cpu" if no GPU is visible at all (nvidia-smi, DEV_ROOT/nvidiaN, within CUDA_VISIBLE_DEVICES) and SLURM
    allocated none; RuntimeError when GPUs are visible but torch cannot use them (a driver too old for torch's CUDA
    build, typically), or when SLURM allocated GPUs that this process cannot see at all. The error's message names the
    GPUs (or the SLURM allocation), the driver, torch's CUDA build and the fix.
    """
    if choice not in ("auto", "cuda", "cpu"):
        raise ValueError(f"--device must be auto, cuda or cpu, not {choice!r}")
    if choice == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    gpus = visible_gpus(dev_root, path)
    allocation = slurm_gpu_allocation()
    if not gpus and allocation:
        raise DeviceUnusable(slurm_gpus_unusable_message(allocation, choice))
    if choice == "auto" and not gpus:
        return "cpu"
    raise DeviceUnusable(gpu_unusable_message(gpus, driver_version(path=path), choice))


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _safe(probe, default=None):
    """probe() or DEFAULT if it raises: provenance must never stop a run."""
    try:
        return probe()
    except Exception:  # noqa: BLE001
        return default


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    return _safe(lambda: os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _devices_used(device: str) -> list[dict]:
    """The devices DEVICE denotes: "cuda:N" that GPU, "cuda" every GPU torch sees, "cpu" the CPU."""
    if device.startswith("cuda") and torch.cuda.is_available():
        indices = [int(device.split(":")[1])] if ":" in device else list(range(torch.cuda.device_count()))
        used = []
        for index in indices:
            props = torch.cuda.get_device_properties(index)
            used.append({"type": "cuda", "index": index, "name": props.name, "memory_bytes": props.total_memory,
                         "capability": f"{props.major}.{props.minor}",
                         "uuid": _safe(lambda p=props: str(p.uuid))})
        return used
    return [{"type": "cpu", "name": _cpu_name(), "cores": os.cpu_count(),
             "threads": torch.get_num_threads(), "memory_bytes": _memory_bytes()}]


def provenance(device: str) -> dict:
    """What a run ran on and with, as a JSON-serialisable dict; never raises (a failed probe gives None).

    Keys: device, devices (name, memory, ... of each device used), hostname, python, platform, torch, torch_cuda
    (torch.version.cuda, None for a CPU build), cudnn, nccl (when CUDA works), driver, visible_gpus, dali and
    dali_package (None if DALI is not installed), accelerate, cuda_visible_devices, slurm_job_id.
    """
    cuda_ok = bool(_safe(torch.cuda.is_available, False))
    dali = next(((name, v) for name in DALI_PACKAGES if (v := _package_version(name))), (None, None))
    nccl = _safe(lambda: ".".join(map(str, torch.cuda.nccl.version()))) if cuda_ok else None
    return {
        "device": device,
        "devices": _safe(lambda: _devices_used(device), []),
        "hostname": socket.gethostname(),
        "python": sys.version.split()[0],
        "platform": _safe(platform.platform),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": _safe(torch.backends.cudnn.version),  # the build's cuDNN; loads on a CPU-only machine too
        "nccl": nccl,
        "driver": _safe(driver_version),
        "visible_gpus": _safe(visible_gpus, []),
        "dali": dali[1],
        "dali_package": dali[0],
        "accelerate": _package_version("accelerate"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }
