"""Benchmarks.

`python -m ravdess_dist.bench features`: clips/s from storage to features on the device, for the original notebook's
recipe (librosa per WAV file), the torch backend and the DALI backend, in one run on the same clips.

`python -m ravdess_dist.bench train`: training throughput per backend x model through the trainer's own code (a real
`Run` and its `train_epoch`): one warm-up epoch, then N timed ones; clips/s, epoch wall time, the share of step time
spent waiting for data (host clock; on a GPU also the GPU's own, `GPU wait`: ravdess_dist/data_wait.py), and peak memory
(GPU: torch.cuda.max_memory_allocated; CPU: peak RSS of this process and of the loader's worker processes), over the
timed epochs only. `--rounds R` measures every pair R times, model by model and the backends' order alternating, and
reports medians and each backend's clips/s ratio to the first one per round: on a shared machine the pairs' figures
drift together, their ratio much less. `--interleave` keeps one Run per backend alive and alternates their timed epochs
instead (cycles seconds apart, not rounds minutes apart).
"""
import argparse
import contextlib
import functools
import gc
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
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
    from shards.librosa_import import librosa

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


def feature_throughput(backend: str, shards: Path, entries, classes: list[str], device: torch.device, batch_size: int,
                       num_workers: int, repeats: int, train: bool = False) -> dict:
    """timed() passes of one backend's loader over ENTRIES (training mode: with augmentation); {"error": reason} when
    the backend cannot be built here (DALI missing). On the CPU it sets torch's thread count for the backend."""
    if device.type == "cpu":  # the device backend computes in the main process: it gets the cores
        torch.set_num_threads(os.cpu_count() if backend == "device" else 1)
    try:
        loader = make_loader(backend, root=shards, entries=entries, class_names=classes, batch_size=batch_size,
                             train=train, features=FeatureConfig(), augment=AugmentConfig() if train else None,
                             device=device, num_workers=num_workers)
    except ImportError as err:
        return {"error": str(err)}
    one_pass = functools.partial(loader_pass, loader)
    try:
        return timed(one_pass, repeats)
    finally:
        del loader, one_pass  # its persistent workers, prefetching for a next pass, must not compete with the next method
        gc.collect()


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
        for train, suffix in modes:
            results[backend + suffix] = feature_throughput(backend, args.shards, entries, classes, device,
                                                           args.batch_size, args.num_workers, args.repeats, train)
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


# Settings only the device backend implements (TrainConfig.validate refuses them elsewhere): switched off for every
# backend, so that the rows compare the same work (`--recipe` keeps them for the device backend).
PORTABLE = ("features.speech_top_db=null", "augment.speed=null", "eval_crops=1", "speaker_norm=false")


class Skipped(Exception):
    """A combination that cannot run here (DALI missing, settings a backend does not implement): a row, not a crash."""


def train_config(shards: Path, model: str, backend: str, intensity: str, epochs: int, workdir: Path,
                 batch_size: int | None = None, device: str | None = None, overrides=(), recipe: bool = False):
    """The TrainConfig a bench (or doctor) run uses: configs/MODEL.yaml through load_config, device-only settings off
    (unless RECIPE and the device backend), outputs inside WORKDIR, then OVERRIDES (KEY=VALUE) last, so they win.

    An invalid combination raises Skipped with load_config's one-line reason."""
    from ravdess_dist.config import load_config

    argv = ["--model", model, *([] if recipe and backend == "device" else PORTABLE), "--backend", backend,
            "--intensity", intensity, "--shards", str(shards), "--epochs", str(epochs),
            "--output-dir", str(workdir / "models"), "--logging-dir", str(workdir / "runs"),
            "--run-name", f"bench-{model}-{backend}-{intensity}"]
    if batch_size:
        argv += ["--batch-size", str(batch_size)]
    if device:
        argv += ["--device", device]
    try:
        return load_config(argv + list(overrides))
    except ValueError as err:
        raise Skipped(str(err)) from None


def _workers_uss_mb() -> float | None:
    """Memory unique to this process's descendants (DataLoader workers) now, in MiB; None if psutil cannot tell.

    USS, not RSS: forked workers share the parent's pages, which their RSS (and peak RSS) would count again."""
    try:
        import psutil

        return sum(c.memory_full_info().uss for c in psutil.Process().children(recursive=True)) / 2**20
    except Exception:  # noqa: BLE001 - memory figures are best effort
        return None


