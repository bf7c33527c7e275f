"""Pack the valid clips into WebDataset shards, one per intensity and actor, in parallel; unchanged shards are skipped."""
import hashlib
import json
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from shards.audio import read_mono
from shards.manifest import FORMAT_VERSION, Manifest, ShardEntry
from shards.writer import make_sample, write_shard

META = ["actor", "gender", "emotion", "intensity", "statement", "repetition"]


def shard_path(intensity: str, actor: int) -> str:
    """Where the shard of one actor at one intensity lives, relative to the shard root."""
    return f"{intensity}/actor_{actor:02d}-000000.tar"


def packing_rate(data: pd.DataFrame, sample_rate: int | None) -> int:
    """The shards' sample rate: the one asked for, or the sources' own when it is the same for all (`native`)."""
    if sample_rate is not None:
        return sample_rate
    rates = sorted(data["sample_rate"].unique())
    if len(rates) != 1:
        raise ValueError(f"--sample-rate native needs one source rate, the archive has {rates}: choose a rate")
    return int(rates[0])


def fingerprint(rows: pd.DataFrame, sample_rate: int) -> str:
    """Digest of everything a shard's bytes depend on, so a re-run can tell unchanged work."""
    inputs = [FORMAT_VERSION, sample_rate, sorted(zip(rows["key"], rows["sha256"], rows["path"]))]
    return hashlib.sha256(json.dumps(inputs).encode()).hexdigest()


def pack_shard(root: Path, rel: str, rows: pd.DataFrame, sample_rate: int, digest: str) -> ShardEntry:
    """Decode, downmix and resample each clip and write the shard; runs in a worker process."""
    def samples():
        for row in rows.itertuples(index=False):
            audio, _ = read_mono(row.path, sample_rate)
            meta = {k: getattr(row, k) for k in META} | {"source": row.path, "source_sha256": row.sha256}
            yield make_sample(row.key, audio, sample_rate, meta)

    size, sha = write_shard(root / rel, samples())
    first = rows.iloc[0]
    return ShardEntry(path=rel, intensity=first["intensity"], actor=int(first["actor"]), samples=len(rows),
                      bytes=size, sha256=sha, keys=list(rows["key"]),
                      emotions={k: int(v) for k, v in rows["emotion"].value_counts().sort_index().items()},
                      fingerprint=digest)


def unchanged(entry: ShardEntry | None, root: Path, digest: str) -> bool:
    """True when an existing shard was built from the same inputs and is still on disk at its recorded size."""
    tar = root / entry.path if entry else None
    return bool(entry and entry.fingerprint == digest and tar.is_file() and tar.stat().st_size == entry.bytes)


def pack_shards(data: pd.DataFrame, root: Path, sample_rate: int | None, jobs: int = 1) -> tuple[Manifest, int]:
    """Write every shard that changed, then the manifest (last, atomically); return it and the number packed."""
    rate = packing_rate(data, sample_rate)
    root.mkdir(parents=True, exist_ok=True)
    old = {s.path: s for s in Manifest.load(root).shards} if (root / "manifest.json").is_file() else {}
    kept, todo = [], []
    for (intensity, actor), rows in data.groupby(["intensity", "actor"]):
        rel, digest = shard_path(intensity, actor), fingerprint(rows, rate)
        if unchanged(old.get(rel), root, digest):
            kept.append(old[rel])
        else:
            todo.append((rel, rows.reset_index(drop=True), digest))
    if todo and old:  # from here on the old entries of shards being rewritten must not be trusted
        Manifest(rate, kept).save(root)
    with ProcessPoolExecutor(jobs) as pool:
        futures = [pool.submit(pack_shard, root, rel, rows, rate, digest) for rel, rows, digest in todo]
        done = [f.result() for f in tqdm(as_completed(futures), total=len(futures), desc="packing shards", unit="shard")]
    manifest = Manifest(rate, sorted(kept + done, key=lambda s: s.path))
    manifest.save(root)
    remove_stale(root, manifest)
    return manifest, len(done)


def remove_stale(root: Path, manifest: Manifest) -> None:
    """Delete shard, index and temporary files the manifest does not list (an actor removed, a killed run)."""
    listed = {p for s in manifest.shards for p in (s.path, s.index_path)}
    for f in root.glob("*/actor_*"):
        if f.relative_to(root).as_posix() not in listed:
            f.unlink()
