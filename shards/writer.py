"""Write one WebDataset tar shard (and its DALI index) atomically: temporary name, then rename."""
import hashlib
import logging
from pathlib import Path

import numpy as np
import webdataset as wds

from shards.atomic import atomic_path
from shards.audio import encode_wav
from shards.labels import EMOTIONS

log = logging.getLogger(__name__)


def make_sample(key: str, audio: np.ndarray, sample_rate: int, meta: dict) -> dict:
    """One shard sample: KEY.wav (mono PCM16), KEY.cls (index into EMOTIONS), KEY.json (metadata)."""
    return {
        "__key__": key,
        "wav": encode_wav(audio, sample_rate),
        "cls": str(EMOTIONS.index(meta["emotion"])),
        "json": {"key": key, **meta, "sample_rate": sample_rate, "duration": round(len(audio) / sample_rate, 4)},
    }


def write_shard(path: Path, samples) -> tuple[int, str]:
    """Write SAMPLES to PATH (plus PATH.idx for DALI); return (bytes, sha256). Readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        # a fixed integer mtime: the same samples give the same bytes (and sha256), and no PAX header per member
        # (a float mtime adds one, which doubles the headers every reader parses)
        with wds.TarWriter(str(tmp), mtime=0) as sink:
            for sample in samples:
                sink.write(sample)
        write_index(tmp, path.with_suffix(".idx"))
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        size = tmp.stat().st_size
    return size, digest


def write_index(tar: Path, idx: Path) -> None:
    """Write DALI's index for TAR so its reader need not scan the archive (needs the `dali` extra)."""
    try:
        from wds2idx import IndexCreator  # installed with nvidia-dali
    except ImportError:
        log.warning("%s: no DALI index written (install the `dali` extra: pip install -e '.[dali]')", idx)
        return
    with atomic_path(idx) as tmp, IndexCreator(str(tar), str(tmp), verbose=False) as creator:
        creator.create_index()
