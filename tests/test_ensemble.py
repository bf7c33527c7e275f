"""ravdess_dist.ensemble: several finished runs of the same test actors, their probabilities averaged."""
import json
import shutil

import numpy as np
import pytest
import torch

from ravdess_dist.ensemble import main as ensemble_main, restrict

from tests.trainer_fixtures import run_python, run_train, train_args


@pytest.fixture(scope="module")
def device_seeds(setup):
    """Two 1-epoch runs of the device backend (the one that evaluates several windows per clip), seeds 0 and 1."""
    runs = []
    for seed in (0, 1):
        proc = run_train(setup, f"dev-seed{seed}", "--epochs", "1", "--seed", str(seed), "--backend", "device")
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(setup[0] / "models" / f"dev-seed{seed}")
    return runs


def assert_rescored_alone_gives_its_own_probabilities(run, out):
    """RUN re-scored alone by the ensemble (into OUT) gives every clip the probabilities its own test wrote."""
    assert ensemble_main([str(run), "--out", str(out)]) == 0
    own, again = (json.loads((d / "predictions.json").read_text()) for d in (run, out))
    by_key = {r["key"]: r["probs"] for r in again}
    assert len(by_key) == len(own) and all(r["probs"] == pytest.approx(by_key[r["key"]], abs=2e-6) for r in own)


