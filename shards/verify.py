"""Check every shard against the manifest: size, sha256, sample count, and that each sample decodes."""
import hashlib
import io
import json
import tarfile
from pathlib import Path

from shards.audio import read_mono
from shards.labels import EMOTIONS
from shards.manifest import Manifest, ShardEntry


def check_sample(name: str, parts: dict[str, bytes], sample_rate: int) -> list[str]:
    """Problems with one sample's wav/cls/json members (empty when it is sound)."""
    missing = {"wav", "cls", "json"} - parts.keys()
    if missing:
        return [f"{name}: missing {sorted(missing)}"]
    problems = []
    try:
        audio, sr = read_mono(parts["wav"])
        if sr != sample_rate or len(audio) == 0:
            problems.append(f"{name}.wav: {len(audio)} frames at {sr} Hz, the manifest says {sample_rate} Hz")
    except Exception as err:  # any decode failure is a finding, not a crash
        problems.append(f"{name}.wav: does not decode ({err})")
    if not parts["cls"].decode().strip().isdigit() or int(parts["cls"]) >= len(EMOTIONS):
        problems.append(f"{name}.cls: {parts['cls']!r} is not a class index")
    try:
        json.loads(parts["json"])
    except ValueError as err:
        problems.append(f"{name}.json: not JSON ({err})")
    return problems


def check_shard(root: Path, entry: ShardEntry, sample_rate: int) -> list[str]:
    """Problems with one shard (empty when it matches the manifest and every sample decodes)."""
    path = root / entry.path
    if not path.is_file():
        return [f"{entry.path}: missing"]
    raw = path.read_bytes()
    if len(raw) != entry.bytes or hashlib.sha256(raw).hexdigest() != entry.sha256:
        return [f"{entry.path}: size or sha256 differs from the manifest (corrupted or replaced)"]
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for member in tar.getmembers():
            key, _, ext = member.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    problems = [p for key, parts in samples.items() for p in check_sample(f"{entry.path}:{key}", parts, sample_rate)]
    if list(samples) != entry.keys or len(samples) != entry.samples:
        problems.append(f"{entry.path}: {len(samples)} samples, the manifest lists {entry.samples}")
    if not (root / entry.index_path).is_file():
        problems.append(f"{entry.index_path}: DALI index missing")
    return problems


def verify_shards(root: Path) -> tuple[Manifest, list[str]]:
    """Check every shard of ROOT against its manifest; return the manifest and the problems found."""
    manifest = Manifest.load(root)
    return manifest, [p for entry in manifest.shards for p in check_shard(root, entry, manifest.sample_rate)]
