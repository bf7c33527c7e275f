"""Benchmarks. `python -m ravdess_dist.bench features`: clips/s from storage to features on the device, for the original
notebook's recipe (librosa per WAV file), the torch backend and the DALI backend, in one run on the same clips."""
import argparse
import gc
import json
import os
import platform
import time
from pathlib import Path

import torch

from ravdess_dist.augment import AugmentConfig
from ravdess_dist.features import FeatureConfig
from ravdess_dist.data.contract import BACKENDS
from ravdess_dist.data.factory import make_loader
from shards.labels import SELECTIONS
from shards.manifest import Manifest

NOTEBOOK = {"sr": 48000, "offset": 0.5, "duration": 3.0, "n_mfcc": 40, "n_fft": 1024, "win_length": 512,
            "window": "hamming"}


def notebook_pass(paths: list[Path], device: torch.device) -> int:
    """The original notebook's features: librosa.load at 48 kHz (3 s from 0.5 s) and 40 MFCCs, clip by clip."""
    import librosa

    for path in paths:
        y, sr = librosa.load(path, sr=NOTEBOOK["sr"], offset=NOTEBOOK["offset"], duration=NOTEBOOK["duration"])
        mfcc = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=NOTEBOOK["n_mfcc"], n_fft=NOTEBOOK["n_fft"],
                                    win_length=NOTEBOOK["win_length"], window=NOTEBOOK["window"])
        torch.from_numpy(mfcc).to(device)
    return len(paths)


def loader_pass(loader) -> int:
    """One pass of a backend's loader; the number of real clips it delivered to the device.

    The device backend keeps evaluation features after its first pass: dropped here, so each pass computes them from
    the resident audio (its one-off decode is the warm-up).
    """
    if getattr(loader, "eval_cache", None) is not None:
        loader.eval_cache = None
    clips = sum(int(batch.valid.sum()) for batch in loader)
    if loader.device.type == "cuda":
        torch.cuda.synchronize(loader.device)
    return clips


def timed(run, repeats: int) -> dict:
    """A warm-up pass (worker start-up, caches, JIT), then REPEATS timed passes; clips/s of the fastest.

    The fastest pass, as timeit reports: on a shared machine the slower ones measure other processes' interference.
    """
    run()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        clips = run()
        seconds.append(time.perf_counter() - start)
    return {"clips_per_s": round(clips / min(seconds), 1), "seconds": round(min(seconds), 4), "clips": clips,
            "seconds_all": [round(s, 4) for s in seconds]}


def archive_paths(archive: Path, keys: list[str]) -> list[Path]:
    """The notebook's input files for these keys: ARCHIVE/Actor_XX/KEY.wav, all of which must exist."""
    paths = [archive / f"Actor_{key.rsplit('-', 1)[1]}" / f"{key}.wav" for key in keys]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} clip(s) missing from the archive, e.g. {missing[0]}")
    return paths


def device_info(device: torch.device) -> dict:
    """What the figures were measured on."""
    info = {"device": str(device), "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import nvidia.dali

        info["dali"] = nvidia.dali.__version__
    except ImportError:
        info["dali"] = None
    return info


def features(args: argparse.Namespace) -> dict:
    """Time every method over all clips of the selection; print a table; return the results."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        # the workers (or DALI's threads) do the work: main-process intra-op threads only spin against them
        torch.set_num_threads(1)
    manifest = Manifest.load(args.shards)
    entries, classes = manifest.select(args.intensity), manifest.class_names(args.intensity)
    results = {}
    if args.archive is not None:
        paths = archive_paths(args.archive, [k for e in entries for k in e.keys])
        results["notebook"] = timed(lambda: notebook_pass(paths, device), args.repeats)
    modes = [(False, "")] + ([(True, " (train)")] if args.train else [])
    for backend in BACKENDS:
        if device.type == "cpu":  # the device backend computes in the main process: it gets the cores
            torch.set_num_threads(os.cpu_count() if backend == "device" else 1)
        for train, suffix in modes:
            try:
                loader = make_loader(backend, root=args.shards, entries=entries, class_names=classes,
                                     batch_size=args.batch_size, train=train, features=FeatureConfig(),
                                     augment=AugmentConfig() if train else None, device=device,
                                     num_workers=args.num_workers)
            except ImportError as err:
                results[backend + suffix] = {"error": str(err)}
                continue
            results[backend + suffix] = timed(lambda: loader_pass(loader), args.repeats)
            del loader  # its persistent workers, prefetching for a next pass, must not compete with the next method
            gc.collect()
    base = results.get("notebook", {}).get("clips_per_s")
    print(f"{'method':16s} {'clips':>6s} {'seconds':>8s} {'clips/s':>8s}" + ("  vs notebook" if base else ""))
    for name, r in results.items():
        if "error" in r:
            print(f"{name:16s} skipped: {r['error']}")
            continue
        ratio = f"  {r['clips_per_s'] / base:10.1f}x" if base else ""
        print(f"{name:16s} {r['clips']:6d} {r['seconds']:8.2f} {r['clips_per_s']:8.0f}{ratio}")
    results["info"] = device_info(device) | {"batch_size": args.batch_size, "num_workers": args.num_workers,
                                             "intensity": args.intensity, "shards": str(args.shards),
                                             "repeats": args.repeats}
    print(json.dumps(results["info"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return results


def parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per benchmark."""
    ap = argparse.ArgumentParser(prog="python -m ravdess_dist.bench", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    feat = sub.add_parser("features", help="clips/s from storage to features on the device, per method")
    feat.add_argument("--shards", type=Path, default=Path("working_directory/shards"),
                      help="shard root (with manifest.json)")
    feat.add_argument("--intensity", choices=SELECTIONS, default="all")
    feat.add_argument("--batch-size", type=int, default=64)
    feat.add_argument("--repeats", type=int, default=5, help="timed passes per method after the warm-up; the fastest counts")
    feat.add_argument("--num-workers", type=int, default=2, help="DataLoader workers / DALI threads")
    feat.add_argument("--archive", type=Path, default=Path("working_directory/archive"),
                      help="WAV archive the notebook's recipe reads (ARCHIVE/Actor_XX/*.wav)")
    feat.add_argument("--no-notebook", dest="archive", action="store_const", const=None,
                      help="skip the notebook's recipe")
    feat.add_argument("--train", action="store_true", help="also time the backends in training mode (augmentation)")
    feat.add_argument("--device", help="default: cuda if available, else cpu")
    feat.add_argument("--json", type=Path, help="write the results here")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmark."""
    args = parser().parse_args(argv)
    features(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
