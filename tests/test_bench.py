"""`python -m ravdess_dist.bench`: the feature benchmark and the training benchmark (per backend x model, through the
trainer's Run) on shards of the bundled sample; a backend that cannot run is a skipped row, not a crash."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from ravdess_dist.bench import (PORTABLE, compare, format_train_row, merge_rounds, round_order, timed_epochs, train_config,
                                 weighted_share)
from ravdess_dist.data.contract import BACKENDS
from ravdess_dist.trainer import cpu_has_bf16
from shards.manifest import Manifest
from tests.test_loaders import shards  # noqa: F401  (shards is a fixture)

ROOT = Path(__file__).resolve().parent.parent
TINY = ["features.clip_seconds=1.0", "batch_size=16", "train_intensities=same"]


def bench(*args, prelude: str = "") -> subprocess.CompletedProcess:
    """`python -m ravdess_dist.bench ARGS` from the repository root (PRELUDE: Python run first, in the same process)."""
    code = f"{prelude}\nimport sys\nfrom ravdess_dist.bench import main\nsys.exit(main({list(map(str, args))!r}))"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_feature_benchmark_command(shards, tmp_path):  # noqa: F811
    """`python -m ravdess_dist.bench features` times both backends over every clip and writes its JSON."""
    out = tmp_path / "bench.json"
    args = ["features", "--shards", shards, "--intensity", "strong", "--batch-size", 32, "--no-notebook", "--repeats", 2,
            "--json", out]
    proc = subprocess.run([sys.executable, "-m", "ravdess_dist.bench", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    for backend in BACKENDS:
        assert results[backend]["clips"] == 112 and len(results[backend]["seconds_all"]) == 2
        assert results[backend]["clips_per_s"] == pytest.approx(112 / min(results[backend]["seconds_all"]), rel=0.01)
        assert backend in proc.stdout
    assert results["info"]["device"] == "cpu" and "notebook" not in results


def test_train_benchmark_command(shards, tmp_path):  # noqa: F811
    """`bench train`: every backend trains the model through Run.train_epoch (a warm-up epoch, then the timed one);
    clips/s, epoch time, data-wait share and peak memory per row, a table on stdout and the JSON."""
    out = tmp_path / "train.json"
    proc = bench("train", "--shards", shards, "--intensity", "strong", "--models", "cnn", "--epochs", 1, "--threads", 1,
                 "--config", *TINY, "--json", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    train_clips = 56  # strong: 28 clips per actor, 2 training actors (4 actors: 1 test, 1 validation)
    assert [(r["backend"], r["model"]) for r in results["rows"]] == [(b, "cnn") for b in BACKENDS]
    for row in results["rows"]:
        assert row["status"] == "ok", row
        assert row["steps_per_epoch"] == math.ceil(train_clips / 16) and row["clips_per_epoch"] == 64
        assert row["clips_per_s"] == pytest.approx(64 / row["epoch_s"], rel=0.01) and len(row["epochs_s"]) == 1
        assert 0 <= row["data_wait"] <= 1 and math.isfinite(row["loss"])
        assert row["peak_mb"] > 100 and row["precision"] == ("bf16" if cpu_has_bf16() else "no") and row["device"] == "cpu"
        assert row["memory"].startswith("peak RSS") and "since process start" not in row["memory"]
        assert f"{row['backend']:8s} cnn" in proc.stdout
    assert results["rows"][0]["workers_mb"] > 0  # the torch backend's DataLoader workers
    info = results["info"]
    assert info["epochs"] == 1 and info["overrides"] == TINY and info["torch_threads"] == 1
    assert "run bench-" not in proc.stdout  # the trainer's own messages go to stderr: stdout is the table


def test_a_backend_that_cannot_run_is_a_skipped_row(shards, tmp_path):  # noqa: F811
    """Without DALI, or with settings a backend refuses, the row says skipped and why; the command still exits 0."""
    no_dali = "import sys; sys.modules['nvidia.dali'] = None"  # what Python does for a package that is absent
    out = tmp_path / "skip.json"
    proc = bench("train", "--shards", shards, "--backends", "dali", "--models", "cnn", "--epochs", 1, "--config", *TINY,
                 "--json", out, prelude=no_dali)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [row] = json.loads(out.read_text())["rows"]
    assert row["status"] == "skipped" and "pip install -e '.[dali]'" in row["reason"]
    assert "dali     cnn      skipped: " in proc.stdout
    # the model's YAML trains on both intensities, which DALI refuses for strong: a config error, before any Run
    proc = bench("train", "--shards", shards, "--backends", "dali", "--models", "cnn", "--intensity", "strong",
                 "--epochs", 1, "--json", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [row] = json.loads(out.read_text())["rows"]
    assert row["status"] == "skipped" and "train_intensities=both for strong" in row["reason"]


def test_train_config_compares_the_same_work(shards, tmp_path):  # noqa: F811
    """The bench's config is the model's YAML with the device-only settings off for every backend (--recipe keeps them
    for the device backend), outputs in the work folder, and the user's overrides last."""
    for backend in BACKENDS:
        cfg = train_config(shards, "resnet", backend, "normal", 3, tmp_path, batch_size=8, overrides=["lr=0.01"])
        assert (cfg.model, cfg.backend, cfg.epochs, cfg.batch_size, cfg.lr) == ("resnet", backend, 3, 8, 0.01)
        assert cfg.features.speech_top_db is None and cfg.augment.speed is None and cfg.eval_crops == 1
        assert cfg.features.hop_length == 320  # the rest of configs/resnet.yaml stays
        assert Path(cfg.output_dir).parent == tmp_path and Path(cfg.shards) == shards
    recipe = train_config(shards, "resnet", "device", "normal", 3, tmp_path, recipe=True)
    assert recipe.features.speech_top_db == 40.0 and tuple(recipe.augment.speed) == (0.9, 1.0, 1.1) and recipe.eval_crops == 3
    assert len(PORTABLE) == 4 and Manifest.load(shards).actors == [1, 2, 3, 4]


