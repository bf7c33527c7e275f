"""Checkpoints: everything needed to resume exactly or to predict, written atomically, loaded with weights_only=True."""
import random
from pathlib import Path

import numpy as np
import torch

from shards.atomic import atomic_path


def rng_state() -> dict:
    """Python, NumPy and torch random states, as tensors and plain values: the CPU generator, and the CUDA generator of
    this process's own device only (a process trains on one GPU; saving every visible GPU's state would tie a resume
    to the same number of GPUs per process)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    cuda = torch.cuda.get_rng_state(torch.cuda.current_device()) if torch.cuda.is_available() else None
    return {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() captured."""
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is None or (isinstance(cuda, (list, tuple)) and not cuda) or not torch.cuda.is_available():
        return  # saved without CUDA, or restored without it: the CPU states above are all there is
    device = torch.cuda.current_device()
    if isinstance(cuda, (list, tuple)):  # an older checkpoint with every visible GPU's state: take this device's
        if device >= len(cuda):
            return
        cuda = cuda[device]
    torch.cuda.set_rng_state(cuda, device)


def save_checkpoint(path: Path, state: dict) -> Path:
    """torch.save to a temporary name, then rename: a reader never sees half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint safely (weights_only=True); a missing, corrupt or foreign file is a clear error."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint there")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types; all mean the same to the user
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    missing = {"model", "config", "classes", "epoch"} - set(state if isinstance(state, dict) else ())
    if missing:
        raise ValueError(f"{path}: not a ravdess_dist checkpoint (missing {sorted(missing)})")
    return state
