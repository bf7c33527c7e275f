"""The trainer for real: train.py and accelerate launch in subprocesses on a tiny generated corpus."""
import json
import math

import numpy as np
import pytest
import soundfile as sf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ravdess_dist.checkpoint import load_checkpoint, save_checkpoint
from tests.corpus import tone
from tests.trainer_fixtures import run_python, tiny_config, tiny_shards, train_args

SIGNAL_AT = """
import os, signal, sys
from ravdess_dist import trainer
calls, original = 0, trainer.Run.should_stop
def should_stop(self):
    global calls
    calls += 1
    if calls == {step}:
        os.kill(os.getpid(), signal.{signal})
    return original(self)
trainer.Run.should_stop = should_stop
sys.argv = ["train.py", *sys.argv[1:]]
exec(open("train.py").read())
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Shards of six generated actors and the tiny config."""
    tmp = tmp_path_factory.mktemp("trainer")
    return tmp, tiny_shards(tmp / "data"), tiny_config(tmp / "tiny.yaml")


def train(setup, run, *extra, signal_at=None):
    """Run train.py (optionally signalling itself at a step) and return the process."""
    tmp, shards, config = setup
    args = train_args(tmp, shards, config, run, *extra)
    if signal_at:
        step, sig = signal_at
        return run_python(["-c", SIGNAL_AT.replace("{step}", str(step)).replace("{signal}", sig), *args])
    return run_python(["train.py", *args])


