"""ravdess_dist.ensemble: several finished runs of the same test actors, their probabilities averaged."""
import json

from tests.trainer_fixtures import run_python, run_train


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
