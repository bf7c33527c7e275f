"""`python -m ravdess_dist.doctor`: one run of the whole doctor on this machine (every check, the table, the JSON,
the exit status), and the runner turning a failing check into a FAILED row and exit status 1."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ravdess_dist import doctor
from ravdess_dist.data.contract import BACKENDS
from ravdess_dist.models import list_models
from ravdess_dist.trainer import cpu_has_bf16

ROOT = Path(__file__).resolve().parent.parent
GPU_ROWS = ("gpu compute", "nccl all-reduce")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One doctor run: (the process, its JSON report, rows by name)."""
    out = tmp_path_factory.mktemp("doctor") / "doctor.json"
    proc = subprocess.run([sys.executable, "-m", "ravdess_dist.doctor", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert out.is_file(), proc.stdout + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    return proc, data, {row["name"]: row for row in data["rows"]}


def test_every_check_runs_and_nothing_fails(report):
    """Exit 0, every row of the standard checks in order, the table on stdout, seconds per row under 10 minutes."""
    proc, data, rows = report
    failed = {n: r["detail"] for n, r in rows.items() if r["status"] == "FAILED"}
    assert proc.returncode == 0 and data["exit_status"] == 0 and not failed, failed
    names = [name for name, _ in doctor.standard_checks()]
    assert [r["name"] for r in data["rows"]] == names
    assert len(names) == 4 + 1 + 2 + 3 + 3 * len(list_models()) + 3
    for row in data["rows"]:
        assert row["status"] in ("ok", "skipped") and row["seconds"] >= 0
        assert f"{row['name']:24s} {row['status']:8s}" in proc.stdout
    assert data["seconds"] < 600 and "exit status 0" in proc.stdout
    assert rows["versions"]["data"]["torch"] == torch.__version__
    assert f"torch {torch.__version__}" in rows["versions"]["detail"]


def test_gpu_rows_are_skipped_without_a_gpu(report):
    """On a machine without GPUs the device is the CPU and the GPU-only rows say so."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a usable GPU: the GPU rows ran")
    _, data, rows = report
    assert data["device"] == "cpu" and rows["device"]["status"] == "ok" and rows["device"]["detail"].startswith("cpu:")
    for name in GPU_ROWS:
        assert (rows[name]["status"], rows[name]["detail"]) == ("skipped", "no GPU")


def test_feature_parity_rows_hold_the_figures(report):
    """DALI and device features vs torch on all 240 sample clips, within the loader tests' thresholds."""
    _, _, rows = report
    for backend in ("dali", "device"):
        row = rows[f"features {backend} vs torch"]
        assert row["status"] == "ok", row
        figures = row["data"]
        assert figures["clips"] == 240
        assert all(math.isfinite(figures[k]) for k in ("max_db", "mean_db", "worst_clip_mean_db", "max_normalised"))
        assert 0 <= figures["mean_db"] <= figures["max_db"] and "dB" in row["detail"]
    assert rows["features dali vs torch"]["data"]["worst_clip_mean_db"] < doctor.DALI_MEAN_DB
    assert rows["features device vs torch"]["data"]["max_normalised"] <= doctor.DEVICE_NORMALISED


def test_every_model_trains_on_every_backend(report):
    """2 epochs of each model x backend: finite losses, each of the 32 test clips evaluated once."""
    _, _, rows = report
    for model in list_models():
        for backend in BACKENDS:
            row = rows[f"train {model} {backend}"]
            assert row["status"] == "ok", row
            assert len(row["data"]["losses"]) == 2 and all(math.isfinite(x) for x in row["data"]["losses"])
            assert row["data"]["test_clips"] == 32 and "32 test clips once" in row["detail"]
            assert row["data"]["precision"] == ("bf16" if torch.cuda.is_available() or cpu_has_bf16() else "no")


def test_throughput_rows(report):
    """Feature and training clips/s per backend, from the bench functions."""
    _, _, rows = report
    for backend in BACKENDS:
        features, training = rows[f"feature clips/s {backend}"], rows[f"train clips/s {backend}"]
        assert features["status"] == training["status"] == "ok", (features, training)
        assert features["data"]["clips"] == 240 and features["data"]["clips_per_s"] > 0
        assert training["data"]["clips_per_s"] > 0 and 0 <= training["data"]["data_wait"] <= 1
        assert training["data"]["peak_mb"] > 0 and "clips/s" in training["detail"]


def test_a_failing_check_is_a_failed_row_and_exit_status_1(tmp_path, capsys):
    """The runner: a check's return value is an ok row, Skip a skipped row, any exception a FAILED row with the
    error and its traceback; the command carries on and exits 1 when a row FAILED, 0 otherwise."""
    def fine(ctx):
        print("noise from a check")  # captured, not in the table
        return "all good"

    def not_here(ctx):
        raise doctor.Skip("no GPU")

    def broken(ctx):
        raise RuntimeError("the accelerator caught fire")

    out = tmp_path / "doctor.json"
    checks = [("fine", fine), ("broken", broken), ("not here", not_here)]
    assert doctor.main(["--json", str(out)], checks=checks) == 1
    data = json.loads(out.read_text())
    assert data["exit_status"] == 1
    assert [(r["name"], r["status"]) for r in data["rows"]] == [("fine", "ok"), ("broken", "FAILED"),
                                                                ("not here", "skipped")]
    broken_row = data["rows"][1]
    assert broken_row["detail"] == "RuntimeError: the accelerator caught fire"
    assert "Traceback" in broken_row["data"]["traceback"]
    printed = capsys.readouterr().out
    assert "FAILED" in printed and "noise from a check" not in printed and "1 FAILED" in printed
    assert doctor.main(["--json", str(out)], checks=[("fine", fine), ("not here", not_here)]) == 0