def metrics(setup, run) -> dict:
    """metrics.json of a finished run."""
    return json.loads((setup[0] / "models" / run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def trained(setup):
    """One finished 4-epoch run, shared by the tests that inspect its outputs."""
    proc = train(setup, "base", "--epochs", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return setup[0] / "models/base"


def test_run_writes_checkpoints_metrics_and_predictions(trained, setup):
    """best/last checkpoints, config, confusion matrix, metrics; each test clip predicted exactly once."""
    for name in ("best.pt", "last.pt", "config.yaml", "confusion_matrix.png", "metrics.json", "ranks.json"):
        assert (trained / name).is_file(), name
    m = metrics(setup, "base")
    assert m["classes"] == ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
    assert m["split"]["test"] and not set(m["split"]["test"]) & set(m["split"]["train"] + m["split"]["val"])
    assert m["test"]["clips"] == 32 * len(m["split"]["test"]) == np.sum(m["confusion_matrix"])
    preds = json.loads((trained / "predictions.json").read_text())
    assert len({p["key"] for p in preds}) == len(preds) == m["test"]["clips"]
    assert {int(p["key"][-2:]) for p in preds} == set(m["split"]["test"])
    assert m["test"]["ua"] > 0.25  # tones encode the emotion: well above chance (12.5 %)
    assert len(m["history"]) == 4 and 0 <= m["best_epoch"] < 4


def test_tensorboard_has_the_expected_tags(trained):
    """Scalars per epoch, input and confusion-matrix images, hyper-parameters, read back from the event files."""
    scalars, images = {}, set()
    for events in (trained.parent.parent / "runs" / "base").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        scalars |= {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
        images |= set(acc.Tags()["images"])
    assert {"train/loss", "train/lr", "train/clips_per_s", "train/data_wait_fraction", "val/wa", "val/ua",
            "val/macro_f1", "test/ua", "hparam/test_ua"} <= set(scalars)
    assert {"inputs/features", "test/confusion_matrix"} <= images
    assert scalars["val/ua"] == scalars["train/loss"] == [0, 1, 2, 3]


def launch_two(setup, run, *extra, port: int, script: str = "train.py"):
    """`accelerate launch --multi_gpu --num_processes 2` of SCRIPT (or `-m MODULE`) on CPU; the finished process."""
    tmp, shards, config = setup
    return run_python(["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                       "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), *script.split(),
                       *train_args(tmp, shards, config, run, *extra)])


@pytest.fixture(scope="module")
def ddp(setup):
    """A finished two-process run of 2 epochs."""
    proc = launch_two(setup, "ddp", "--epochs", "2", port=29731)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return metrics(setup, "ddp")


def test_two_process_ddp_through_accelerate_launch(setup, ddp):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU: 2 ranks, disjoint data, identical weights."""
    tmp, m = setup[0], ddp
    assert m["world_size"] == 2 and len(m["weight_checksums"]) == 2 and len(set(m["weight_checksums"])) == 1
    parts = json.loads((tmp / "models/ddp/ranks.json").read_text())
    keys = [set(p["train_keys_epoch0"]) for p in parts]
    assert len(keys) == 2 and keys[0] and keys[1] and not keys[0] & keys[1]
    assert len(keys[0] | keys[1]) == 32 * len(m["split"]["train"])
    assert m["test"]["clips"] == 32 * len(m["split"]["test"])  # each test clip counted once across ranks


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(trained, setup):
    """Killed with SIGKILL in epoch 2, resumed from last.pt: the same final metrics as the run that was not killed."""
    proc = train(setup, "killed", "--epochs", "4", signal_at=(2 * 8 + 3, "SIGKILL"))  # 8 steps per epoch
    assert proc.returncode == -9
    assert load_checkpoint(setup[0] / "models/killed/last.pt")["epoch"] == 2
    proc = train(setup, "killed", "--epochs", "4", "--resume", str(setup[0] / "models/killed"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from epoch 2 step 0" in proc.stdout
    a, b = metrics(setup, "base"), metrics(setup, "killed")
    assert a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]
    assert [h["loss"] for h in a["history"]] == pytest.approx([h["loss"] for h in b["history"]], abs=1e-6)


def test_sigterm_saves_a_checkpoint_and_resume_continues(setup):
    """SIGTERM (a cluster's preemption) mid-epoch: checkpoint at that step, exit 143, resume finishes the run."""
    proc = train(setup, "preempted", "--epochs", "3", signal_at=(8 + 5, "SIGTERM"))
    assert proc.returncode == 143, proc.stderr[-2000:]
    state = load_checkpoint(setup[0] / "models/preempted/last.pt")
    assert (state["epoch"], state["step"]) == (1, 5)
    proc = train(setup, "preempted", "--epochs", "3", "--resume", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from epoch 1 step 5" in proc.stdout
    assert [h["epoch"] for h in metrics(setup, "preempted")["history"]] == [0, 1, 2]


def test_two_process_preemption_mid_epoch_resumes_exactly(setup, ddp):
    """Both ranks signalled in epoch 1 (as SLURM signals every task): one checkpoint at that step holding each rank's
    random state; the resumed two-process run ends with exactly the uninterrupted run's losses and test metrics."""
    script = setup[0] / "signal_at.py"
    script.write_text(SIGNAL_AT.replace("{step}", str(4 + 2)).replace("{signal}", "SIGTERM"))  # 4 steps per epoch
    proc = launch_two(setup, "ddp-preempted", "--epochs", "2", port=29732, script=str(script))
    assert proc.returncode != 0 and "checkpoint saved at epoch 1 step 2" in proc.stdout, proc.stderr[-3000:]
    state = load_checkpoint(setup[0] / "models/ddp-preempted/last.pt")
    assert (state["epoch"], state["step"]) == (1, 2) and len(state["rng"]) == 2
    assert not (state["rng"][0]["torch"] == state["rng"][1]["torch"]).all()  # each rank's own generator
    proc = launch_two(setup, "ddp-preempted", "--epochs", "2", "--resume", "auto", port=29733)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from epoch 1 step 2" in proc.stdout
    resumed = metrics(setup, "ddp-preempted")
    assert resumed["test"] == ddp["test"] and resumed["weight_checksums"] == ddp["weight_checksums"]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in ddp["history"]]  # epoch 1: all 4 steps


def test_bf16_autocast_on_cpu(setup):
    """--mixed-precision bf16 trains on a CPU with finite losses."""
    proc = train(setup, "bf16", "--epochs", "1", "--mixed-precision", "bf16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = metrics(setup, "bf16")
    assert m["mixed_precision"] == "bf16" and math.isfinite(m["history"][0]["loss"])


def test_dali_backend_trains_and_evaluates(setup):
    """--backend dali (CPU operators here) trains, and evaluates every test clip exactly once."""
    proc = train(setup, "dali", "--epochs", "1", "--backend", "dali")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = metrics(setup, "dali")
    assert math.isfinite(m["history"][0]["loss"]) and m["test"]["clips"] == 32 * len(m["split"]["test"])


@pytest.mark.parametrize("extra, message", [
    (["--folds", "3", "--test-actors", "1", "--val-actors", "2"], "exclude each other"),
    (["--mixed-precision", "fp16"], "fp16 needs a GPU"),
    (["--test-actors", "1", "--val-actors", "9"], r"actor\(s\) \[9\] are not in the shards"),
    (["--epochs", "0"], "epochs must be positive"),
])
def test_inconsistent_options_fail_before_training(setup, extra, message):
    """Bad option combinations: a one-line error and a non-zero exit, no run folder."""
    proc = train(setup, "bad", *extra)
    assert proc.returncode != 0 and message.split("\\")[0].strip("r") in proc.stderr.replace("\\", "")
    assert "Traceback" not in proc.stderr
    assert not (setup[0] / "models/bad/last.pt").exists()


def test_unknown_yaml_key_is_named(setup, tmp_path):
    """A typo in a config file names the file and the key."""
    config = tiny_config(tmp_path / "typo.yaml", learning_rate=0.1)
    proc = run_python(["train.py", "--config", str(config), "--shards", str(setup[1])])
    assert proc.returncode != 0 and "typo.yaml" in proc.stderr and "learning_rate" in proc.stderr


def test_checkpoint_round_trip_and_corrupt_file(tmp_path, trained):
    """A checkpoint survives save/load with weights_only; a corrupt or foreign file is a clear error."""
    state = load_checkpoint(trained / "best.pt")
    copy = save_checkpoint(tmp_path / "copy.pt", state)
    again = load_checkpoint(copy)
    assert again["classes"] == state["classes"] and again["epoch"] == state["epoch"]
    assert all((again["model"][k] == v).all() for k, v in state["model"].items())
    copy.write_bytes(copy.read_bytes()[:1000])
    with pytest.raises(ValueError, match="copy.pt: not a readable checkpoint"):
        load_checkpoint(copy)
    save_checkpoint(tmp_path / "foreign.pt", {"weights": 1})
    with pytest.raises(ValueError, match="not a ravdess_dist checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_resume_with_another_model_is_refused(trained, setup):
    """Resuming a hybrid checkpoint as a cnn names the mismatch."""
    proc = train(setup, "other", "--model", "cnn", "--resume", str(trained / "last.pt"))
    assert proc.returncode != 0 and "checkpoint has model='hybrid'" in proc.stderr


def test_predict_stereo_48k_file(trained, tmp_path):
    """predict resamples and downmixes any file, and prints class probabilities that sum to 1."""
    wav = tmp_path / "stereo.wav"
    sf.write(wav, tone(2.2, 48000, 330, channels=2), 48000)
    proc = run_python(["-m", "ravdess_dist.predict", str(trained), str(wav), "--json"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["file"] == str(wav) and len(out["probabilities"]) == 8
    assert sum(out["probabilities"].values()) == pytest.approx(1, abs=1e-3)
    assert out["emotion"] == max(out["probabilities"], key=out["probabilities"].get)
    proc = run_python(["-m", "ravdess_dist.predict", str(trained), str(tmp_path / "missing.wav")])
    assert proc.returncode == 1 and "missing.wav" in proc.stderr


def test_cross_validation_aggregates_every_fold(setup):
    """cv with 3 folds trains 3 runs and summarises 3 results with mean and std."""
    tmp, shards, config = setup
    proc = run_python(["-m", "ravdess_dist.cv", *train_args(tmp, shards, config, "cv3", "--folds", "3", "--epochs", "1")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp / "models/cv3/summary.json").read_text())
    assert len(summary["runs"]) == 3
    assert sorted(a for r in summary["runs"] for a in r["test_actors"]) == [1, 2, 3, 4, 5, 6]
    [row] = summary["summary"]
    assert row["folds"] == 3 and row["ua_mean"] == pytest.approx(np.mean([r["ua"] for r in summary["runs"]]))
    assert "± " in (tmp / "models/cv3/summary.md").read_text()


def test_strong_model_trained_on_both_intensities_never_predicts_neutral(setup, tmp_path):
    """train_intensities=both for strong: the training clips are both intensities without neutral, the model has the
    7 strong classes (so it cannot predict neutral), the test is strong clips only, and predict gives 7 classes."""
    proc = train(setup, "both", "--epochs", "2", "--intensity", "strong", "--backend", "device", "train_intensities=both")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = metrics(setup, "both")
    assert m["classes"] == ["calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
    keys = json.loads((setup[0] / "models/both/ranks.json").read_text())[0]["train_keys_epoch0"]
    assert {k.split("-")[3] for k in keys} == {"01", "02"} and all(k.split("-")[2] != "01" for k in keys)
    assert len(keys) == 2 * 28 * len(m["split"]["train"])  # 28 strong + 28 normal non-neutral clips per actor
    preds = json.loads((setup[0] / "models/both/predictions.json").read_text())
    assert len(preds) == 28 * len(m["split"]["test"]) and all(p["key"].split("-")[3] == "02" for p in preds)
    wav = tmp_path / "clip.wav"
    sf.write(wav, tone(0.7, 16000, 330), 16000)
    out = run_python(["-m", "ravdess_dist.predict", str(setup[0] / "models/both"), str(wav), "--json"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert sorted(json.loads(out.stdout)["probabilities"]) == sorted(m["classes"])


def test_device_backend_with_every_lever(setup):
    """Speech spans, 3 evaluation windows, speed perturbation, mixup and (transductive) speaker normalisation: trains
    above chance on the tones, every test clip once, and metrics.json says the run used the test actors' audio."""
    proc = train(setup, "levers", "--epochs", "4", "--backend", "device", "features.speech_top_db=30",
                 "eval_crops=3", "augment.speed=[0.9,1.0,1.1]", "augment.mixup_alpha=0.2", "--speaker-norm")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = metrics(setup, "levers")
    assert m["transductive"] is True and m["test"]["clips"] == 32 * len(m["split"]["test"])
    assert all(math.isfinite(h["loss"]) for h in m["history"]) and m["test"]["ua"] > 0.2


def test_ensemble_of_two_runs_and_predict_with_both(trained, setup, tmp_path):
    """Two runs of the same split: the ensemble's metrics cover every test clip; predict averages both checkpoints."""
    proc = train(setup, "second", "--epochs", "2", "--seed", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [trained, setup[0] / "models/second"]
    out = tmp_path / "ens"
    proc = run_python(["-m", "ravdess_dist.ensemble", *map(str, runs), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ens = json.loads((out / "metrics.json").read_text())
    assert ens["test"]["clips"] == 32 * len(ens["test_actors"]) and len(ens["members"]) == 2
    wav = tmp_path / "clip.wav"
    sf.write(wav, tone(0.7, 16000, 330), 16000)
    single = [json.loads(run_python(["-m", "ravdess_dist.predict", str(r), str(wav), "--json"]).stdout) for r in runs]
    both = json.loads(run_python(["-m", "ravdess_dist.predict", *map(str, runs), str(wav), "--json"]).stdout)
    for c, p in both["probabilities"].items():
        assert p == pytest.approx((single[0]["probabilities"][c] + single[1]["probabilities"][c]) / 2, abs=2e-4)


def test_cross_validation_with_two_processes_finishes_every_fold(setup):
    """`accelerate launch --multi_gpu --num_processes 2 -m ravdess_dist.cv`: the process group outlives each fold."""
    tmp = setup[0]
    proc = launch_two(setup, "cv2p", "--folds", "3", "--epochs", "1", port=29741, script="-m ravdess_dist.cv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp / "models/cv2p/summary.json").read_text())
    assert len(summary["runs"]) == 3
