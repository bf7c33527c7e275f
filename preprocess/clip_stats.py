"""Per-clip loudness and pitch statistics for the analysis report, computed in parallel and cached by sha256."""
import logging
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from preprocess.tables import write_csv
from shards.audio import read_mono
from shards.librosa_import import librosa

log = logging.getLogger(__name__)
amplitude_to_db, yin, rms = librosa.amplitude_to_db, librosa.yin, librosa.feature.rms  # forked workers inherit them

ANALYSIS_RATE = 16000  # Hz: every clip is analysed at the shards' default rate
FRAME, HOP = 1024, 512  # samples at ANALYSIS_RATE: 64 ms frames, 32 ms hop (16 ms doubles the cost, same medians)
FMIN, FMAX = 65.0, 500.0  # Hz: the range of speaking voices
VOICED_RANGE_DB = 30.0  # a frame counts as voiced when its RMS is within this many dB of the clip's loudest frame
STATS_VERSION = 1  # bump when the computation changes, so cached rows are recomputed
STATS = ["rms_dbfs", "peak_dbfs", "f0_median_hz", "voiced_fraction"]
COLUMNS = ["key", "sha256", *STATS, "stats_version"]


def audio_stats(y: np.ndarray, sr: int) -> dict[str, float]:
    """RMS and peak level in dBFS (full-scale sine: -3.01 dB), median YIN F0 of the voiced frames, voiced fraction."""
    rms_db = amplitude_to_db(np.sqrt(np.mean(np.square(y))), ref=1.0, top_db=None)
    peak_db = amplitude_to_db(np.max(np.abs(y)), ref=1.0, top_db=None)
    frame_db = amplitude_to_db(rms(y=y, frame_length=FRAME, hop_length=HOP)[0], top_db=None)
    voiced = frame_db >= frame_db.max() - VOICED_RANGE_DB
    f0 = yin(y, fmin=FMIN, fmax=FMAX, sr=sr, frame_length=FRAME, hop_length=HOP)
    silent = not np.any(y)
    return {"rms_dbfs": float(rms_db), "peak_dbfs": float(peak_db),
            "f0_median_hz": np.nan if silent else float(np.median(f0[voiced])),
            "voiced_fraction": 0.0 if silent else float(voiced.mean())}


def file_stats(path: str) -> tuple[dict[str, float], str | None]:
    """audio_stats of one file for a worker process; NaN stats and the error text when it cannot be decoded."""
    try:
        return audio_stats(*read_mono(path, ANALYSIS_RATE)), None
    except (OSError, RuntimeError, ValueError) as err:  # soundfile.LibsndfileError is a RuntimeError
        return dict.fromkeys(STATS, np.nan), f"{type(err).__name__}: {err}"


def load_cache(path: Path) -> pd.DataFrame:
    """Previously computed rows, indexed by sha256: only complete rows of the current STATS_VERSION are kept."""
    if not path.is_file():
        return pd.DataFrame(columns=STATS, index=pd.Index([], name="sha256"))
    old = pd.read_csv(path).reindex(columns=COLUMNS)
    old = old[(old["stats_version"] == STATS_VERSION) & old["rms_dbfs"].notna()]
    return old.drop_duplicates("sha256").set_index("sha256")[STATS]


def compute_clip_stats(data: pd.DataFrame, cache_path: Path, jobs: int = 1) -> pd.DataFrame:
    """COLUMNS for every clip of DATA: rows cached under the same sha256 are reused, the rest computed in parallel."""
    cache = load_cache(cache_path)
    todo = data[~data["sha256"].isin(cache.index)].drop_duplicates("sha256")
    if len(todo):
        with ProcessPoolExecutor(max(1, jobs)) as pool:
            chunk = max(1, len(todo) // (4 * max(1, jobs)))
            results = list(tqdm(pool.map(file_stats, todo["path"], chunksize=chunk), total=len(todo),
                                desc="clip statistics", unit="clip"))
        for path, (_, error) in zip(todo["path"], results):
            if error:
                log.warning("cannot analyse %s (%s): its loudness and pitch are left empty", path, error)
        fresh = pd.DataFrame([stats for stats, _ in results], index=pd.Index(todo["sha256"], name="sha256"))
        cache = pd.concat([cache, fresh])
    stats = data[["key", "sha256"]].join(cache, on="sha256").assign(stats_version=STATS_VERSION)[COLUMNS]
    write_csv(stats, cache_path)
    return stats.reset_index(drop=True)