def test_ensemble_of_two_runs_scores_every_test_clip(two_seeds, tmp_path):
    """Two runs of the same split: the ensemble's metrics cover every test clip once and list both members."""
    out = tmp_path / "ens"
    proc = run_python(["-m", "ravdess_dist.ensemble", *map(str, two_seeds), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ens = json.loads((out / "metrics.json").read_text())
    assert ens["test"]["clips"] == 32 * len(ens["test_actors"]) and len(ens["members"]) == 2
    assert ens["test"]["clips"] == sum(map(sum, ens["confusion_matrix"]))
    assert (out / "confusion_matrix.png").is_file() and "UA" in proc.stdout


def test_ensemble_of_runs_with_other_test_actors_is_refused(two_seeds, setup, tmp_path):
    """Members must share the test set: a run of another fold is an error naming both runs' test actors."""
    proc = run_train(setup, "other-fold", "--epochs", "1", "--fold", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    bad = run_python(["-m", "ravdess_dist.ensemble", str(two_seeds[0]), str(setup[0] / "models/other-fold"),
                      "--out", str(tmp_path / "bad")])
    assert bad.returncode == 2 and "an ensemble needs the same test set" in bad.stderr
    assert not (tmp_path / "bad" / "metrics.json").exists()


def test_ensemble_of_predictions_equals_the_ensemble_of_checkpoints(two_seeds, tmp_path):
    """--predictions averages the runs' own predictions.json (no checkpoint read): the same members, confusion matrix
    and per-clip probabilities as scoring their best.pt; its own predictions.json can be a member in turn."""
    runs = [tmp_path / name for name in ("a", "b")]
    for src, dst in zip(two_seeds, runs):  # what a results/ folder keeps: no checkpoints
        dst.mkdir()
        for name in ("metrics.json", "predictions.json"):
            shutil.copy(src / name, dst / name)
    scored = run_python(["-m", "ravdess_dist.ensemble", *map(str, two_seeds), "--out", str(tmp_path / "scored")])
    read = run_python(["-m", "ravdess_dist.ensemble", *map(str, runs), "--predictions", "--out", str(tmp_path / "read")])
    assert scored.returncode == 0 and read.returncode == 0, scored.stderr[-2000:] + read.stderr[-2000:]
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("scored", "read"))
    assert a["confusion_matrix"] == b["confusion_matrix"] and a["members"] == b["members"] and b["source"] == "predictions"
    pa, pb = (json.loads((tmp_path / d / "predictions.json").read_text()) for d in ("scored", "read"))
    assert [r["key"] for r in pa] == [r["key"] for r in pb] and len(pa) == a["test"]["clips"]
    assert all(x["probs"] == pytest.approx(y["probs"], abs=1e-5) for x, y in zip(pa, pb))
    nested = run_python(["-m", "ravdess_dist.ensemble", str(tmp_path / "read"), "--predictions",
                         "--out", str(tmp_path / "nested")])
    assert nested.returncode == 0, nested.stderr[-2000:]
    assert json.loads((tmp_path / "nested/metrics.json").read_text())["confusion_matrix"] == b["confusion_matrix"]


def test_ensemble_of_predictions_refuses_what_needs_a_checkpoint(two_seeds, tmp_path, capsys):
    """--predictions with a re-scoring option, with another intensity, or on rows without every class's probability
    (predictions of an older trainer) is a one-line error naming the cause; nothing is written."""
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(two_seeds[0] / "metrics.json", old / "metrics.json")
    rows = json.loads((two_seeds[0] / "predictions.json").read_text())
    (old / "predictions.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "probs"} for r in rows]))
    cases = [([str(two_seeds[0]), "--eval-crops", "3"], "--eval-crops re-score(s) a checkpoint"),
             ([str(two_seeds[0]), "--checkpoint", "last"], "--checkpoint last re-score(s) a checkpoint"),
             ([str(two_seeds[0]), "--intensity", "strong"], "its predictions are of normal clips"),
             ([str(old)], "every row needs `probs`")]
    for i, (args, message) in enumerate(cases):
        code = ensemble_main([*args, "--predictions", "--out", str(tmp_path / f"o{i}")])
        err = capsys.readouterr().err
        assert code == 2 and message in err, (args, err)
        assert not (tmp_path / f"o{i}").exists()


def test_a_run_alone_rescored_reproduces_its_own_test_metrics(two_seeds, tmp_path):
    """An ensemble of one run, scored like the trainer (its test actors, its own windows), gives the run's own test
    metrics: the re-scoring path is the trainer's evaluation."""
    proc = run_python(["-m", "ravdess_dist.ensemble", str(two_seeds[0]), "--out", str(tmp_path / "one")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    own = json.loads((two_seeds[0] / "metrics.json").read_text())
    alone = json.loads((tmp_path / "one/metrics.json").read_text())
    assert alone["confusion_matrix"] == own["confusion_matrix"]
    assert alone["test"]["ua"] == pytest.approx(own["test"]["ua"]) and alone["eval_crops"] == [1]


def test_a_bf16_run_rescored_gives_its_own_probabilities(setup, tmp_path):
    """A run trained and tested under bf16 autocast is re-scored under the same autocast: every clip's probabilities
    equal the ones its own test wrote (float32 re-scoring would differ by about 1e-3)."""
    proc = run_train(setup, "bf16-member", "--epochs", "1", "--mixed-precision", "bf16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = setup[0] / "models" / "bf16-member"
    assert_rescored_alone_gives_its_own_probabilities(run, tmp_path / "again")


def test_checkpoint_last_scores_the_last_epoch(two_seeds, tmp_path):
    """--checkpoint last scores each run's last.pt: the same scores as a copy of the run whose best.pt is its last.pt,
    and the metrics name the checkpoint and the last epoch's index."""
    copy = tmp_path / "copy"
    shutil.copytree(two_seeds[0], copy)
    shutil.copy(copy / "last.pt", copy / "best.pt")
    for args, out in (([str(two_seeds[0]), "--checkpoint", "last"], "last"), ([str(copy)], "copy")):
        proc = run_python(["-m", "ravdess_dist.ensemble", *args, "--out", str(tmp_path / out)])
        assert proc.returncode == 0, proc.stderr[-3000:]
    last, copied = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("last", "copy"))
    assert last["confusion_matrix"] == copied["confusion_matrix"] and last["members"] == copied["members"]
    assert last["checkpoint"] == "last" and copied["checkpoint"] == "best" and last["best_epoch"] == [1]


def test_rescoring_on_validation_actors_with_other_windows(device_seeds, two_seeds, tmp_path):
    """--actors val scores the validation actors (never the test ones), --eval-crops K scores K windows per clip,
    --eval-speeds adds speed views of each; a torch-backend run cannot be scored with several windows or speeds (its
    path has one plain window): an error, not a silent single window."""
    out = tmp_path / "val3"
    proc = run_python(["-m", "ravdess_dist.ensemble", *map(str, device_seeds), "--out", str(out), "--actors", "val",
                       "--eval-crops", "3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["scored"] == "val" and "test" not in m and m["eval_crops"] == [3, 3]
    assert m["val_actors"] == sorted(m["split"]["val"]) and not set(m["val_actors"]) & set(m["split"]["test"])
    assert m["val"]["clips"] == 32 * len(m["val_actors"]) == sum(map(sum, m["confusion_matrix"]))
    one = run_python(["-m", "ravdess_dist.ensemble", str(device_seeds[0]), "--out", str(tmp_path / "val1"),
                      "--actors", "val", "--eval-crops", "1"])
    assert one.returncode == 0, one.stderr[-3000:]
    assert json.loads((tmp_path / "val1/metrics.json").read_text())["eval_crops"] == [1]
    views = run_python(["-m", "ravdess_dist.ensemble", str(device_seeds[0]), "--out", str(tmp_path / "views"),
                        "--actors", "val", "--eval-crops", "1", "--eval-speeds", "0.9,1.0,1.1"])
    assert views.returncode == 0, views.stderr[-3000:]
    m = json.loads((tmp_path / "views/metrics.json").read_text())
    assert m["eval_speeds"] == [0.9, 1.0, 1.1] and m["val"]["clips"] == 32 * len(m["val_actors"])
    typo = run_python(["-m", "ravdess_dist.ensemble", str(device_seeds[0]), "--out", str(tmp_path / "t"),
                       "--eval-speeds", "0.9,fast"])
    assert typo.returncode == 2 and "comma-separated speed factors" in typo.stderr
    bad = run_python(["-m", "ravdess_dist.ensemble", str(two_seeds[0]), "--out",
                      str(tmp_path / "bad"), "--eval-crops", "3"])
    assert bad.returncode == 2 and "eval_crops=3 need(s) a run of the device backend, not torch" in bad.stderr
    slow = run_python(["-m", "ravdess_dist.ensemble", str(two_seeds[0]), "--out", str(tmp_path / "bad"),
                       "--eval-speeds", "0.9,1.0"])
    assert slow.returncode == 2 and "eval_speeds=[0.9, 1.0] need(s) a run of the device backend" in slow.stderr


def test_cv_ensemble_on_validation_actors_summarises_them(setup, tmp_path):
    """`cv ensemble CV_DIR --actors val --eval-crops 2`: each fold re-scored on its validation actors; the summary
    says so (summary.json "scored", summary.md's first line, config.yaml's scoring)."""
    tmp, shards, config = setup
    proc = run_python(["-m", "ravdess_dist.cv", *train_args(tmp, shards, config, "cv-rescore", "--folds", "3",
                                                             "--epochs", "1", "--backend", "device")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "rescored"
    proc = run_python(["-m", "ravdess_dist.cv", "ensemble", str(tmp / "models/cv-rescore"), "--out", str(out),
                       "--actors", "val", "--eval-crops", "2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] == "val" and len(summary["runs"]) == 3
    md = (out / "summary.md").read_text()
    assert md.startswith("Scored on the folds' validation actors.") and "| validation actors |" in md
    for row in summary["runs"]:  # the actors named are the ones scored: each fold's validation actors
        assert f"| {row['val_actors']} |" in md and not set(row["val_actors"]) & set(row["test_actors"])
    assert "scored: val" in (out / "config.yaml").read_text() and "eval_crops: 2" in (out / "config.yaml").read_text()
    assert np.sum(summary["confusion_matrix"]) == 32 * 6  # each actor is one fold's validation actor once
    proc = run_python(["-m", "ravdess_dist.cv", "ensemble", str(tmp / "models/cv-rescore"), "--out", str(tmp_path / "l"),
                       "--checkpoint", "last"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint: last" in (tmp_path / "l/config.yaml").read_text()
    assert [r["best_epoch"] for r in json.loads((tmp_path / "l/summary.json").read_text())["runs"]] == [[0]] * 3
    # the normal runs scored on the strong task: 7 classes, the summary's rows and config say strong
    proc = run_python(["-m", "ravdess_dist.cv", "ensemble", str(tmp / "models/cv-rescore"), "--out", str(tmp_path / "s"),
                       "--intensity", "strong"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    strong = json.loads((tmp_path / "s/summary.json").read_text())
    assert {r["intensity"] for r in strong["runs"]} == {"strong"} and np.shape(strong["confusion_matrix"]) == (7, 7)
    assert np.sum(strong["confusion_matrix"]) == 28 * 6 and "scored_intensity: strong" in (tmp_path / "s/config.yaml").read_text()
    # a results/-style copy of the CV (metrics.json and predictions.json per fold, no checkpoints): `--predictions`
    # gives back the CV's own test figures, fold by fold
    kept = tmp_path / "kept"
    for fold in range(3):
        (kept / f"fold{fold}").mkdir(parents=True)
        for name in ("metrics.json", "predictions.json"):
            shutil.copy(tmp / f"models/cv-rescore/fold{fold}" / name, kept / f"fold{fold}" / name)
    proc = run_python(["-m", "ravdess_dist.cv", "ensemble", str(kept), "--predictions", "--out", str(tmp_path / "p")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = json.loads((tmp / "models/cv-rescore/summary.json").read_text())
    again = json.loads((tmp_path / "p/summary.json").read_text())
    assert [r["ua"] for r in again["runs"]] == pytest.approx([r["ua"] for r in trained["runs"]])
    assert again["confusion_matrix"] == trained["confusion_matrix"] and "source: predictions" in (tmp_path / "p/config.yaml").read_text()


def test_restricting_probabilities_is_the_softmax_of_the_kept_logits():
    """An 8-class model's probabilities restricted to the 7 strong classes equal the softmax of those 7 logits."""
    classes = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
    logits = torch.randn(5, 8)
    kept = restrict(logits.softmax(dim=1), classes, classes[1:])
    assert torch.allclose(kept, logits[:, 1:].softmax(dim=1), atol=1e-6)
    assert torch.allclose(restrict(logits.softmax(dim=1), classes, ["sad", "calm"]), logits[:, [3, 1]].softmax(dim=1))


def test_a_normal_run_scores_the_strong_task_without_neutral(two_seeds, setup, tmp_path):
    """--intensity strong: an 8-class normal run scores its test actors' strong clips on the 7 strong classes (so it
    cannot predict neutral), beside a strong run; without --intensity the two class lists are an error that
    names the flag, and a strong run cannot score the normal task (it lacks neutral)."""
    proc = run_train(setup, "strong-member", "--epochs", "1", "--intensity", "strong")
    assert proc.returncode == 0, proc.stderr[-3000:]
    strong, normal = setup[0] / "models" / "strong-member", two_seeds[0]
    out = tmp_path / "cross"
    proc = run_python(["-m", "ravdess_dist.ensemble", str(strong), str(normal), "--intensity", "strong",
                       "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["intensity"] == "strong" and m["member_intensities"] == ["strong", "normal"]
    assert "neutral" not in m["classes"] and len(m["classes"]) == 7 and np.shape(m["confusion_matrix"]) == (7, 7)
    assert m["test"]["clips"] == 28 * len(m["test_actors"]) == sum(map(sum, m["confusion_matrix"]))
    mixed = run_python(["-m", "ravdess_dist.ensemble", str(strong), str(normal), "--out", str(tmp_path / "b")])
    assert mixed.returncode == 2 and "--intensity scores every member on one intensity's task" in mixed.stderr
    lacking = run_python(["-m", "ravdess_dist.ensemble", str(strong), "--intensity", "normal", "--out", str(tmp_path / "c")])
    assert lacking.returncode == 2 and "lack ['neutral'] of the normal task" in lacking.stderr


def test_an_enrolment_normalised_run_rescored_uses_the_same_statistics(setup, tmp_path):
    """A speaker_stats=other_intensity run (normal: each actor normalised by its strong clips) re-scored alone gives
    every clip's own probabilities back (the re-scoring takes the statistics from the same clips), and scoring it on
    the strong task is refused: its statistics come from those very clips."""
    proc = run_train(setup, "enrol-member", "--epochs", "1", "--backend", "device", "--speaker-norm",
                     "speaker_stats=other_intensity")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = setup[0] / "models" / "enrol-member"
    assert_rescored_alone_gives_its_own_probabilities(run, tmp_path / "again")
    strong = run_python(["-m", "ravdess_dist.ensemble", str(run), "--intensity", "strong", "--out", str(tmp_path / "s")])
    assert strong.returncode == 2 and "speaker statistics come from the strong clips" in strong.stderr
