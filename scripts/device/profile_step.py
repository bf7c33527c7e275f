"""On the GPU machine: where a compiled training step's time goes (developer tooling, not part of the package).

For the hybrid (or `--config`'s model) x normal, fold 0, device backend, at the config's settings plus the given KEY=VALUE overrides (e.g.
compile=reduce-overhead): a real `Run`, WARM epochs (compilation), then one epoch under torch.profiler (host and
CUDA activity: the ops that cost host time, the kernels that cost GPU time, GPU busy time per step), then TIMED
epochs without the profiler, each split into the time spent in the loader's `next` and in `train_step` (host) and
the data wait's share of the GPU's time (`gpu_wait_share`: the trainer's DataWaitClock), with the device's queue drained (synchronize) once per epoch. `--pass N` sets the device backend's batches per GPU
pass; `--queue-left N` and `--speed-group N` set its data-wait levers (2026-11-28b) for an A/B on one machine. Writes OUT/NAME.json and OUT/NAME.txt (the profiler's tables). (Its first use, 2026-11-27, compared foreach
and fused AdamW; fused is now the GPU's default.)

python3 scripts/device/profile_step.py --name ro compile=reduce-overhead
"""
import argparse
import json
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from ravdess_dist.config import load_config
from ravdess_dist.data import device_path
from ravdess_dist.data_wait import DataWaitClock
from ravdess_dist.trainer import Run

CUDA = torch.cuda.is_available()
sync = torch.cuda.synchronize if CUDA else (lambda: None)  # a CPU dry run of the script


def timed_epoch(run: Run) -> dict:
    """One training epoch through the trainer's own loader and step, the loader's and the step's host time apart."""
    run.model.train()
    run.train_loader.set_epoch(run.epoch)
    steps, waited, stepping = len(run.train_loader), 0.0, 0.0
    batches = iter(run.train_loader)
    sync()
    start = time.perf_counter()
    loss = torch.zeros((), device=run.accelerator.device)
    clock = DataWaitClock(run.accelerator.device)  # the trainer's measure of the wait on the GPU's clock
    for _ in range(steps):
        t0 = time.perf_counter()
        with clock.fetching():
            batch = next(batches)
        t1 = time.perf_counter()
        loss += run.train_step(batch)
        stepping += time.perf_counter() - t1
        waited += t1 - t0
    t2 = time.perf_counter()
    clock.stop()
    sync()
    drain = time.perf_counter() - t2
    run.epoch += 1
    wall = time.perf_counter() - start
    return {"steps": steps, "wall_s": wall, "ms_per_step": 1000 * wall / steps, "next_ms": 1000 * waited / steps,
            "train_step_ms": 1000 * stepping / steps, "final_drain_ms": 1000 * drain, "loss": float(loss) / steps,
            "gpu_wait_share": clock.device_share()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--config", default="configs/hybrid.yaml", help="the model's recipe (default: the hybrid's)")
    ap.add_argument("--warm", type=int, default=2)
    ap.add_argument("--timed", type=int, default=5)
    ap.add_argument("--pass", dest="per_pass", type=int, help="training batches per GPU pass (device backend)")
    ap.add_argument("--queue-left", type=int, help="data_stream: batches of a pass left when the next is queued "
                    "(device backend; 16 = at once, the order before 2026-11-28b)")
    ap.add_argument("--speed-group", type=int, help="speed groups padded to a multiple of this (device backend on a "
                    "GPU; 1 = exact groups, as before 2026-11-28b)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/res"))
    args, overrides = ap.parse_known_args()
    cfg = load_config(["--config", args.config, "--intensity", "normal", "--folds", "6", "--fold", "0",
                       "--run-name", f"prof-{args.name}", "--output-dir", "/tmp/m", "--logging-dir", "/tmp/runs",
                       "epochs=100", *overrides])
    if args.queue_left is not None:
        device_path.QUEUE_LEFT = args.queue_left
    t = time.perf_counter()
    run = Run(cfg)
    if args.per_pass:
        run.train_loader.batches_per_pass = args.per_pass
    if args.speed_group:
        run.train_loader.speed_group = args.speed_group
    result = {"name": args.name, "overrides": overrides, "setup_s": time.perf_counter() - t,
              "setup_parts": {k: v for k, v in run.seconds.items() if k.startswith("setup_")},
              "batches_per_pass": getattr(run.train_loader, "batches_per_pass", None),
              "queue_left": device_path.QUEUE_LEFT, "speed_group": getattr(run.train_loader, "speed_group", None),
              "gpu": torch.cuda.get_device_name() if CUDA else "cpu"}
    t = time.perf_counter()
    result["warm"] = [timed_epoch(run) for _ in range(args.warm)]
    result["warm_s"] = time.perf_counter() - t
    with profile(activities=[ProfilerActivity.CPU, *[ProfilerActivity.CUDA] * CUDA]) as prof:
        result["profiled"] = timed_epoch(run)
    events = prof.key_averages()
    kernels = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    result["gpu_busy_ms_per_step"] = kernels / 1000 / result["profiled"]["steps"]
    result["timed"] = [timed_epoch(run) for _ in range(args.timed)]
    result["median_ms_per_step"] = sorted(e["ms_per_step"] for e in result["timed"])[len(result["timed"]) // 2]
    t = time.perf_counter()
    result["test"] = run.test()["test"]
    result["test_s"] = time.perf_counter() - t
    run.close()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    tables = [events.table(sort_by="self_cpu_time_total", row_limit=40),
              events.table(sort_by="self_device_time_total", row_limit=25)]
    (args.out / f"{args.name}.txt").write_text("\n\n".join(tables))
    print(json.dumps({k: v for k, v in result.items() if k not in ("warm", "timed", "test")}, indent=1))
    print(tables[0][:6000])


if __name__ == "__main__":
    main()
