"""ravdess_dist.cv for real: folds in one process, as concurrent train.py processes, under a two-process launch;
summaries and `cv ensemble`."""
import json

import numpy as np
import pytest

from ravdess_dist.cv import slot_environment
from tests.trainer_fixtures import launch_two, run_python, train_args


def test_cross_validation_aggregates_every_fold(setup):
    """cv with 3 folds trains 3 runs and summarises 3 results with mean and std; `cv summarize` of the same runs gives
    the same summary, names a run that did not finish and refuses to average test with validation scores."""
    tmp, shards, config = setup
    proc = run_python(["-m", "ravdess_dist.cv", *train_args(tmp, shards, config, "cv3", "--folds", "3", "--epochs", "1")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp / "models/cv3/summary.json").read_text())
    assert len(summary["runs"]) == 3
    assert sorted(a for r in summary["runs"] for a in r["test_actors"]) == [1, 2, 3, 4, 5, 6]
    [row] = summary["summary"]
    assert row["folds"] == 3 and row["ua_mean"] == pytest.approx(np.mean([r["ua"] for r in summary["runs"]]))
    assert "± " in (tmp / "models/cv3/summary.md").read_text()
    assert np.sum(summary["confusion_matrix"]) == 32 * 6  # every actor's clips once, over the three test folds
    assert (tmp / "models/cv3/confusion_matrix.png").is_file() and (tmp / "models/cv3/config.yaml").is_file()
    # `cv summarize` of the finished folds (folders or metrics.json files) gives the same summary
    folds = [tmp / "models/cv3/fold0", tmp / "models/cv3/fold1", tmp / "models/cv3/fold2/metrics.json"]
    again = run_python(["-m", "ravdess_dist.cv", "summarize", *map(str, folds), "--out", str(tmp / "cv3-again")])
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp / "cv3-again/summary.json").read_text()) == summary
    # a run that did not finish is named; test and validation scores are not averaged together
    missing = run_python(["-m", "ravdess_dist.cv", "summarize", str(tmp / "models/cv3/fold9"), "--out", str(tmp / "x")])
    assert missing.returncode == 1 and missing.stderr.startswith("error: no metrics.json for") and "fold9" in missing.stderr
    rescored = json.loads((folds[0] / "metrics.json").read_text())
    rescored.update(scored="val", val=rescored.pop("test"))
    (tmp / "rescored.json").write_text(json.dumps(rescored))
    mixed = run_python(["-m", "ravdess_dist.cv", "summarize", str(tmp / "rescored.json"), str(folds[2]), "--out",
                        str(tmp / "x")])
    assert mixed.returncode == 1 and mixed.stderr.startswith("error: the runs score different actors")
    final = json.loads((folds[1] / "metrics.json").read_text())  # as a final model (--no-test) writes it
    final.update(run="final", test=None, confusion_matrix=None, split={**final["split"], "test": []})
    (tmp / "final.json").write_text(json.dumps(final))
    unscored = run_python(["-m", "ravdess_dist.cv", "summarize", str(tmp / "final.json"), str(folds[2]), "--out",
                           str(tmp / "x")])
    assert unscored.returncode == 1 and "run(s) ['final'] have no test figures" in unscored.stderr
    assert not (tmp / "x").exists()


