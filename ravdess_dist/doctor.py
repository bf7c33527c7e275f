"""`python -m ravdess_dist.doctor`: check a machine end to end in a few minutes, one table row per check.

Rows (name, status ok/FAILED/skipped, detail, seconds):
- versions: python, torch and its CUDA build, driver, DALI, NCCL, accelerate (ravdess_dist.device.provenance);
- device: what `--device auto` resolves to; GPUs that are there but unusable are a FAILED row with the reason
  (the remaining checks then run on the CPU);
- gpu compute, nccl all-reduce: GPU-only ("skipped: no GPU" on a CPU machine; NCCL needs >= 2 GPUs);
- sample shards: the bundled sample packed by `python -m preprocess` into a temporary folder;
- features: dali/device vs torch on the device, on every sample clip (dB log-mel, the tests' thresholds);
- feature clips/s per backend, and training clips/s per backend (the `bench` functions);
- train MODEL/BACKEND: every model x backend trains 2 epochs through the trainer (fit, then test) with tiny
  settings, in the precision the device gets; ok if the losses are finite and every test clip is evaluated once.

Exit status 0 when no row FAILED, 1 otherwise. `--json FILE` writes the rows (with figures and, for a FAILED row,
the traceback and the end of its output).
"""
import argparse
import contextlib
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample" / "ravdess_actors01-04_16k"
BACKENDS = ("torch", "dali", "device")
# Tiny training: 1 s clips, one evaluation window, the selected intensity only (64 training clips of the sample's
# 2 training actors, 4 steps of 16), 2 epochs; the device backend keeps its recipe's speech spans and speed perturbation.
TINY = ("features.clip_seconds=1.0", "eval_crops=1", "train_intensities=same", "batch_size=16", "patience=5")
DALI_MEAN_DB = 0.1  # tests/test_loaders.py: DALI vs torch, mean |dB difference| of each clip
DEVICE_NORMALISED = 1e-4  # tests/test_device_path.py: device vs torch, max |difference| of the normalised features
NCCL_TIMEOUT_S = 180


class Skip(Exception):
    """Raised by a check that does not apply here; its message is the row's detail ("no GPU")."""


class Failed(Exception):
    """Raised by a check whose result is wrong (no traceback needed); its message is the row's detail."""


@dataclass
class Row:
    """One check's outcome."""

    name: str
    status: str  # ok, FAILED, skipped
    detail: str
    seconds: float
    data: dict = field(default_factory=dict)


@dataclass
class Context:
    """What the checks share: the device the checks run on, the temporary folder, the sample's shards."""

    tmp: Path
    sample: Path = SAMPLE
    device: str = "cpu"
    gpu_state: str = "no GPU"  # why GPU rows are skipped: "no GPU" or "GPU unusable (see the device row)"
    shards: Path | None = None
    features: dict = field(default_factory=dict)  # backend -> {key: (dB features, label)} or Exception
    data: dict = field(default_factory=dict)  # figures a check hands to its row


Check = tuple[str, Callable[[Context], str]]


def run_checks(checks: list[Check], ctx: Context, echo: Callable[[Row], None] = lambda row: None) -> list[Row]:
    """Run every check in order: its return value is an ok row's detail, Skip makes a skipped row, any other
    exception a FAILED row (never a crash). A check's own output is captured, and kept with a FAILED row."""
    rows = []
    for name, check in checks:
        ctx.data = {}
        log = io.StringIO()
        start = time.perf_counter()
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                detail, status = str(check(ctx)), "ok"
        except Skip as err:
            detail, status = str(err), "skipped"
        except Exception as err:  # noqa: BLE001 - the point of the doctor: a failure is a row
            detail, status = (str(err) if isinstance(err, Failed) else f"{type(err).__name__}: {err}"), "FAILED"
            ctx.data["traceback"] = traceback.format_exc()
            ctx.data["output_tail"] = log.getvalue()[-4000:]
        row = Row(name, status, " ".join(detail.split()), round(time.perf_counter() - start, 2), dict(ctx.data))
        rows.append(row)
        echo(row)
    return rows


def exit_status(rows: list[Row]) -> int:
    """0 when no row FAILED, else 1."""
    return int(any(row.status == "FAILED" for row in rows))


# ---------------------------------------------------------------------------------------------------------- checks

