"""`python -m preprocess`: archive -> data.csv tables -> analysis report -> shards; `python -m preprocess verify`."""
import argparse
import logging
import os
import sys
import time
from pathlib import Path

from preprocess.pack import pack_shards
from preprocess.scan import scan_archive
from preprocess.tables import write_tables
from shards.verify import verify_shards

MAX_LISTED = 20


def sample_rate_arg(value: str) -> int | None:
    """--sample-rate: a positive integer in Hz, or `native` (None) to keep the source rate."""
    if value == "native":
        return None
    if not value.isdigit() or int(value) <= 0:
        raise argparse.ArgumentTypeError(f"expected a rate in Hz or 'native', got {value!r}")
    return int(value)


def run(args: argparse.Namespace) -> int:
    """Scan, tabulate, analyse and pack; a missing or empty archive fails before anything is written."""
    if not args.archive.is_dir():
        print(f"error: archive {args.archive} does not exist (expected ARCHIVE/Actor_XX/*.wav; see README)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    scan = scan_archive(args.archive, args.jobs)
    total = len(scan.data) + len(scan.rejected)
    print(f"scanned {args.archive}: {total} audio files, {len(scan.data)} valid, {len(scan.rejected)} rejected "
          f"({time.perf_counter() - t0:.1f} s)")
    for row in scan.rejected.head(MAX_LISTED).itertuples():
        print(f"  rejected {row.path}: {row.reason}")
    if len(scan.rejected) > MAX_LISTED:
        print(f"  ... and {len(scan.rejected) - MAX_LISTED} more, see rejected.csv")
    for group in scan.duplicates:
        print(f"  byte-identical audio files (kept, same actor): {' = '.join(group)}")
    if scan.data.empty:
        print(f"error: no valid RAVDESS clip under {args.archive}; nothing written", file=sys.stderr)
        return 2
    write_tables(scan, args.out)
    print(f"wrote {args.out}/data.csv ({len(scan.data)} rows), data_normal.csv, data_strong.csv, rejected.csv")
    if not args.no_analysis:
        from preprocess.analysis import write_analysis  # matplotlib and librosa load only when needed

        t1 = time.perf_counter()
        report = write_analysis(scan.data, args.out / "analysis", args.jobs)
        print(f"wrote {report} ({time.perf_counter() - t1:.1f} s)")
    t2 = time.perf_counter()
    manifest, packed = pack_shards(scan.data, args.out / "shards", args.sample_rate, args.jobs)
    print(f"shards: {len(manifest.shards)} in {args.out / 'shards'} ({packed} packed, "
          f"{len(manifest.shards) - packed} unchanged), {sum(s.samples for s in manifest.shards)} samples at "
          f"{manifest.sample_rate} Hz ({time.perf_counter() - t2:.1f} s)")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


def verify(args: argparse.Namespace) -> int:
    """Check every shard against the manifest and name each problem; exit 1 if any."""
    try:
        manifest, problems = verify_shards(args.shards)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"  {problem}")
    samples = sum(s.samples for s in manifest.shards)
    print(f"verify {args.shards}: {len(manifest.shards)} shards, {samples} samples: "
          + ("OK" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


def parser() -> argparse.ArgumentParser:
    """The command line: the default `run` and `verify`."""
    jobs = os.cpu_count() or 1
    ap = argparse.ArgumentParser(prog="python -m preprocess", description=__doc__)
    sub = ap.add_subparsers(dest="command")
    run_ap = sub.add_parser("run", help="scan, tabulate, analyse and pack (the default)")
    run_ap.add_argument("--archive", type=Path, default=Path("working_directory/archive"),
                        help="folder with Actor_XX/*.wav|*.flac (default: %(default)s)")
    run_ap.add_argument("--out", type=Path, default=Path("working_directory"),
                        help="output root for data*.csv, analysis/, shards/ (default: %(default)s)")
    run_ap.add_argument("--sample-rate", type=sample_rate_arg, default=16000,
                        help="shard sample rate in Hz, or 'native' (default: 16000)")
    run_ap.add_argument("--jobs", type=int, default=jobs, help="worker processes (default: %(default)s)")
    run_ap.add_argument("--no-analysis", action="store_true", help="skip the descriptive-analysis report")
    run_ap.set_defaults(func=run)
    ver = sub.add_parser("verify", help="check the shards against their manifest")
    ver.add_argument("--shards", type=Path, default=Path("working_directory/shards"),
                     help="shard root with manifest.json (default: %(default)s)")
    ver.set_defaults(func=verify)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Parse the command line (no sub-command means `run`) and dispatch."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("run", "verify", "-h", "--help"):
        argv = ["run", *argv]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