def test_cross_validation_with_concurrent_fold_processes(setup):
    """cv --jobs 2: three folds as train.py processes, two at a time, each with its log; the same summary as in one
    process (every actor tested once). A fold that fails makes cv exit non-zero, naming the fold and its log.
    `cv ensemble` scores the folds' ensembles and refuses runs whose finished folds differ."""
    tmp, shards, config = setup
    proc = run_python(["-m", "ravdess_dist.cv", "--jobs", "2",
                       *train_args(tmp, shards, config, "cvj", "--folds", "3", "--epochs", "1")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp / "models/cvj/summary.json").read_text())
    assert [r["run"] for r in summary["runs"]] == ["cvj/fold0", "cvj/fold1", "cvj/fold2"]
    assert sorted(a for r in summary["runs"] for a in r["test_actors"]) == [1, 2, 3, 4, 5, 6]
    log1 = (tmp / "models/cvj/fold1.log").read_text()
    assert "run cvj/fold1:" in log1 and log1.startswith("cv: fold 1 in slot ") and "OMP_NUM_THREADS=" in log1
    # `cv export`: the CV without checkpoints (what results/ keeps), its logs without progress bars
    export = run_python(["-m", "ravdess_dist.cv", "export", str(tmp / "models/cvj"), "--out", str(tmp / "kept")])
    assert export.returncode == 0, export.stderr[-3000:]
    assert json.loads((tmp / "kept/summary.json").read_text()) == summary and not list((tmp / "kept").rglob("*.pt"))
    for fold in range(3):
        assert {p.name for p in (tmp / f"kept/fold{fold}").iterdir()} == {"metrics.json", "predictions.json",
                                                                          "confusion_matrix.png"}
        log = (tmp / f"kept/logs/fold{fold}.txt").read_text()
        assert f"run cvj/fold{fold}:" in log and "epoch 0: loss" in log and "\r" not in log and "it/s]" not in log
    unfinished = run_python(["-m", "ravdess_dist.cv", "export", str(tmp / "models"), "--out", str(tmp / "none")])
    assert unfinished.returncode == 1 and "no summary.json" in unfinished.stderr and not (tmp / "none").exists()
    bad = run_python(["-m", "ravdess_dist.cv", "--jobs=2", *train_args(tmp, shards, config, "cvbad", "--folds", "3",
                                                                      "--epochs", "1", "--shards", str(tmp / "none"))])
    assert bad.returncode != 0 and "fold(s) [0, 1, 2] failed" in bad.stderr and "cvbad/fold0.log" in bad.stderr
    # `cv ensemble`, fold by fold: an ensemble of a run with itself is that run, on every fold
    models = tmp / "models"
    ens = run_python(["-m", "ravdess_dist.cv", "ensemble", str(models / "cvj"), str(models / "cvj"), "--out",
                      str(tmp / "ens")])
    assert ens.returncode == 0, ens.stderr[-3000:]
    ensembled = json.loads((tmp / "ens/summary.json").read_text())
    assert [r["run"] for r in ensembled["runs"]] == ["ens/fold0", "ens/fold1", "ens/fold2"]
    assert [r["ua"] for r in ensembled["runs"]] == pytest.approx([r["ua"] for r in summary["runs"]], abs=1e-9)
    assert (tmp / "ens/fold1/confusion_matrix.png").is_file() and "ensemble_of" in (tmp / "ens/config.yaml").read_text()
    mismatch = run_python(["-m", "ravdess_dist.cv", "ensemble", str(models / "cvj"), str(models / "cvbad"), "--out",
                           str(tmp / "ens-bad")])
    assert mismatch.returncode != 0 and "same finished folds" in mismatch.stderr and "cvbad: none" in mismatch.stderr


def test_cross_validation_with_two_processes_finishes_every_fold(setup):
    """`accelerate launch --multi_gpu --num_processes 2 -m ravdess_dist.cv`: the process group outlives each fold."""
    tmp = setup[0]
    proc = launch_two(setup, "cv2p", "--folds", "3", "--epochs", "1", port=29741, script="-m ravdess_dist.cv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp / "models/cv2p/summary.json").read_text())
    assert len(summary["runs"]) == 3


@pytest.mark.parametrize("jobs, gpus, expected", [
    (2, [], [None, None]),  # CPUs: no GPU named
    (2, ["0", "1"], ["0", "1"]),  # one GPU per fold
    (6, ["0", "1"], ["0", "1", "0", "1", "0", "1"]),  # three folds on each GPU
    (3, ["GPU-aaaa"], ["GPU-aaaa"] * 3),  # all on the one GPU the parent may use
])
def test_concurrent_fold_slots_spread_over_the_gpus(jobs, gpus, expected):
    """Slot s of `cv --jobs N` sees GPU s mod G only, with cpu_count // N threads: no GPU gets more than its share."""
    envs = [slot_environment(slot, jobs, gpus, cpus=16) for slot in range(jobs)]
    assert [env.get("CUDA_VISIBLE_DEVICES") for env in envs] == expected
    assert {env["OMP_NUM_THREADS"] for env in envs} == {str(max(1, 16 // jobs))}
