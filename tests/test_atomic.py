"""The one write-then-rename helper: the new content replaces the old at once; a failed write leaves the old file."""
import json

import pytest

from shards.atomic import atomic_path, write_json, write_text


def test_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    """write_text/write_json put the whole new content in place; no .tmp file stays behind."""
    path = write_text(tmp_path / "a.txt", "old")
    write_json(path, {"new": 1})
    assert json.loads(path.read_text()) == {"new": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    """An exception inside the block: the old content stays and the half-written temporary is removed."""
    path = write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