def check_versions(ctx: Context) -> str:
    """Versions of everything the project runs on."""
    from ravdess_dist.device import provenance

    info = provenance("cuda" if torch.cuda.is_available() else "cpu")
    ctx.data.update(info)
    dali = f"{info['dali']} ({info['dali_package']})" if info["dali"] else "not installed"
    return (f"python {info['python']}, torch {info['torch']} (CUDA build {info['torch_cuda']}), driver "
            f"{info['driver'] or 'none'}, DALI {dali}, NCCL {info['nccl'] or 'none'}, accelerate {info['accelerate']}")


def check_device(ctx: Context) -> str:
    """resolve_device("auto"): a GPU torch can use, the CPU when there is no GPU, FAILED when GPUs are unusable."""
    from ravdess_dist.device import provenance, resolve_device, visible_gpus

    ctx.device, ctx.gpu_state = "cpu", "no GPU"
    try:
        ctx.device = resolve_device("auto")
    except Exception:
        ctx.gpu_state = "GPU unusable (see the device row)"
        raise
    info = provenance(ctx.device)["devices"]
    ctx.data.update(device=ctx.device, devices=info)
    if ctx.device == "cuda":
        names = [d["name"] for d in info]
        kinds = ", ".join(f"{names.count(n)} x {n}" for n in dict.fromkeys(names))
        return f"cuda: {kinds}"
    cpu = info[0] if info else {}
    return (f"cpu: {cpu.get('name')}, {cpu.get('cores')} cores; "
            f"{'no GPU visible' if not visible_gpus() else 'GPUs visible'}")


def check_gpu_compute(ctx: Context) -> str:
    """A bf16 matrix product on every GPU, against float32 (catches broken GPUs, drivers and libraries)."""
    if ctx.device != "cuda":
        raise Skip(ctx.gpu_state)
    parts, errors = [], []
    for index in range(torch.cuda.device_count()):
        dev = torch.device("cuda", index)
        a = torch.randn(2048, 2048, device=dev, generator=torch.Generator(dev).manual_seed(index))
        exact = a.double() @ a.double()
        error = float(((a.bfloat16() @ a.bfloat16()).double() - exact).norm() / exact.norm())
        free, total = torch.cuda.mem_get_info(dev)
        parts.append(f"{index}: {torch.cuda.get_device_name(dev)} {free / 2**30:.0f}/{total / 2**30:.0f} GiB free, "
                     f"bf16 rel. error {error:.1e}")
        ctx.data[f"cuda:{index}"] = {"bf16_rel_error": error, "free_bytes": free, "total_bytes": total}
        if not error < 2e-2:
            errors.append(f"cuda:{index} bf16 matmul relative error {error:.3g}")
    if errors:
        raise Failed("; ".join(errors))
    return "; ".join(parts)


def _nccl_worker(rank: int, world: int, port: int, out: str) -> None:
    """One process per GPU: a checked all-reduce, then the bandwidth of 64 MiB all-reduces (rank 0 writes OUT)."""
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    dev = torch.device("cuda", rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, device_id=dev)
    try:
        x = torch.full((1 << 20,), float(rank + 1), device=dev)
        dist.all_reduce(x)
        expected = world * (world + 1) / 2
        if not torch.all(x == expected):
            raise RuntimeError(f"rank {rank}: all-reduce gave {x.unique().tolist()}, expected {expected}")
        big = torch.ones(16 << 20, device=dev)  # 64 MiB of float32
        for _ in range(2):
            dist.all_reduce(big)
        torch.cuda.synchronize(dev)
        start, repeats = time.perf_counter(), 10
        for _ in range(repeats):
            dist.all_reduce(big)
        torch.cuda.synchronize(dev)
        seconds = (time.perf_counter() - start) / repeats
        if rank == 0:  # bus bandwidth as nccl-tests reports it: 2 (n - 1) / n x bytes / time
            size = big.numel() * big.element_size()
            Path(out).write_text(json.dumps({"seconds": seconds, "busbw_gb_s": 2 * (world - 1) / world * size / seconds / 1e9}))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_nccl(ctx: Context) -> str:
    """NCCL all-reduce across every local GPU, one spawned process per GPU."""
    if ctx.device != "cuda":
        raise Skip(ctx.gpu_state)
    world = torch.cuda.device_count()
    if world < 2:
        raise Skip("fewer than 2 GPUs")
    import torch.multiprocessing as mp

    out = ctx.tmp / "nccl.json"
    procs = mp.spawn(_nccl_worker, args=(world, _free_port(), str(out)), nprocs=world, join=False)
    deadline = time.monotonic() + NCCL_TIMEOUT_S
    while not procs.join(timeout=5):
        if time.monotonic() > deadline:
            for proc in procs.processes:
                if proc.is_alive():
                    proc.terminate()
            raise Failed(f"NCCL all-reduce across {world} GPUs did not finish in {NCCL_TIMEOUT_S} s")
    result = json.loads(out.read_text())
    ctx.data.update(world=world, **result)
    return f"{world} GPUs: sum correct; 64 MiB all-reduce {1e3 * result['seconds']:.2f} ms, bus bandwidth " \
           f"{result['busbw_gb_s']:.0f} GB/s"