def test_rounds_give_medians_and_per_round_ratios(shards, tmp_path):  # noqa: F811
    """`bench train --rounds 2`: every pair trains twice (a fresh Run each time); the row holds both rounds' clips/s
    and their median, and the comparison the device backend's clips/s over the torch backend's in each round."""
    out = tmp_path / "rounds.json"
    proc = bench("train", "--shards", shards, "--intensity", "strong", "--models", "cnn", "--backends", "torch",
                 "device", "--epochs", 1, "--rounds", 2, "--threads", 1, "--min-seconds", 0.01, "--config", *TINY,
                 "--json", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    torch_row, device_row = results["rows"]
    for row in results["rows"]:
        assert row["status"] == "ok" and len(row["rounds_clips_per_s"]) == 2
        assert row["clips_per_s"] == pytest.approx(sum(row["rounds_clips_per_s"]) / 2)
    [comparison] = results["comparison"]
    assert (comparison["model"], comparison["backend"], comparison["versus"]) == ("cnn", "device", "torch")
    expected = [d / t for d, t in zip(device_row["rounds_clips_per_s"], torch_row["rounds_clips_per_s"])]
    assert comparison["ratios"] == pytest.approx(expected, abs=2e-3)
    assert results["info"]["rounds"] == 2 and results["info"]["min_seconds"] == 0.01
    assert all(row["epochs_timed"] >= 1 for row in results["rows"]) and "round 2/2 device   cnn" in proc.stdout
    assert "device/torch cnn: clips/s ratio per round" in proc.stdout


def test_interleave_times_the_backends_in_turn_in_one_process(shards, tmp_path):  # noqa: F811
    """`bench train --interleave --rounds 3`: one Run per backend, their timed epochs alternating; every backend has a
    row per cycle, the rows their median, the comparison a ratio per cycle; a backend that cannot be built (DALI
    missing) is one skipped row beside the others' cycles."""
    out = tmp_path / "interleave.json"
    no_dali = "import sys; sys.modules['nvidia.dali'] = None"
    proc = bench("train", "--shards", shards, "--intensity", "strong", "--models", "cnn", "--backends", "torch", "dali",
                 "device", "--epochs", 1, "--rounds", 3, "--interleave", "--threads", 1, "--config", *TINY,
                 "--json", out, prelude=no_dali)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    rows = {r["backend"]: r for r in results["rows"]}
    assert rows["dali"]["status"] == "skipped" and "cycle 1/3 dali" in proc.stdout
    for backend in ("torch", "device"):
        assert rows[backend]["status"] == "ok" and len(rows[backend]["rounds_clips_per_s"]) == 3
        assert rows[backend]["clips_per_s"] == pytest.approx(sorted(rows[backend]["rounds_clips_per_s"])[1])
        assert "cycle 3/3 " + f"{backend:8s} cnn" in proc.stdout
    [comparison] = results["comparison"]
    assert comparison["backend"] == "device" and len(comparison["ratios"]) == 3 and results["info"]["interleave"]
    assert "run bench-" not in proc.stdout and "run bench-cnn-device" in proc.stderr


def test_min_seconds_times_epochs_until_that_much_time_is_measured():
    """--min-seconds: epochs are timed until they add up to that much (at least --epochs of them); without it,
    exactly --epochs."""
    epochs = iter(range(100))

    def epoch():
        return {"seconds": 0.75, "index": next(epochs)}

    assert len(timed_epochs(epoch, 2)) == 2
    assert [t["index"] for t in timed_epochs(epoch, 2, min_seconds=3.0)] == [2, 3, 4, 5]  # 4 x 0.75 s = 3 s
    assert len(timed_epochs(epoch, 5, min_seconds=1.0)) == 5


def test_round_order_alternates_the_backends_model_by_model():
    """One model's backends run next to each other, and none of them always first."""
    assert round_order(["torch", "device"], ["cnn", "resnet"], 0) == [
        ("torch", "cnn"), ("device", "cnn"), ("torch", "resnet"), ("device", "resnet")]
    assert round_order(["torch", "device"], ["cnn", "resnet"], 1) == [
        ("device", "cnn"), ("torch", "cnn"), ("device", "resnet"), ("torch", "resnet")]


def test_a_round_that_failed_fails_the_row_and_leaves_the_ratios():
    """A pair whose second round failed is a failed row with that round's reason; ratios only use rounds where both
    pairs ran."""
    ok = {"status": "ok", "clips_per_s": 100.0, "epoch_s": 1.0, "data_wait": 0.1, "peak_mb": 500.0, "loss": 1.0}
    failed = {"status": "failed", "reason": "RuntimeError: boom"}
    assert merge_rounds([ok, failed]) == failed
    merged = merge_rounds([ok, ok | {"clips_per_s": 140.0, "peak_mb": 700.0}, ok | {"clips_per_s": 90.0}])
    assert merged["clips_per_s"] == 100.0 and merged["peak_mb"] == 700.0
    assert merged["rounds_clips_per_s"] == [100.0, 140.0, 90.0]
    per_round = {("torch", "cnn"): [ok, ok], ("device", "cnn"): [ok | {"clips_per_s": 120.0}, failed]}
    assert compare(per_round, ["torch", "device"], ["cnn"]) == [
        {"model": "cnn", "backend": "device", "versus": "torch", "ratios": [1.2], "median": 1.2}]


def test_the_gpu_wait_is_averaged_where_every_epoch_has_one():
    """GPU wait: each epoch's share weighted by its seconds, the median over rounds; a CPU's (None) stays None and
    the table shows '-' for it."""
    assert weighted_share([0.1, 0.3], [1.0, 3.0]) == 0.25
    assert weighted_share([None, 0.3], [1.0, 3.0]) is None
    ok = {"status": "ok", "clips_per_s": 100.0, "epoch_s": 1.0, "data_wait": 0.2, "peak_mb": 500.0, "loss": 1.0,
          "backend": "device", "model": "cnn", "precision": "bf16"}
    assert merge_rounds([ok | {"data_wait_device": w} for w in (0.01, 0.05, 0.03)])["data_wait_device"] == 0.03
    cpu = merge_rounds([ok, ok])
    assert cpu["data_wait_device"] is None
    assert format_train_row(cpu).split()[5] == "-"
    assert format_train_row(ok | {"data_wait_device": 0.03}).split()[5] == "3.0%"
