"""scripts/device/: shardpack.py (shards packed with FLAC members are smaller and come back byte for byte) and the
shell scripts (they parse)."""
import importlib.util
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.test_loaders import shards  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("shardpack", ROOT / "scripts/device/shardpack.py")
shardpack = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shardpack)


def files(root: Path) -> dict:
    """Relative path -> bytes of every file under ROOT."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_pack_then_restore_gives_the_same_bytes(shards, tmp_path):  # noqa: F811
    """The restored tree equals the original file for file (tars, manifest, index files); the packed tars are smaller."""
    shardpack.pack(shards, tmp_path / "packed")
    shardpack.restore(tmp_path / "packed", tmp_path / "restored")
    assert files(tmp_path / "restored") == files(shards)
    tars = [p.relative_to(shards) for p in shards.rglob("*.tar")]
    assert tars and sum((tmp_path / "packed" / t).stat().st_size for t in tars) < 0.6 * sum(
        (shards / t).stat().st_size for t in tars)


@pytest.mark.parametrize("damage", ["other tar", "other audio"])
def test_a_changed_packed_tar_is_an_error_naming_it(shards, tmp_path, damage):  # noqa: F811
    """A packed tar that changed does not restore silently: another tar's members, or other audio under the same names
    (the sha256 check), are an error that names the tar."""
    shardpack.pack(shards, tmp_path / "packed")
    index = json.loads((tmp_path / "packed/index.json").read_text())
    victim, other = sorted((tmp_path / "packed").rglob("*.tar"))[:2]
    if damage == "other tar":
        victim.write_bytes(other.read_bytes())  # another actor's clips under this tar's name
    else:
        with tarfile.open(victim) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar]
        with tarfile.open(victim, "w", format=tarfile.USTAR_FORMAT) as tar:
            for member, data in members:
                if member.name.endswith(".wav"):
                    wav = shardpack.recode(data, "WAV")
                    data = shardpack.recode(wav[:-1] + bytes([wav[-1] ^ 1]), "FLAC")  # the last sample changed
                    member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
    assert str(victim.relative_to(tmp_path / "packed")) in index
    with pytest.raises(SystemExit, match=victim.name):
        shardpack.restore(tmp_path / "packed", tmp_path / "restored")


@pytest.mark.parametrize("script", sorted((ROOT / "scripts/device").glob("*.sh")), ids=lambda p: p.name)
def test_device_scripts_parse(script):
    """The device scripts run only on a lent GPU machine, with no second try: bash must at least parse them here."""
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
