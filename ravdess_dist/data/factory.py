"""`make_loader`: the loader of one backend for a LoaderSpec (backends imported on demand: DALI is optional)."""
from ravdess_dist.data.contract import BACKENDS, LoaderSpec, ShardLoader


def make_loader(backend: str, spec: LoaderSpec | None = None, **fields) -> ShardLoader:
    """A loader of this rank's batches by the named backend, from SPEC (or LoaderSpec(**fields))."""
    spec = spec or LoaderSpec(**fields)
    if backend == "torch":
        from ravdess_dist.data.torch_path import TorchLoader as cls
    elif backend == "dali":
        from ravdess_dist.data.dali_path import DaliLoader as cls
    elif backend == "device":
        from ravdess_dist.data.device_path import DeviceLoader as cls
    else:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    return cls(spec)
