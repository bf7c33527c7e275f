"""Shards, smaller for a trip to a lent GPU machine: every WAV member of every tar re-encoded as FLAC (about 27 % of
the bytes for RAVDESS at 16 kHz), and back, byte for byte.

    python scripts/device/shardpack.py pack working_directory/shards .devpay/shards
    python scripts/device/shardpack.py restore .devpay/shards working_directory/shards   (on the GPU machine)

`pack` keeps each tar's member headers and sha256 in DST/index.json; `restore` rebuilds every tar from them, checks the
sha256 (so the DALI index files next to the tars stay valid) and copies the other files (manifest.json, *.idx) as they
are. A developer tool for the device checks (scripts/device/README.md); the project never reads packed shards.
"""
import hashlib
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

import soundfile as sf

FIELDS = ("name", "size", "mode", "mtime", "uid", "gid", "uname", "gname", "type")


def recode(data: bytes, fmt: str) -> bytes:
    """PCM16 audio bytes (WAV or FLAC) re-encoded as FMT, samples unchanged."""
    audio, rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    out = io.BytesIO()
    sf.write(out, audio, rate, format=fmt, subtype="PCM_16")
    return out.getvalue()


def header(member: tarfile.TarInfo) -> dict:
    """The member's header fields, JSON-ready."""
    return {f: getattr(member, f).decode() if isinstance(getattr(member, f), bytes) else getattr(member, f)
            for f in FIELDS}


def tars(src: Path, dst: Path):
    """(tar, its path relative to SRC, its place in DST) for every tar under SRC; the other files (but index.json) are
    copied to DST as they are."""
    for path in sorted(p for p in src.rglob("*") if p.is_file() and p.name != "index.json"):
        rel = path.relative_to(src)
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".tar":
            yield path, str(rel), dst / rel
        else:
            shutil.copy2(path, dst / rel)


def pack(src: Path, dst: Path) -> None:
    """SRC's files into DST, each tar's WAV members as FLAC; the original headers and sha256 in DST/index.json."""
    index = {}
    for path, rel, out in tars(src, dst):
        with tarfile.open(path) as tar, tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as packed:
            members = []
            for member in tar:
                data = tar.extractfile(member).read()
                members.append(header(member))
                if member.name.endswith(".wav"):
                    data = recode(data, "FLAC")
                info = tarfile.TarInfo(member.name)
                info.size = len(data)
                packed.addfile(info, io.BytesIO(data))
            index[rel] = {"members": members, "format": tar.format,
                               "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    (dst / "index.json").write_text(json.dumps(index))


def restore(src: Path, dst: Path) -> None:
    """The original shards from a packed folder SRC into DST; an error names a tar that does not come back exact."""
    index = json.loads((src / "index.json").read_text())
    for path, rel, target in tars(src, dst):
        entry, buffer = index[rel], io.BytesIO()
        with tarfile.open(path) as tar:
            members = [(m.name, tar.extractfile(m).read()) for m in tar]
        if [name for name, _ in members] != [meta["name"] for meta in entry["members"]]:
            raise SystemExit(f"{path}: its members are not the ones index.json lists")
        with tarfile.open(fileobj=buffer, mode="w", format=entry["format"]) as out:
            for meta, (_, data) in zip(entry["members"], members):
                if meta["name"].endswith(".wav"):
                    try:
                        data = recode(data, "WAV")
                    except Exception as err:
                        raise SystemExit(f"{path}: member {meta['name']} does not decode ({err})") from err
                info = tarfile.TarInfo(meta["name"])
                for field in FIELDS[1:]:
                    setattr(info, field, meta[field].encode() if field == "type" else meta[field])
                out.addfile(info, io.BytesIO(data))
        if hashlib.sha256(buffer.getvalue()).hexdigest() != entry["sha256"]:
            raise SystemExit(f"{path}: the restored tar differs from the original")
        target.write_bytes(buffer.getvalue())
    print(f"restored {len(index)} tars into {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("pack", "restore"):
        raise SystemExit(__doc__)
    {"pack": pack, "restore": restore}[sys.argv[1]](Path(sys.argv[2]), Path(sys.argv[3]))
