"""Write the label tables (data.csv and its per-intensity subsets) and the rejection report, atomically."""
from pathlib import Path

import pandas as pd

from preprocess.scan import Scan
from shards.atomic import atomic_path


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    """Write a CSV under a temporary name, then rename, so a reader never sees half a table."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path


def write_tables(scan: Scan, out: Path) -> list[Path]:
    """data.csv, data_normal.csv, data_strong.csv, rejected.csv and duplicates.csv under OUT."""
    out.mkdir(parents=True, exist_ok=True)
    dups = pd.DataFrame({"group": i, "key": key} for i, group in enumerate(scan.duplicates) for key in group)
    written = [write_csv(scan.data, out / "data.csv")]
    written += [write_csv(scan.data[scan.data["intensity"] == i], out / f"data_{i}.csv") for i in ("normal", "strong")]
    written.append(write_csv(scan.rejected, out / "rejected.csv"))
    written.append(write_csv(dups.reindex(columns=["group", "key"]), out / "duplicates.csv"))
    return written
