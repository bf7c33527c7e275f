"""Scan a RAVDESS archive: validate every file's name, folder and audio, and tabulate the valid clips."""
import hashlib
import io
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import soundfile as sf

from preprocess.names import InvalidName, parse_name

AUDIO_SUFFIXES = (".wav", ".flac")
ACTOR_FOLDER = re.compile(r"Actor_(\d{2})")
TRUNCATED = re.compile(r"data : (\d+) \(should be (\d+)\)")
COLUMNS = ["path", "key", "actor", "gender", "emotion", "emotion_code", "intensity", "statement", "repetition",
           "sample_rate", "channels", "frames", "duration", "sha256"]


class Rejected(ValueError):
    """A file that cannot enter the corpus, with the reason."""


@dataclass
class Scan:
    """The outcome of a scan: valid clips, rejected files with reasons, byte-identical groups."""

    data: pd.DataFrame
    rejected: pd.DataFrame
    duplicates: list[list[str]]


def find_audio(archive: Path) -> list[Path]:
    """Every .wav/.flac file below ARCHIVE, in a stable order."""
    return sorted(p for p in archive.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def probe_audio(raw: bytes) -> sf._SoundFileInfo:
    """Header and full decode of an audio file's bytes; Rejected says why it is unusable."""
    if not raw:
        raise Rejected("empty file (0 bytes)")
    try:
        info = sf.info(io.BytesIO(raw))
        decoded = sf.read(io.BytesIO(raw), dtype="int16", always_2d=True)[0]
    except sf.LibsndfileError as err:
        raise Rejected(f"not readable audio: {err.error_string}") from None
    truncated = TRUNCATED.search(info.extra_info)
    if truncated:
        raise Rejected(f"truncated: header declares {truncated[1]} bytes of audio, the file holds {truncated[2]}")
    if len(decoded) == 0:
        raise Rejected("no audio frames")
    return info


def inspect_file(path: Path) -> dict:
    """One data.csv row for PATH, or Rejected with a specific reason."""
    try:
        name = parse_name(path.stem)
    except InvalidName as err:
        raise Rejected(f"invalid name: {err}") from None
    folder = ACTOR_FOLDER.fullmatch(path.parent.name)
    if folder is None:
        raise Rejected(f"not inside an Actor_XX folder (found {path.parent.name!r})")
    if int(folder[1]) != name.actor:
        raise Rejected(f"actor {name.actor:02d} in the name but the folder is {path.parent.name}")
    raw = path.read_bytes()
    info = probe_audio(raw)
    return {"path": str(path), **asdict(name), "sample_rate": info.samplerate, "channels": info.channels,
            "frames": info.frames, "duration": info.frames / info.samplerate,
            "sha256": hashlib.sha256(raw).hexdigest()}


def _inspect_or_reason(path: Path) -> tuple[dict | None, str | None]:
    """inspect_file for a worker process: the row, or the reason it was rejected."""
    try:
        return inspect_file(path), None
    except Rejected as err:
        return None, str(err)
    except OSError as err:
        return None, f"cannot read: {err.strerror}"


def scan_archive(archive: Path, jobs: int = 1) -> Scan:
    """Inspect every audio file of ARCHIVE in parallel; a bad file is rejected, never fatal."""
    archive = archive.resolve()
    files = find_audio(archive)
    with ProcessPoolExecutor(jobs) as pool:
        results = list(pool.map(_inspect_or_reason, files, chunksize=32))
    rows, rejected, seen = [], [], {}
    for path, (row, reason) in zip(files, results):
        if row is not None and row["key"] in seen:
            row, reason = None, f"duplicate key: {row['key']} is also {seen[row['key']]}"
        if row is None:
            rejected.append({"path": str(path), "reason": reason})
            continue
        seen[row["key"]] = row["path"]
        rows.append(row)
    data = pd.DataFrame(rows, columns=COLUMNS).sort_values(["actor", "key"], ignore_index=True)
    groups = data[data.duplicated("sha256", keep=False)].groupby("sha256")["key"]
    return Scan(data, pd.DataFrame(rejected, columns=["path", "reason"]), [sorted(g) for _, g in groups])