def check_shards(ctx: Context) -> str:
    """Pack the bundled sample with `python -m preprocess` into the temporary folder."""
    from shards.manifest import Manifest

    out = ctx.tmp / "sample"
    proc = subprocess.run([sys.executable, "-m", "preprocess", "--archive", str(ctx.sample), "--out", str(out),
                           "--no-analysis"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if proc.returncode:
        raise Failed(f"python -m preprocess exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    manifest = Manifest.load(out / "shards")
    ctx.shards = out / "shards"
    clips = sum(e.samples for e in manifest.select("all"))
    ctx.data.update(shards=str(ctx.shards), clips=clips, actors=list(manifest.actors))
    return f"{clips} clips of actors {list(manifest.actors)} in {len(manifest.select('all'))} shards"


def _need_shards(ctx: Context) -> Path:
    if ctx.shards is None:
        raise Failed("no sample shards (see the sample shards row)")
    return ctx.shards


def _eval_features(ctx: Context, backend: str) -> dict:
    """{key: (un-normalised dB log-mel [1, F, T] on the CPU, label)} of every sample clip by BACKEND, cached."""
    if backend not in ctx.features:
        from ravdess_dist.data.factory import make_loader
        from ravdess_dist.features import FeatureConfig
        from shards.manifest import Manifest

        root = _need_shards(ctx)
        manifest = Manifest.load(root)
        try:
            loader = make_loader(backend, root=root, entries=manifest.select("all"),
                                 class_names=manifest.class_names("all"), batch_size=32, train=False,
                                 features=FeatureConfig(normalize=False), device=ctx.device)
            seen = {}
            for batch in loader:
                for i, (key, valid) in enumerate(zip(batch.keys, batch.valid.tolist())):
                    if valid:
                        if key in seen:
                            raise Failed(f"{backend}: clip {key} delivered twice")
                        seen[key] = (batch.features[i].float().cpu(), int(batch.labels[i]))
            ctx.features[backend] = seen
        except ImportError as err:
            ctx.features[backend] = Skip(f"{backend} backend unavailable: {err}")
        except Exception as err:  # noqa: BLE001 - remembered, so the other comparison reports it too
            ctx.features[backend] = err
    got = ctx.features[backend]
    if isinstance(got, Exception):
        raise got
    return got


def parity_check(backend: str) -> Callable[[Context], str]:
    """BACKEND's features vs the torch backend's on every sample clip, on the device."""

    def check(ctx: Context) -> str:
        reference = _eval_features(ctx, "torch")
        got = _eval_features(ctx, backend)
        if set(got) != set(reference):
            raise Failed(f"{backend} delivered {len(got)} clips, torch {len(reference)}: not the same clips")
        wrong = [k for k in reference if got[k][1] != reference[k][1]]
        if wrong:
            raise Failed(f"labels differ for {len(wrong)} clip(s), e.g. {wrong[0]}")
        keys = sorted(reference)
        diff = torch.stack([(got[k][0] - reference[k][0]).abs() for k in keys])  # [N, 1, F, T] in dB
        clip_mean = diff.flatten(1).mean(dim=1)
        norm = torch.nn.functional.layer_norm  # the Frontend's per-clip normalisation
        normalised = max(float((norm(got[k][0], got[k][0].shape[-1:]) - norm(reference[k][0], reference[k][0].shape[-1:]))
                               .abs().max()) for k in keys)
        ctx.data.update(clips=len(keys), max_db=float(diff.max()), mean_db=float(diff.mean()),
                        worst_clip_mean_db=float(clip_mean.max()), max_normalised=normalised, device=ctx.device)
        figures = (f"{len(keys)} clips on {ctx.device}: max {float(diff.max()):.2e} dB, mean {float(diff.mean()):.2e} dB, "
                   f"normalised max {normalised:.1e}")
        if backend == "dali":
            ctx.data["threshold"] = f"every clip's mean |difference| < {DALI_MEAN_DB} dB"
            if not float(clip_mean.max()) < DALI_MEAN_DB:
                raise Failed(f"{figures}; a clip differs by {float(clip_mean.max()):.3f} dB on average "
                             f"(limit {DALI_MEAN_DB} dB)")
        else:
            ctx.data["threshold"] = f"normalised features within {DEVICE_NORMALISED}"
            if not normalised <= DEVICE_NORMALISED:
                raise Failed(f"{figures}; normalised features differ by up to {normalised:.2e} (limit {DEVICE_NORMALISED})")
        return figures

    return check


def feature_speed_check(backend: str) -> Callable[[Context], str]:
    """Clips/s of BACKEND's evaluation features over every sample clip (bench.feature_throughput)."""

    def check(ctx: Context) -> str:
        from ravdess_dist import bench
        from shards.manifest import Manifest

        root = _need_shards(ctx)
        manifest = Manifest.load(root)
        threads = torch.get_num_threads()
        try:
            result = bench.feature_throughput(backend, root, manifest.select("all"), manifest.class_names("all"),
                                              torch.device(ctx.device), batch_size=64, num_workers=2, repeats=2)
        finally:
            torch.set_num_threads(threads)
        if "error" in result:
            raise Skip(f"{backend} backend unavailable: {result['error']}")
        ctx.data.update(result)
        return f"{result['clips_per_s']:.0f} clips/s ({result['clips']} clips, fastest of 2 passes, batch 64)"

    return check


@contextlib.contextmanager
def _training_threads(ctx: Context):
    """On the CPU, train with half the cores' intra-op threads (at least 1): the loader's workers or DALI's threads
    use the rest, and spinning intra-op threads on a busy small machine slow a step down several times over."""
    saved = torch.get_num_threads()
    if ctx.device == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    ctx.data["torch_threads"] = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@contextlib.contextmanager
def _own_signals():
    """Run.fit installs SIGTERM/SIGUSR1 handlers for preemption: give the doctor its own back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _precision(mixed: str) -> str:
    """Accelerate's mixed_precision as a word for the table: fp32 for "no"."""
    return "fp32" if mixed == "no" else mixed


def train_check(model: str, backend: str) -> Callable[[Context], str]:
    """MODEL on BACKEND: Run.fit for 2 epochs and Run.test on the sample, tiny settings, the device's precision."""

    def check(ctx: Context) -> str:
        from ravdess_dist import bench
        from ravdess_dist.trainer import Run
        from shards.manifest import Manifest

        root = _need_shards(ctx)
        try:
            cfg = bench.train_config(root, model, backend, "normal", 2, ctx.tmp / f"train-{model}-{backend}",
                                     device=ctx.device, overrides=TINY, recipe=True)
        except bench.Skipped as err:
            raise Skip(str(err)) from None
        try:
            run = Run(cfg)
        except ImportError as err:
            raise Skip(f"{backend} backend unavailable: {err}") from None
        try:
            with _own_signals(), _training_threads(ctx):
                run.fit()
                metrics = run.test()
        finally:
            bench.release(run)
        losses = [h["loss"] for h in metrics["history"]]
        predicted = [row["key"] for row in json.loads((run.run_dir / "predictions.json").read_text())]
        expected = [k for e in Manifest.load(root).select("normal", run.split.test) for k in e.keys]
        speed = metrics["history"][-1]["clips_per_s"]
        ctx.data.update(losses=losses, test_clips=len(predicted), test_ua=metrics["test"]["ua"], clips_per_s=speed,
                        precision=metrics["mixed_precision"], config=cfg.run_name)
        if len(losses) != 2 or not all(math.isfinite(x) for x in losses):
            raise Failed(f"losses {losses}: expected 2 finite epoch losses")
        if sorted(predicted) != sorted(expected) or len(set(predicted)) != len(predicted):
            raise Failed(f"{len(predicted)} test predictions ({len(set(predicted))} distinct) for the "
                         f"{len(expected)} test clips of actors {list(run.split.test)}")
        return (f"loss {losses[0]:.3f} -> {losses[1]:.3f}, {len(expected)} test clips once, test UA "
                f"{metrics['test']['ua']:.2f}, {_precision(metrics['mixed_precision'])}, {speed:.0f} clips/s")

    return check


def train_speed_check(backend: str, model: str = "cnn") -> Callable[[Context], str]:
    """Steady-state training clips/s of MODEL on BACKEND (bench.measure_training: 1 warm-up + 1 timed epoch)."""

    def check(ctx: Context) -> str:
        from ravdess_dist import bench

        root = _need_shards(ctx)
        overrides = ("features.clip_seconds=1.0", "batch_size=16")  # both intensities of the 2 training actors: 120 clips
        try:
            cfg = bench.train_config(root, model, backend, "normal", 2, ctx.tmp / f"speed-{model}-{backend}",
                                     device=ctx.device, overrides=overrides)
            with _training_threads(ctx):
                result = bench.measure_training(cfg, epochs=1)
        except bench.Skipped as err:
            raise Skip(f"{backend}: {err}") from None
        ctx.data.update(result, model=model)
        peak = f"{result['peak_mb']:.0f} MB" + (f" + workers {result['workers_mb']:.0f} MB"
                                                if result.get("workers_mb") else "")
        return (f"{model}: {result['clips_per_s']:.0f} clips/s, epoch {result['epoch_s']:.2f} s, data wait "
                f"{100 * result['data_wait']:.0f} %, peak {peak} ({result['memory']}), {_precision(result['precision'])}")

    return check


def standard_checks(models: list[str] | None = None, backends=BACKENDS) -> list[Check]:
    """Every check, in the order the table lists them."""
    from ravdess_dist.models import list_models

    checks: list[Check] = [("versions", check_versions), ("device", check_device),
                           ("gpu compute", check_gpu_compute), ("nccl all-reduce", check_nccl),
                           ("sample shards", check_shards)]
    checks += [(f"features {b} vs torch", parity_check(b)) for b in backends if b != "torch"]
    checks += [(f"feature clips/s {b}", feature_speed_check(b)) for b in backends]
    checks += [(f"train {m} {b}", train_check(m, b)) for m in (models or list_models()) for b in backends]
    checks += [(f"train clips/s {b}", train_speed_check(b)) for b in backends]
    return checks


# ------------------------------------------------------------------------------------------------------------ CLI

def format_row(row: Row, width: int = 24) -> str:
    return f"{row.name:{width}s} {row.status:8s} {row.seconds:7.1f}  {row.detail}"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m ravdess_dist.doctor", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--sample", type=Path, default=SAMPLE, help="archive packed for the checks (default: the bundled one)")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (shards, runs), instead of a temporary one")
    return ap


def main(argv: list[str] | None = None, checks: list[Check] | None = None) -> int:
    """Run the checks (CHECKS: the standard ones), print the table, write --json; 0 when nothing FAILED, else 1."""
    args = parser().parse_args(argv)
    started = time.perf_counter()
    print(f"{'check':24s} {'status':8s} {'seconds':>7s}  detail", flush=True)
    with contextlib.ExitStack() as stack:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            tmp = args.keep
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ravdess-doctor-")))
        ctx = Context(tmp=tmp, sample=args.sample)
        rows = run_checks(standard_checks() if checks is None else checks, ctx,
                          echo=lambda row: print(format_row(row), flush=True))
    status, seconds = exit_status(rows), round(time.perf_counter() - started, 1)
    counts = {s: sum(r.status == s for r in rows) for s in ("ok", "FAILED", "skipped")}
    print(f"{counts['ok']} ok, {counts['FAILED']} FAILED, {counts['skipped']} skipped in {seconds} s; "
          f"exit status {status}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": [asdict(r) for r in rows], "exit_status": status, "seconds": seconds,
                                         "device": ctx.device}, indent=1, default=str))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
