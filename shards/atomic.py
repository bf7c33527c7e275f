"""Write to a temporary name, then rename: readers see the old file or the whole new one, never half of one.

Imported by every stage (shards imports neither preprocess nor ravdess_dist), so there is one copy of the pattern.
"""
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling of PATH to write to; renamed over PATH when the block ends, removed if it raises."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> Path:
    """TEXT to PATH atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: Path, obj) -> Path:
    """OBJ as indented JSON to PATH atomically."""
    return write_text(path, json.dumps(obj, indent=1))
