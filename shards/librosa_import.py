"""librosa, imported one process at a time, so that concurrent first imports cannot corrupt numba's on-disk cache.

Several librosa modules build numba gufuncs with explicit signatures and cache=True: they compile when the module is
imported and save two cache files per function. Two processes compiling the same gufunc into a cold cache at once can
save mismatched files, and from then on every process that loads them segfaults when it calls the function (yin,
localmin, zero crossings): numba#10128, still open in numba 0.68. Measured here on a fresh cache: 2 of 6 pairs of
concurrent `import librosa.core.pitch` left a cache on which the next `librosa.yin` died with SIGSEGV. That is how CI
failed: both pytest-xdist workers imported librosa at collection on a fresh venv, and the analysis pool's workers
then died in yin (BrokenProcessPool). Users meet it with parallel jobs on a fresh install.

So every module of this project imports librosa from here. The modules in EAGER (the gufunc-bearing ones that the
project's librosa calls load) are imported under a per-user file lock: the first process compiles them (about 40 s
on 2 cores) while the others wait, then they load the finished cache. With a warm cache the lock costs one flock.
"""
import importlib
import os
import tempfile
from pathlib import Path

from filelock import FileLock

EAGER = ("librosa.util.utils", "librosa.core.audio", "librosa.core.pitch", "librosa.core.convert",
         "librosa.core.notation")
LOCK = Path(tempfile.gettempdir()) / f"ravdess_dist-librosa-numba-{os.getuid()}.lock"

with FileLock(LOCK):
    import librosa

    for _name in EAGER:
        importlib.import_module(_name)

__all__ = ["librosa", "EAGER", "LOCK"]