class PeakMemory:
    """Peak memory over a stretch of a run. GPU: torch.cuda.max_memory_allocated. CPU: peak RSS of this process
    (resource.getrusage; its counter reset at the start through /proc/self/clear_refs where Linux allows, else the
    peak since the process started), plus the memory unique to the loader's worker processes at the end."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS that getrusage reports
                self.reset = True
            except OSError:
                self.reset = False
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.result = {"peak_mb": round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1),
                           "memory": "cuda max_memory_allocated"}
        else:
            workers = _workers_uss_mb()
            self.result = {"peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # KiB
                           "workers_mb": None if workers is None else round(workers, 1),
                           "memory": "peak RSS" + ("" if self.reset else " since process start")
                                     + (" + workers' USS" if workers else "")}


def train_epoch_timed(run) -> dict:
    """One training epoch of RUN through its own train_epoch, then on to the next epoch as fit() does; wall time, clips
    (all processes'), loss and data-wait share."""
    start = time.perf_counter()
    stats = run.train_epoch()
    if run.accelerator.device.type == "cuda":
        torch.cuda.synchronize(run.accelerator.device)
    seconds = time.perf_counter() - start
    run.epoch, run.step_in_epoch, run.epoch_loss_sum = run.epoch + 1, 0, 0.0
    # every process's clips, as the trainer counts them (older trainers did not return the count)
    clips = stats.get("clips", len(run.train_loader) * run.cfg.batch_size * run.accelerator.num_processes)
    return {"seconds": seconds, "clips": clips, "loss": stats["loss"], "data_wait": stats["data_wait"],
            "data_wait_device": stats.get("data_wait_device")}


def release(run) -> None:
    """Drop a run's trackers, model, optimiser and loaders (worker processes, DALI pipelines) before the next one."""
    for tracker in run.accelerator.trackers:
        tracker.finish()
    run.accelerator.free_memory()
    for name in ("train_loader", "val_loader", "test_loader", "model", "optimizer"):
        setattr(run, name, None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def timed_epochs(epoch, epochs: int, min_seconds: float = 0.0) -> list[dict]:
    """Call EPOCH (one timed epoch: a dict with its `seconds`) at least EPOCHS times and until the timed epochs add
    up to MIN_SECONDS: a fast model's epoch lasts a few seconds, too short a window on a shared machine."""
    timed = []
    while len(timed) < epochs or sum(t["seconds"] for t in timed) < min_seconds:
        timed.append(epoch())
    return timed


def build_run(cfg):
    """The trainer's Run for CFG; Skipped when its backend cannot be built here (DALI missing)."""
    from ravdess_dist.trainer import Run

    try:
        return Run(cfg)
    except ImportError as err:
        raise Skipped(str(err)) from None


def weighted_share(shares: list[float | None], seconds: list[float]) -> float | None:
    """The mean of per-epoch SHARES weighted by their epochs' SECONDS; None if any is None (a CPU's GPU wait)."""
    if not shares or None in shares:
        return None
    return round(sum(s * t for s, t in zip(shares, seconds)) / sum(seconds), 4)


def training_row(run, timed: list[dict], memory: dict) -> dict:
    """The steady-state figures of RUN's TIMED epochs (train_epoch_timed's dicts) and the peak MEMORY over them."""
    spans = [t["seconds"] for t in timed]
    seconds, clips = sum(spans), sum(t["clips"] for t in timed)
    return {"status": "ok", "clips_per_s": round(clips / seconds, 1), "epoch_s": round(seconds / len(timed), 3),
            "epochs_timed": len(timed),
            "data_wait": weighted_share([t["data_wait"] for t in timed], spans),
            "data_wait_device": weighted_share([t.get("data_wait_device") for t in timed], spans),
            "loss": timed[-1]["loss"], "clips_per_epoch": timed[-1]["clips"],
            "steps_per_epoch": len(run.train_loader), "epochs_s": [round(s, 3) for s in spans],
            "precision": run.accelerator.mixed_precision, "device": str(run.accelerator.device), **memory}


def measure_training(cfg, epochs: int, warmup: int = 1, min_seconds: float = 0.0) -> dict:
    """Build the trainer's Run for CFG, train WARMUP epochs, then at least EPOCHS timed ones and at least MIN_SECONDS
    of them; the steady-state figures.

    Raises Skipped when the backend cannot be built here (DALI missing)."""
    run = build_run(cfg)
    try:
        for _ in range(warmup):
            train_epoch_timed(run)
        with PeakMemory(run.accelerator.device) as memory:
            timed = timed_epochs(lambda: train_epoch_timed(run), epochs, min_seconds)
        return training_row(run, timed, memory.result)
    finally:
        release(run)


def error_row(row: dict, err: Exception) -> dict:
    """ROW for a pair that could not be measured: skipped (it cannot run here) with the reason, or failed with the
    error; one broken combination must not hide the others."""
    if isinstance(err, Skipped):
        return row | {"status": "skipped", "reason": str(err)}
    return row | {"status": "failed", "reason": f"{type(err).__name__}: {err}"}


def pair_config(args: argparse.Namespace, backend: str, model: str, workdir: Path):
    """The TrainConfig of one backend x model as the command line asks (train_config with the bench's arguments)."""
    return train_config(args.shards, model, backend, args.intensity, args.epochs + 1, workdir, args.batch_size,
                        args.device, args.config, args.recipe)


def checked(row: dict) -> dict:
    """ROW, failed if its loss is not finite."""
    if row["status"] == "ok" and not math.isfinite(row["loss"]):
        row.update(status="failed", reason=f"loss is {row['loss']}")
    return row


def timed_stretch(run, backend: str, model: str, args: argparse.Namespace) -> dict:
    """One cycle of `--interleave` for RUN: --epochs timed epochs (at least --min-seconds); a row, failed on an error."""
    row = {"backend": backend, "model": model, "batch_size": run.cfg.batch_size}
    try:
        with PeakMemory(run.accelerator.device) as memory:
            timed = timed_epochs(lambda: train_epoch_timed(run), args.epochs, args.min_seconds)
        return checked(row | training_row(run, timed, memory.result))
    except Exception as err:  # noqa: BLE001 - the other backends' cycles go on
        return error_row(row, err)


def measure_interleaved(args: argparse.Namespace, model: str, workdir: Path) -> dict[str, list[dict]]:
    """`--interleave`: MODEL's backends side by side in this process, a Run each (built, then one warm-up epoch),
    then --rounds cycles of one timed stretch per backend (--epochs epochs, at least --min-seconds), the backends'
    order alternating per cycle. Stretches compared are seconds apart, not minutes, so a shared machine's drift hits
    the backends alike. Per backend one row per cycle (a backend that cannot be built: one skipped or failed row).
    Peak memory is the process's, so it holds every backend's Run."""
    runs, out = {}, {}
    with contextlib.redirect_stdout(sys.stderr):  # the trainer's messages; stdout keeps the table
        try:
            for backend in args.backends:
                try:
                    runs[backend] = build_run(pair_config(args, backend, model, workdir))
                    train_epoch_timed(runs[backend])  # warm-up
                    out[backend] = []
                except Exception as err:  # noqa: BLE001 - Skipped included
                    out[backend] = [error_row({"backend": backend, "model": model}, err)]
            ready = [b for b in args.backends if not out[b]]
            for cycle in range(args.rounds):
                for backend, _ in round_order(ready, [model], cycle):
                    out[backend].append(timed_stretch(runs[backend], backend, model, args))
                ready = [b for b in ready if out[b][-1]["status"] == "ok"]  # a failed backend stops there
        finally:
            for run in runs.values():
                release(run)
    return out


def measure_pair(args: argparse.Namespace, backend: str, model: str, workdir: Path) -> dict:
    """One round of one backend x model: its config, a fresh Run, the warm-up and timed epochs; a row (ok, skipped
    with the reason, or failed with the error)."""
    row = {"backend": backend, "model": model}
    try:
        cfg = pair_config(args, backend, model, workdir)
        row["batch_size"] = cfg.batch_size
        with contextlib.redirect_stdout(sys.stderr):  # the trainer's messages; stdout keeps the table
            row.update(measure_training(cfg, args.epochs, min_seconds=args.min_seconds))
        return checked(row)
    except Exception as err:  # noqa: BLE001 - Skipped included
        return error_row(row, err)


def round_order(backends: list[str], models: list[str], round_index: int) -> list[tuple[str, str]]:
    """The pairs of one round, model by model so that one model's backends run next to each other in time, the
    backends' order reversed every other round so that none always runs first (after the other's worker processes,
    or on a machine that is warming up)."""
    ordered = backends if round_index % 2 == 0 else backends[::-1]
    return [(backend, model) for model in models for backend in ordered]


def merge_rounds(rounds: list[dict]) -> dict:
    """One row from a pair's rounds: the median clips/s, epoch time and data wait over the rounds (each round's
    clips/s kept in `rounds_clips_per_s`), the highest peak memory, the last round's loss; a round that failed or was
    skipped makes the row so."""
    bad = [r for r in rounds if r["status"] != "ok"]
    if bad:
        return bad[0]
    row = dict(rounds[-1])
    for key in ("clips_per_s", "epoch_s", "data_wait"):
        row[key] = statistics.median(r[key] for r in rounds)
    device_waits = [r.get("data_wait_device") for r in rounds]
    row["data_wait_device"] = None if None in device_waits else statistics.median(device_waits)
    row["peak_mb"] = max(r["peak_mb"] for r in rounds)
    if all(r.get("workers_mb") is not None for r in rounds):
        row["workers_mb"] = max(r["workers_mb"] for r in rounds)
    row["rounds_clips_per_s"] = [r["clips_per_s"] for r in rounds]
    return row


def compare(per_round: dict[tuple[str, str], list[dict]], backends: list[str], models: list[str]) -> list[dict]:
    """Each backend against the first one, per model: the ratio of their clips/s in every round (measured minutes
    apart, so a machine's drift cancels) and the median ratio; rounds where either pair was not ok are left out."""
    out = []
    for model in models:
        base = per_round.get((backends[0], model), [])
        for backend in backends[1:]:
            ratios = [round(r["clips_per_s"] / b["clips_per_s"], 3)
                      for b, r in zip(base, per_round.get((backend, model), []))
                      if b["status"] == r["status"] == "ok"]
            if ratios:
                out.append({"model": model, "backend": backend, "versus": backends[0], "ratios": ratios,
                            "median": statistics.median(ratios)})
    return out


def train(args: argparse.Namespace) -> dict:
    """Time training for every backend x model, --rounds times over (a fresh Run per pair and round); print a table
    and the backends' ratios; return (and optionally write) the results."""
    from ravdess_dist.device import DeviceUnusable, resolve_device

    try:
        device = torch.device(resolve_device(args.device or "auto"))
    except DeviceUnusable as err:
        raise SystemExit(f"error: {err}")
    if not (args.shards / "manifest.json").is_file():
        raise SystemExit(f"error: no shards at {args.shards} (no manifest.json): run python -m preprocess first")
    if args.threads:
        torch.set_num_threads(args.threads)
    per_round: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        if args.interleave:
            for model in args.models:
                for backend, rows in measure_interleaved(args, model, Path(tmp)).items():
                    per_round[(backend, model)] = rows
                    for index, row in enumerate(rows):
                        print(f"cycle {index + 1}/{args.rounds} " + format_train_row(row), flush=True)
        else:
            for index in range(args.rounds):
                for backend, model in round_order(args.backends, args.models, index):
                    done = per_round.setdefault((backend, model), [])
                    if done and done[0]["status"] == "skipped":
                        continue  # it cannot run here: once is enough to say why
                    done.append(measure_pair(args, backend, model, Path(tmp)))
                    prefix = f"round {index + 1}/{args.rounds} " if args.rounds > 1 else ""
                    print(prefix + format_train_row(done[-1]), flush=True)
    rows = [merge_rounds(per_round[(backend, model)]) for backend in args.backends for model in args.models]
    comparison = compare(per_round, args.backends, args.models)
    if args.rounds > 1:
        print("median over the rounds:\n" + TRAIN_HEADER)
        for row in rows:
            print(format_train_row(row))
    for c in comparison:
        print(f"{c['backend']}/{c['versus']} {c['model']}: clips/s ratio per round "
              f"{' '.join(f'{r:.2f}' for r in c['ratios'])}, median {c['median']:.2f}")
    info = device_info(device) | {"shards": str(args.shards), "intensity": args.intensity, "epochs": args.epochs,
                                  "warmup_passes": 1, "min_seconds": args.min_seconds, "rounds": args.rounds,
                                  "interleave": args.interleave, "batch_size": args.batch_size,
                                  "overrides": list(args.config), "recipe": args.recipe}
    print(json.dumps(info))
    results = {"rows": rows, "comparison": comparison, "info": info}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return results


TRAIN_HEADER = (f"{'backend':8s} {'model':8s} {'clips/s':>8s} {'epoch s':>8s} {'data wait':>9s} {'GPU wait':>9s} "
                f"{'peak MB':>9s}  precision")


def format_train_row(row: dict) -> str:
    """One line of the training table (the header is TRAIN_HEADER)."""
    if row["status"] != "ok":
        return f"{row['backend']:8s} {row['model']:8s} {row['status']}: {row.get('reason', '')}"
    peak = f"{row['peak_mb']:.0f}" + (f"+{row['workers_mb']:.0f}" if row.get("workers_mb") else "")
    device_wait = row.get("data_wait_device")
    gpu = "-" if device_wait is None else f"{100 * device_wait:.1f}%"
    return (f"{row['backend']:8s} {row['model']:8s} {row['clips_per_s']:8.1f} {row['epoch_s']:8.2f} "
            f"{100 * row['data_wait']:8.1f}% {gpu:>9s} {peak:>9s}  {row['precision']}")


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
    from ravdess_dist.models import list_models

    tr = sub.add_parser("train", help="training clips/s per backend x model through the trainer (Run.train_epoch)",
                        description="Training throughput per backend x model: the trainer's own Run on the shards, one "
                                    "warm-up epoch, then --epochs timed epochs. Settings only the device backend "
                                    "implements are switched off for all backends (--recipe keeps them for it).")
    tr.add_argument("--shards", type=Path, default=Path("working_directory/shards"), help="shard root (with manifest.json)")
    tr.add_argument("--intensity", choices=SELECTIONS, default="normal")
    tr.add_argument("--models", nargs="+", choices=list_models(), default=list_models())
    tr.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    tr.add_argument("--epochs", type=int, default=2, help="timed epochs after the warm-up epoch")
    tr.add_argument("--min-seconds", type=float, default=0.0,
                    help="time more epochs than --epochs until the timed ones add up to this many seconds (e.g. 20 "
                         "on a CPU, where a small model's epoch takes a few seconds)")
    tr.add_argument("--rounds", type=int, default=1,
                    help="measure every pair this many times, one pair after the other in each round (a fresh Run, "
                         "warm-up included); rows give the median, and each backend's clips/s ratio to the first "
                         "backend per round: on a shared machine, compare backends by that ratio")
    tr.add_argument("--interleave", action="store_true",
                    help="per model, keep every backend's Run in this process and time them in turn, --rounds cycles "
                         "of --epochs epochs each (backends' order alternating): the stretches compared are seconds "
                         "apart instead of minutes")
    tr.add_argument("--batch-size", type=int, help="per process (default: the model's config)")
    tr.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides passed to load_config after the bench's own, e.g. num_workers=1 features.n_mels=128")
    tr.add_argument("--device", choices=("auto", "cuda", "cpu"), help="default: auto (the GPU when torch can use one)")
    tr.add_argument("--threads", type=int, help="torch intra-op threads of the training process (default: torch's, "
                    "as train.py runs)")
    tr.add_argument("--recipe", action="store_true",
                    help="keep the device-only settings of the model's config (speech spans, speed perturbation) "
                         "for the device backend")
    tr.add_argument("--json", type=Path, help="write the results here")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmark; `train` exits 1 when a combination failed (a skipped one is not a failure)."""
    args = parser().parse_args(argv)
    if args.command == "train":
        if args.epochs < 1 or args.rounds < 1:
            raise SystemExit("error: --epochs and --rounds must be at least 1")
        print(TRAIN_HEADER, flush=True)
        results = train(args)
        return int(any(row["status"] == "failed" for row in results["rows"]))
    features(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
