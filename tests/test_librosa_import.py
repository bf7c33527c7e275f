"""librosa's numba gufuncs are built under shards.librosa_import's file lock, on every librosa path the project uses."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.corpus import SAMPLE

ROOT = Path(__file__).resolve().parent.parent
CLIP = SAMPLE / "Actor_01" / "03-01-05-02-01-01-01.flac"

# Wraps numba's gufunc/ufunc decorators before librosa is imported, and records for each librosa function they build
# (that is, compile or load from the on-disk cache) whether this process then holds the lock. Then runs the librosa
# code of the analysis report, the clip statistics and the notebook benchmark, so a path that imports another
# gufunc-bearing librosa module outside the lock is caught too.
PROBE = """
import json, sys
from pathlib import Path
import numba
from filelock import FileLock, Timeout

built = []

def lock_held():
    lock = FileLock(sys.modules["shards.librosa_import"].LOCK)  # a second handle: flock refuses it while one is held
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False

def spy(decorator):
    def with_args(*args, **kwargs):
        build = decorator(*args, **kwargs)
        def wrap(func):
            if func.__module__.startswith("librosa"):
                built.append([func.__module__ + "." + func.__name__, "shards.librosa_import" in sys.modules and lock_held()])
            return build(func)
        return wrap
    return with_args

numba.guvectorize, numba.vectorize = spy(numba.guvectorize), spy(numba.vectorize)

import numpy as np
import torch
from preprocess.analysis import plot_logmel, plot_waveforms
from preprocess.clip_stats import ANALYSIS_RATE, audio_stats
from ravdess_dist.bench import notebook_pass
from shards.audio import read_mono

out, clip = Path(sys.argv[1]), sys.argv[2]
audio, _ = read_mono(clip, ANALYSIS_RATE)
audio_stats(audio, ANALYSIS_RATE)
plot_waveforms([("angry", "clip", audio)], out / "waveforms.png")
plot_logmel([("angry", "clip", audio)], out / "logmel.png")
notebook_pass([Path(clip)], torch.device("cpu"))
print(json.dumps(built))
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, bool]:
    """librosa function -> whether the lock was held when numba built it, from one run of PROBE."""
    out = tmp_path_factory.mktemp("librosa_import")
    proc = subprocess.run([sys.executable, "-c", PROBE, str(out), str(CLIP)], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "logmel.png").stat().st_size > 0  # the probe really ran the report's librosa code
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_yin_gufunc_is_built_under_the_lock(built):
    """The gufunc whose corrupted cache killed the analysis workers in CI (yin's parabolic interpolation)."""
    assert built.get("librosa.core.pitch._pi_wrapper") is True, built


def test_every_librosa_gufunc_the_project_uses_is_built_under_the_lock(built):
    """No librosa gufunc is compiled or loaded outside the lock, on any of the project's librosa paths."""
    assert len(built) >= 5, built  # utils' localmax/localmin/peak_pick/cabs2/phasor_angles at least
    assert [name for name, held in built.items() if not held] == []
