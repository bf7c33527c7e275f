"""The trainer for real: train.py and accelerate launch in subprocesses on a tiny generated corpus."""
import json
import math
import shutil
import types
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ravdess_dist import trainer as trainer_module
from ravdess_dist.checkpoint import load_checkpoint, save_checkpoint
from ravdess_dist.config import load_config, to_dict
from ravdess_dist.data.contract import SHUFFLE_BUFFER
from ravdess_dist.data.factory import make_loader
from ravdess_dist.features import FeatureConfig
from ravdess_dist.graphed_step import GraphedStep
from ravdess_dist.models import create_model
from ravdess_dist.preemption import Preempted
from ravdess_dist.trainer import Run, weights_checksum
from shards.manifest import Manifest
from tests.corpus import tone
from tests.gpu import gpu
from tests.trainer_fixtures import TINY, launch_two, metrics, run_python, run_train, tiny_config, tiny_shards, train_args

# Sends itself SIGNAL just before the STEP-th training step of the process (counted over epochs from 1); the trainer
# looks at the flag every EVERY steps (and at an epoch's last step), so it stops at the next such step.
SIGNAL_AT = """
import os, signal, sys
sys.path.insert(0, os.getcwd())  # the checkout's package (the cwd), also when this runs as a script from elsewhere
from ravdess_dist import preemption, trainer
preemption.STOP_CHECK_EVERY = {every}
calls, original = 0, trainer.Run.train_step
def train_step(self, batch):
    global calls
    calls += 1
    if calls == {step}:
        os.kill(os.getpid(), signal.{signal})
    return original(self, batch)
trainer.Run.train_step = train_step
sys.argv = ["train.py", *sys.argv[1:]]
exec(open("train.py").read())
"""

# Rank 1 cannot read the run folder: load_checkpoint and Path.is_file of anything under --output-dir fail there. The
# main process alone must decide about and read checkpoints (resume and best.pt), every rank getting their content.
RANK1_BLIND = """
import os, pathlib, sys
sys.path.insert(0, os.getcwd())  # the checkout's package (the cwd), not an installed copy
from ravdess_dist import checkpoint, trainer
if int(os.environ["RANK"]) == 1:
    models = pathlib.Path(os.path.abspath(sys.argv[sys.argv.index("--output-dir") + 1]))
    def load_checkpoint(path):
        raise OSError(f"rank 1 cannot read {path}")
    trainer.load_checkpoint = checkpoint.load_checkpoint = load_checkpoint
    is_file = pathlib.Path.is_file
    def blind_is_file(self):
        if models in pathlib.Path(os.path.abspath(self)).parents:
            raise OSError(f"rank 1 cannot see {self}")
        return is_file(self)
    pathlib.Path.is_file = blind_is_file
sys.argv = ["train.py", *sys.argv[1:]]
exec(open("train.py").read())
"""


def signal_script(step: int, sig: str, every: int = 8) -> str:
    """SIGNAL_AT for one signal before training step STEP, the flag looked at every EVERY steps."""
    return SIGNAL_AT.replace("{step}", str(step)).replace("{signal}", sig).replace("{every}", str(every))


def train(setup, run, *extra, signal_at=None):
    """Run train.py (optionally signalling itself before a step: (step, signal[, every])) and return the process."""
    if signal_at:
        tmp, shards, config = setup
        return run_python(["-c", signal_script(*signal_at), *train_args(tmp, shards, config, run, *extra)])
    return run_train(setup, run, *extra)


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
    # every class's probability, in class order, so that ensembles need no checkpoint (ensemble --predictions)
    assert all(list(p["probs"]) == m["classes"] and sum(p["probs"].values()) == pytest.approx(1, abs=1e-4)
               and p["pred"] == max(p["probs"], key=p["probs"].get) for p in preds)
    assert m["test"]["ua"] > 0.25  # tones encode the emotion: well above chance (12.5 %)
    assert len(m["history"]) == 4 and 0 <= m["best_epoch"] < 4


def test_metrics_say_where_the_time_went(trained, setup):
    """metrics.json's timing: the training steps are the epochs' own seconds; the other parts are measured, and they
    and the training steps fit in the wall time; outside_train_steps is the rest of the wall time."""
    t = metrics(setup, "base")["timing"]
    assert set(t) == {"setup", "setup_device", "setup_loaders", "setup_model", "train_steps", "validation",
                      "checkpoints", "test", "outside_train_steps", "wall"}
    parts = [t[k] for k in ("setup_device", "setup_loaders", "setup_model")]
    assert all(p >= 0 for p in parts) and sum(parts) <= t["setup"] + 0.03  # where setup's seconds went (2 decimals)
    epochs = sum(h["seconds"] for h in metrics(setup, "base")["history"])
    assert t["train_steps"] == pytest.approx(epochs, abs=0.02)
    assert all(t[k] > 0 for k in ("setup", "validation", "checkpoints", "test"))
    assert sum(t[k] for k in ("setup", "train_steps", "validation", "checkpoints", "test")) <= t["wall"] + 0.05
    assert t["outside_train_steps"] == pytest.approx(t["wall"] - t["train_steps"], abs=0.02)
    assert metrics(setup, "base")["wall_seconds"] == pytest.approx(t["wall"], abs=0.06)  # one clock for both


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
    assert "train/data_wait_device_fraction" not in scalars  # a CPU has no GPU clock: no such curve, not zeros


def test_a_cpu_run_reports_its_data_wait_on_the_host_clock_alone(trained, setup):
    """Each epoch's `data_wait` is a share of its wall time; `data_wait_device` (a GPU's clock) is None on a CPU."""
    history = metrics(setup, "base")["history"]
    assert all(0 < h["data_wait"] < 1 and h["data_wait_device"] is None for h in history)


@pytest.fixture(scope="module")
def ddp(setup):
    """A finished two-process run of 2 epochs."""
    # checkpoint_every_s: due after every epoch, but through the main process's clock: the ranks' collective runs
    proc = launch_two(setup, "ddp", "--epochs", "2", "checkpoint_every_s=1e-9", port=29731)
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
    proc = train(setup, "killed", "--epochs", "4", signal_at=(2 * 8 + 3, "SIGKILL"))  # 8 steps per epoch: step 2 of epoch 2
    assert proc.returncode == -9
    assert load_checkpoint(setup[0] / "models/killed/last.pt")["epoch"] == 2
    proc = train(setup, "killed", "--epochs", "4", "--resume", str(setup[0] / "models/killed"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from epoch 2 step 0" in proc.stdout
    a, b = metrics(setup, "base"), metrics(setup, "killed")
    assert a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]
    assert [h["loss"] for h in a["history"]] == pytest.approx([h["loss"] for h in b["history"]], abs=1e-6)


DEVICE_LEVERS = ("--backend", "device", "features.speech_top_db=30", "eval_crops=3", "augment.speed=[0.9,1.0,1.1]",
                 "augment.mixup_alpha=0.2", "--speaker-norm", "ema_decay=0.9")


def test_checkpoint_interval_skips_epochs_and_always_writes_the_last(trained, setup):
    """checkpoint_every_s=3600: a run killed (SIGKILL) in epoch 2 has written no last.pt (no hour has passed), so it
    starts over; a finished run writes last.pt at its final epoch, and the interval changes no result."""
    proc = train(setup, "sparse", "--epochs", "4", "checkpoint_every_s=3600", signal_at=(2 * 8 + 3, "SIGKILL"))
    assert proc.returncode == -9
    assert not (setup[0] / "models/sparse/last.pt").exists()
    proc = train(setup, "sparse", "--epochs", "4", "checkpoint_every_s=3600", "--resume", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed" not in proc.stdout
    assert load_checkpoint(setup[0] / "models/sparse/last.pt")["epoch"] == 4
    assert metrics(setup, "sparse")["test"] == metrics(setup, "base")["test"]


def test_device_backend_with_every_lever_resumes_exactly(setup):
    """The device backend with every lever (crops in the speech span, 3 evaluation windows, speed perturbation, mixup,
    transductive speaker normalisation, a moving average of the weights): trains above chance on the tones, tests every
    clip once, and metrics.json says the run used the test actors' audio. The checkpoints' `model` is the average,
    which is what was tested; `train_model` the weights the optimiser worked on. SIGTERM in the middle of epoch 1,
    resume: the uninterrupted run's every loss, its weights, their average and its test metrics, exactly (the epoch's
    order, crops, speed factors, noise and shifts come from the loader's own seeded generators, computed in a prefetch
    thread on the CPU; masks and mixup from the RNG state the checkpoint holds)."""
    full = train(setup, "dev-full", "--epochs", "3", *DEVICE_LEVERS)
    assert full.returncode == 0, full.stderr[-3000:]
    a = metrics(setup, "dev-full")
    assert a["transductive"] is True and a["test"]["clips"] == 32 * len(a["split"]["test"])
    assert all(math.isfinite(h["loss"]) for h in a["history"]) and a["test"]["ua"] > 0.2
    best = load_checkpoint(setup[0] / "models/dev-full/best.pt")
    assert best["ema_updates"] == 8 * best["epoch"]  # one update per step of the epochs up to the best one
    assert a["test_weight_checksums"] == [weights_checksum(best["model"])]  # the average was tested...
    assert weights_checksum(best["model"]) != weights_checksum(best["train_model"])  # ...not the trained weights
    # SIGTERM before step 3 of epoch 1 (8 steps per epoch), the flag looked at every 2 steps: saved after step 4
    cut = train(setup, "dev-cut", "--epochs", "3", *DEVICE_LEVERS, signal_at=(8 + 3, "SIGTERM", 2))
    assert cut.returncode == 143, cut.stderr[-2000:]
    state = load_checkpoint(setup[0] / "models/dev-cut/last.pt")
    assert (state["epoch"], state["step"]) == (1, 4)
    resumed = train(setup, "dev-cut", "--epochs", "3", *DEVICE_LEVERS, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    b = metrics(setup, "dev-cut")
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert a["weight_checksums"] == b["weight_checksums"] and a["test"] == b["test"]
    assert a["test_weight_checksums"] == b["test_weight_checksums"]  # the same average after the resume


def test_speaker_adversarial_saves_the_plain_model_and_resumes_exactly(setup):
    """speaker_adversarial: the checkpoints' `model` is the plain emotion model (it loads strictly into the registered
    model, what predict and ensembles do), `train_model` holds the speaker classifier the optimiser trains, one class per
    training actor. SIGTERM in epoch 1, resume: every loss, the weights (speaker classifier included) and the test
    metrics of the uninterrupted run, exactly."""
    levers = ("--backend", "device", "speaker_adversarial=0.5", "augment.mixup_alpha=0.2")
    full = train(setup, "adv-full", "--epochs", "3", *levers)
    assert full.returncode == 0, full.stderr[-3000:]
    a = metrics(setup, "adv-full")
    assert all(math.isfinite(h["loss"]) for h in a["history"])
    best = load_checkpoint(setup[0] / "models/adv-full/best.pt")
    cfg = load_config(train_args(*setup, "adv-full"))
    plain = create_model(cfg.model, len(best["classes"]), cfg.features.num_bins, cfg.features.num_frames)
    plain.load_state_dict(best["model"])  # strict: no speaker classifier in `model`
    head = {k: v for k, v in best["train_model"].items() if k.startswith("speaker_head.")}
    assert head["speaker_head.2.weight"].shape[0] == len(a["split"]["train"])
    assert a["test_weight_checksums"] == [weights_checksum(best["model"])]
    cut = train(setup, "adv-cut", "--epochs", "3", *levers, signal_at=(8 + 3, "SIGTERM", 2))
    assert cut.returncode == 143, cut.stderr[-2000:]
    resumed = train(setup, "adv-cut", "--epochs", "3", *levers, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    b = metrics(setup, "adv-cut")
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert a["weight_checksums"] == b["weight_checksums"] and a["test"] == b["test"]


def test_sigterm_saves_a_checkpoint_and_resume_continues(setup):
    """SIGTERM (a cluster's preemption) mid-epoch: checkpoint at the next step that looks at the flag, exit 143,
    resume finishes the run."""
    # SIGTERM before step 2 of epoch 1 (8 steps per epoch), the flag looked at every 5 steps: noticed after step 5
    proc = train(setup, "preempted", "--epochs", "3", signal_at=(8 + 3, "SIGTERM", 5))
    assert proc.returncode == 143, proc.stderr[-2000:]
    state = load_checkpoint(setup[0] / "models/preempted/last.pt")
    assert (state["epoch"], state["step"]) == (1, 5)
    proc = train(setup, "preempted", "--epochs", "3", "--resume", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from epoch 1 step 5" in proc.stdout
    assert [h["epoch"] for h in metrics(setup, "preempted")["history"]] == [0, 1, 2]


def test_two_process_preemption_mid_epoch_resumes_exactly(setup, ddp):
    """Both ranks signalled in epoch 1 (as SLURM signals every task): one checkpoint at the same step on both, holding
    each rank's random state; the resumed two-process run ends with exactly the uninterrupted run's losses and test
    metrics. With several processes the ranks' summed flags are read one look later (preemption.StopPoll)."""
    script = setup[0] / "signal_at.py"
    # 8 steps per epoch (global batch 16, 8 per process): SIGTERM before step 0 of epoch 1, looked at every 2 steps:
    # summed after step 2, read (and acted on) after step 4
    script.write_text(signal_script(8 + 1, "SIGTERM", 2))
    proc = launch_two(setup, "ddp-preempted", "--epochs", "2", port=29732, script=str(script))
    assert proc.returncode != 0 and "checkpoint saved at epoch 1 step 4" in proc.stdout, proc.stderr[-3000:]
    state = load_checkpoint(setup[0] / "models/ddp-preempted/last.pt")
    assert (state["epoch"], state["step"]) == (1, 4) and len(state["rng"]) == 2
    assert not (state["rng"][0]["torch"] == state["rng"][1]["torch"]).all()  # each rank's own generator
    proc = launch_two(setup, "ddp-preempted", "--epochs", "2", "--resume", "auto", port=29733)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from epoch 1 step 4" in proc.stdout
    resumed = metrics(setup, "ddp-preempted")
    assert resumed["test"] == ddp["test"] and resumed["weight_checksums"] == ddp["weight_checksums"]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in ddp["history"]]  # epoch 1: all 8 steps


def test_batch_size_is_global_so_one_and_two_processes_take_the_same_steps(trained, setup, ddp):
    """--batch-size 16 is the global batch: one process takes 16 clips a step, two take 8 each, so both take 8 steps
    per epoch over the 128 training clips (the same LR schedule), and clips/s counts every process's clips once."""
    one, two = metrics(setup, "base"), ddp
    assert one["steps_per_epoch"] == two["steps_per_epoch"] == 8 == 32 * len(one["split"]["train"]) // 16
    assert (one["world_size"], one["batch_size"], one["batch_size_per_process"]) == (1, 16, 16)
    assert (two["world_size"], two["batch_size"], two["batch_size_per_process"]) == (2, 16, 8)
    for m in (one, two):
        for h in m["history"]:
            assert h["clips"] == 8 * 16 == 32 * len(m["split"]["train"])  # not 2 x 128 for two processes
            assert h["clips_per_s"] == pytest.approx(h["clips"] / h["seconds"])


def test_batch_size_that_does_not_divide_by_the_processes_is_refused(setup):
    """A global batch of 15 over 2 processes: a one-line error on a non-zero exit, before any work (no run folder)."""
    proc = launch_two(setup, "odd-batch", "--batch-size", "15", port=29734)
    assert proc.returncode != 0
    assert "error: --batch-size 15 is the global batch and must divide by the 2 processes (try 14 or 16)" in proc.stderr
    assert not (setup[0] / "models/odd-batch").exists()


def test_only_the_main_process_reads_checkpoints(setup, ddp):
    """A two-process resume where rank 1 cannot read the run folder (its load_checkpoint and Path.is_file there fail):
    the main process decides and reads last.pt and best.pt, both ranks get the state and the best weights, and the
    test metrics come from best.pt's weights on both ranks."""
    tmp = setup[0]
    shutil.copytree(tmp / "models/ddp", tmp / "models/ddp-blind")
    script = tmp / "rank1_blind.py"
    script.write_text(RANK1_BLIND)
    proc = launch_two(setup, "ddp-blind", "--epochs", "3", "--resume", "auto", port=29735, script=str(script))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from epoch 2 step 0" in proc.stdout
    m = metrics(setup, "ddp-blind")
    assert m["world_size"] == 2 and [h["epoch"] for h in m["history"]] == [0, 1, 2]
    assert m["weight_checksums"][0] == m["weight_checksums"][1]
    best = trainer_module.weights_checksum(load_checkpoint(tmp / "models/ddp-blind/best.pt")["model"])
    assert m["test_weight_checksums"] == [pytest.approx(best, rel=1e-12, abs=1e-9)] * 2
    assert m["test"]["clips"] == 32 * len(m["split"]["test"])


def test_bf16_autocast_on_cpu(setup):
    """--mixed-precision bf16 trains on a CPU with finite losses."""
    proc = train(setup, "bf16", "--epochs", "1", "--mixed-precision", "bf16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = metrics(setup, "bf16")
    assert m["mixed_precision"] == "bf16" and math.isfinite(m["history"][0]["loss"])


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, "bf16"), (False, True, "bf16"),
                                                        (False, False, "no")])
def test_auto_precision_on_a_cpu_follows_its_bf16_units(monkeypatch, avx512_bf16, amx, expected):
    """mixed_precision auto on a CPU: bf16 where torch sees AVX512-BF16 or AMX tiles (1.7x faster there, the same CV
    accuracy), float32 elsewhere (bf16 is 2-4x slower without them); explicit settings are kept; a GPU gets bf16."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    cfg = types.SimpleNamespace(mixed_precision="auto")
    assert trainer_module.resolve_precision(cfg, "cpu") == expected
    assert trainer_module.resolve_precision(cfg, "cuda") == "bf16"
    assert trainer_module.resolve_precision(types.SimpleNamespace(mixed_precision="no"), "cpu") == "no"
    assert trainer_module.resolve_precision(types.SimpleNamespace(mixed_precision="bf16"), "cpu") == "bf16"


def test_dali_backend_trains_and_evaluates(setup):
    """--backend dali (CPU operators here) trains, and evaluates every test clip exactly once."""
    proc = train(setup, "dali", "--epochs", "1", "--backend", "dali")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = metrics(setup, "dali")
    assert math.isfinite(m["history"][0]["loss"]) and m["test"]["clips"] == 32 * len(m["split"]["test"])


def test_dali_shuffle_buffer_fits_a_small_share(setup, monkeypatch):
    """The DALI training reader fills its shuffle buffer with at most this rank's share (64 clips of 128 over 2
    ranks here), not always SHUFFLE_BUFFER (512) clips."""
    dali_path = pytest.importorskip("ravdess_dist.data.dali_path")
    assert dali_path.shuffle_fill(64) == 64 and dali_path.shuffle_fill(0) == 1
    assert dali_path.shuffle_fill(10_000) == dali_path.shuffle_fill(SHUFFLE_BUFFER) == SHUFFLE_BUFFER == 512
    fills, reader = [], dali_path.fn.readers.webdataset

    def recording_reader(*args, **kwargs):
        fills.append(kwargs["initial_fill"])
        return reader(*args, **kwargs)

    monkeypatch.setattr(dali_path.fn.readers, "webdataset", recording_reader)
    shards = setup[1]
    manifest = Manifest.load(shards)
    loader = make_loader("dali", root=shards, entries=manifest.select("normal", [1, 2, 3, 4]),
                         class_names=manifest.class_names("normal"), batch_size=8, train=True,
                         features=FeatureConfig(**TINY["features"]), device="cpu", rank=1, world_size=2, num_workers=1)
    assert loader.num_samples == 64
    batch = next(iter(loader))
    assert batch.features.shape[0] == 8 and fills == [64]


class FakeLoader:
    """STEPS batches of 4 rows (train_epoch only iterates them and hands them to train_step)."""

    def __init__(self, steps: int):
        self.steps, self.epochs = steps, []

    def __len__(self):
        return self.steps

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __iter__(self):
        return iter([types.SimpleNamespace(features=torch.zeros(4, 1, 2, 2)) for _ in range(self.steps)])


def fake_run(steps: int, stop_at_check: int | None = None):
    """The parts of a Run that train_epoch uses, on a CPU, with train_step returning the losses 0, 1, 2, ... and
    should_stop answering True at its STOP_AT_CHECK-th call (from 1); calls and checkpoints recorded."""
    run = types.SimpleNamespace(
        accelerator=types.SimpleNamespace(device=torch.device("cpu"), is_local_main_process=False, num_processes=1,
                                          print=print, end_training=lambda: None),
        model=torch.nn.Linear(1, 1), cfg=types.SimpleNamespace(seed=0, batch_size=16), train_loader=FakeLoader(steps),
        epoch=1, step_in_epoch=0, epoch_loss_sum=0.0, checks=[], saved=[], log_spectrograms=lambda _: None)
    run.train_step = lambda batch: torch.tensor(float(run.step_in_epoch))  # loss of step i is i
    run.resumed_rng = lambda: None

    def should_stop(last):
        assert last == (run.step_in_epoch == steps)  # the epoch's last step says so
        run.checks.append(run.step_in_epoch)
        return len(run.checks) == stop_at_check

    run.should_stop = should_stop
    run.checkpoint = lambda name: run.saved.append((name, run.step_in_epoch, run.epoch_loss_sum))
    return run


@pytest.fixture
def host_syncs(monkeypatch):
    """Counts Tensor.item() and float()/bool() of tensors (each a device-to-host sync on a GPU); seeding stubbed."""
    count = {"n": 0}
    item, to_float, to_bool = torch.Tensor.item, torch.Tensor.__float__, torch.Tensor.__bool__

    def counted(original):
        def call(self, *args):
            count["n"] += 1
            return original(self, *args)
        return call

    monkeypatch.setattr(torch.Tensor, "item", counted(item))
    monkeypatch.setattr(torch.Tensor, "__float__", counted(to_float))
    monkeypatch.setattr(torch.Tensor, "__bool__", counted(to_bool))
    monkeypatch.setattr(trainer_module, "set_seed", lambda *a, **k: None)
    return count


def test_train_epoch_syncs_with_the_host_once(host_syncs):
    """20 steps: the loss sum stays on the device and is read once; the flag is looked at after steps 8, 16 and 20."""
    run = fake_run(20)
    out = Run.train_epoch(run)
    assert host_syncs["n"] == 1
    assert run.checks == [8, 16, 20] and run.saved == []
    assert out["loss"] == sum(range(20)) / 20 and run.epoch_loss_sum == sum(range(20))
    assert out["clips"] == 20 * 16 and run.step_in_epoch == 20


def test_train_epoch_preempted_saves_the_loss_so_far(host_syncs):
    """A stop noticed at the second look (after step 16): last.pt at step 16 with the sum of those 16 losses."""
    run = fake_run(20, stop_at_check=2)
    with pytest.raises(Preempted):
        Run.train_epoch(run)
    assert run.checks == [8, 16] and run.saved == [("last", 16, float(sum(range(16))))]
    assert host_syncs["n"] == 1


@pytest.mark.parametrize("extra, message", [
    (["--folds", "3", "--test-actors", "1", "--val-actors", "2"], "exclude each other"),
    (["--mixed-precision", "fp16"], "fp16 needs a GPU"),
    (["--test-actors", "1", "--val-actors", "9"], r"actor\(s\) \[9\] are not in the shards"),
    (["--epochs", "0"], "epochs must be positive"),
    (["--no-validation"], "add --select last"),
    (["--no-validation", "--select", "last", "--test-actors", "1", "--val-actors", "2"], "drop --val-actors"),
    (["cuda_graph=true", "--device", "cpu"], "cuda_graph=true needs one process on a GPU"),
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


@pytest.mark.parametrize("extra, message", [
    (["--fold", "1"], "checkpoint has split=(test [1], val [3], train [2, 4, 5, 6]), this run asks split=(test [3], "
                      "val [5], train [1, 2, 4, 6])"),
    (["--test-actors", "2", "--val-actors", "1"], "checkpoint has split=(test [1], val [3], train [2, 4, 5, 6]), this "
                                                  "run asks split=(test [2], val [1]"),
    (["--seed", "1"], "checkpoint has seed=0, this run asks 1"),
    (["--intensity", "strong"], "checkpoint has intensity='normal'"),
    (["train_intensities=both"], "checkpoint has train_intensities='same'"),
    (["features.n_mels=16"], "checkpoint has features="),
    (["--select", "last"], "checkpoint has select='best', this run asks 'last'"),
    (["--no-validation", "--select", "last"], "checkpoint has select='best'"),
], ids=["fold", "actors", "seed", "intensity", "train_intensities", "features", "select", "no-validation"])
def test_resume_of_another_split_or_seed_is_refused(trained, setup, extra, message):
    """--resume of a fold-0 checkpoint with another fold, other actors, seed, intensity or features: a one-line error
    naming the setting, a non-zero exit, nothing trained."""
    run = "refused" + "".join(extra).replace("=", "-").replace(".", "-")
    proc = train(setup, run, *extra, "--resume", str(trained / "last.pt"))
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not (setup[0] / "models" / run).exists()


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


def test_speaker_statistics_from_the_other_intensity_are_not_transductive(setup):
    """speaker_norm with speaker_stats=other_intensity on strong: every strong clip of the test actors is tested, and
    metrics.json says the test actors' audio was used (their normal clips) but not transductively (no scored clip)."""
    proc = train(setup, "spk-other", "--epochs", "1", "--intensity", "strong", "--backend", "device", "--speaker-norm",
                 "speaker_stats=other_intensity")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = metrics(setup, "spk-other")
    assert (m["transductive"], m["test_speaker_audio"]) == (False, True)
    assert m["test"]["clips"] == 28 * len(m["split"]["test"]) and math.isfinite(m["history"][0]["loss"])


def test_channels_last_and_compile_keep_plain_checkpoints(setup):
    """channels_last stores the conv weights NHWC and compile wraps the model, yet the state dict that checkpoints
    save keeps the plain model's parameter names (resume, predict and ensembles load it into an eager model)."""
    tmp, shards, config = setup
    cfg = load_config(train_args(tmp, shards, config, "layout", "--backend", "device", "channels_last=true",
                                 "compile=default"))
    run = Run(cfg)
    try:
        assert isinstance(run.model, torch._dynamo.eval_frame.OptimizedModule)
        # evaluation runs the same weights eagerly: compiling its shapes would cost more than it saves
        assert not isinstance(run.evaluated_model(), torch._dynamo.eval_frame.OptimizedModule)
        assert run.evaluated_model() is run.bare_model() and run.bare_model() is run.model._orig_mod
        conv = next(m for m in run.bare_model().modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
        plain = create_model(cfg.model, len(run.classes), cfg.features.num_bins, cfg.features.num_frames)
        assert list(run.bare_model().state_dict()) == list(plain.state_dict())
    finally:
        run.close()
    # compile is this Run's setting alone: the next Run in the process, without it, trains the eager model
    # (Accelerate's dynamo plugin is process-wide state, which once compiled every later Run too)
    after = Run(load_config(train_args(tmp, shards, config, "layout-after", "--backend", "device")))
    try:
        assert not isinstance(after.model, torch._dynamo.eval_frame.OptimizedModule)
    finally:
        after.close()


def same_weights(a, b) -> bool:
    """Two checkpoints hold the same model weights."""
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_select_last_keeps_and_tests_the_last_epoch(setup):
    """select=last: the whole schedule runs, best.pt is the last epoch's model, validation is still measured."""
    proc = train(setup, "select-last", "--epochs", "3", "--select", "last", "--patience", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = metrics(setup, "select-last")
    assert (m["select"], m["best_epoch"], m["epochs_run"]) == ("last", 2, 3)
    assert all("val_ua" in h for h in m["history"]) and m["val"]["clips"] > 0
    assert same_weights(setup[0] / "models/select-last/best.pt", setup[0] / "models/select-last/last.pt")


def test_no_validation_trains_on_the_validation_fold_and_tests_the_last_epoch(setup):
    """--no-validation: the validation fold's actors train too (5 of the 6 actors, the test actor held out), no epoch
    is validated, the last epoch is kept and tested; re-scoring its validation actors is a clear error."""
    proc = train(setup, "no-val", "--epochs", "2", "--no-validation", "--select", "last")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = metrics(setup, "no-val")
    assert m["split"]["val"] == [] and m["val"] is None and len(m["split"]["train"]) == 5
    assert not set(m["split"]["train"]) & set(m["split"]["test"]) and m["test"]["clips"] == 32 * len(m["split"]["test"])
    keys = json.loads((setup[0] / "models/no-val/ranks.json").read_text())[0]["train_keys_epoch0"]
    assert {int(k[-2:]) for k in keys} == set(m["split"]["train"])  # the validation fold's actor is among them
    assert (m["best_epoch"], m["epochs_run"]) == (1, 2) and not any("val_ua" in h for h in m["history"])
    assert same_weights(setup[0] / "models/no-val/best.pt", setup[0] / "models/no-val/last.pt")
    tags = {t for events in (setup[0] / "runs/no-val").rglob("events.out.tfevents.*")
            for t in EventAccumulator(str(events)).Reload().Tags()["scalars"]}
    assert {"train/loss", "test/ua"} <= tags and not any(t.startswith("val/") or "val_ua" in t for t in tags)
    out = run_python(["-m", "ravdess_dist.ensemble", str(setup[0] / "models/no-val"), "--out",
                      str(setup[0] / "no-val-rescored"), "--actors", "val"])
    assert out.returncode == 2 and "has no val actors" in out.stderr and "Traceback" not in out.stderr


def test_final_model_trains_on_every_actor_and_predicts(setup):
    """--no-test --no-validation (the final model): all 6 actors train, the last epoch is kept, metrics.json says
    `"test": null` with no predictions or confusion matrix, TensorBoard has no test figures, predict classifies with
    it; scoring it as an ensemble member is a clear error, and cross-validation refuses --no-test."""
    proc = train(setup, "final", "--epochs", "2", "--no-validation", "--select", "last", "--no-test")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "final model: no test actors" in proc.stdout
    m, run = metrics(setup, "final"), setup[0] / "models/final"
    assert m["split"] == {"train": [1, 2, 3, 4, 5, 6], "val": [], "test": []}
    assert m["test"] is None and m["confusion_matrix"] is None and (m["best_epoch"], m["epochs_run"]) == (1, 2)
    keys = json.loads((run / "ranks.json").read_text())[0]["train_keys_epoch0"]
    assert {int(k[-2:]) for k in keys} == set(range(1, 7))
    assert same_weights(run / "best.pt", run / "last.pt")
    assert not (run / "predictions.json").exists() and not (run / "confusion_matrix.png").exists()
    tags = {t for events in (setup[0] / "runs/final").rglob("events.out.tfevents.*")
            for t in EventAccumulator(str(events)).Reload().Tags()["scalars"]}
    assert "train/loss" in tags and not any(t.startswith("test/") for t in tags)
    clip = sorted((setup[0] / "data/archive/Actor_03").glob("*.wav"))[0]
    out = run_python(["-m", "ravdess_dist.predict", str(run), str(clip), "--json"])
    assert out.returncode == 0, out.stderr[-2000:]
    probs = json.loads(out.stdout)["probabilities"]
    assert list(probs) == m["classes"] and sum(probs.values()) == pytest.approx(1, abs=1e-3)
    scored = run_python(["-m", "ravdess_dist.ensemble", str(run), "--out", str(setup[0] / "final-scored")])
    assert scored.returncode == 2 and "has no test actors" in scored.stderr and "Traceback" not in scored.stderr
    cv = run_python(["-m", "ravdess_dist.cv", "--config", str(setup[2]), "--shards", str(setup[1]), "--no-test"])
    assert cv.returncode == 1 and "--no-test is for the final model" in cv.stderr


@pytest.mark.parametrize("device, fused", [("cuda", True), ("cpu", None)])
def test_adamw_is_fused_on_a_gpu_only(device, fused):
    """On a GPU AdamW takes the fused kernel (a measured gain there); the CPU keeps the default its recipes used.
    Built on CPU parameters, as the trainer builds it before prepare() moves the model."""
    cfg = load_config(["--model", "cnn", "--intensity", "normal"])
    model = create_model("cnn", 8, cfg.features.num_bins, cfg.features.num_frames)
    opt, _ = trainer_module.make_optimizer(cfg, model, 10, torch.device(device))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is fused


@pytest.mark.parametrize("overrides, device, processes, expected", [
    ({}, "cuda", 1, True),  # unset: on for one process on a GPU with the device backend (every recipe)
    ({}, "cpu", 1, False),
    ({}, "cuda", 2, False),  # DDP: each step's all-reduce is outside anything one process can capture
    ({"backend": "torch"}, "cuda", 1, False),  # measured with the device backend only
    ({"ema_decay": 0.999}, "cuda", 1, False),
    ({"compile": "reduce-overhead"}, "cuda", 1, False),
    ({"mixed_precision": "fp16"}, "cuda", 1, False),
    ({"optimizer": "sgd"}, "cuda", 1, False),
    ({"speaker_adversarial": 0.1}, "cuda", 1, False),
    ({"cuda_graph": False}, "cuda", 1, False),
    ({"cuda_graph": True}, "cuda", 1, True),
])
def test_cuda_graph_is_on_by_default_where_it_can_capture(overrides, device, processes, expected):
    """cuda_graph unset is on exactly where a graph can hold the update and was measured (one process on a GPU, the
    device backend, AdamW without ema_decay, fp16, compile or speaker_adversarial); set, it is obeyed."""
    for model in ("cnn", "crnn", "hybrid", "resnet"):  # every recipe (mixup in two of them)
        cfg = replace(load_config(["--model", model, "--intensity", "normal"]), **overrides)
        assert trainer_module.resolve_cuda_graph(cfg, torch.device(device), processes) is expected, model


@pytest.mark.parametrize("device, processes", [("cpu", 1), ("cuda", 2)])
def test_cuda_graph_true_where_nothing_can_be_captured_is_an_error(device, processes):
    """cuda_graph=true on a CPU or with several processes: an error naming both, not a run without the graph."""
    cfg = load_config(["--model", "hybrid", "--intensity", "normal", "cuda_graph=true"])
    with pytest.raises(ValueError, match=f"needs one process on a GPU; this run has {processes} on {device}"):
        trainer_module.resolve_cuda_graph(cfg, torch.device(device), processes)


def test_a_checkpoint_from_before_cuda_graph_resumes_where_no_graph_is_used(tmp_path):
    """A checkpoint whose config has no cuda_graph (written before the option existed) trained without a graph: a run
    that resolved cuda_graph to false continues it; one that uses a graph is refused, naming the setting."""
    cfg = load_config(["--model", "cnn", "--intensity", "normal", "--folds", "6", "--fold", "0"])
    saved = {k: v for k, v in to_dict(cfg).items() if k not in ("cuda_graph", "data_stream")}
    actors = list(range(1, 25))
    trainer_module.check_resumable(tmp_path / "last.pt", saved, replace(cfg, cuda_graph=False), actors)
    with pytest.raises(ValueError, match="checkpoint has cuda_graph=False, this run asks True"):
        trainer_module.check_resumable(tmp_path / "last.pt", saved, replace(cfg, cuda_graph=True), actors)


@gpu
def test_a_gpu_run_replays_a_graph_and_computes_its_passes_aside_by_default(setup):
    """On one GPU with the device backend and neither option set, a run replays its update as one CUDA graph and
    computes its training passes on a side stream (the defaults measured on an H100), trains, tests, and records the
    choice in config.yaml (a resume compares it)."""
    tmp, shards, config = setup
    run = Run(load_config(train_args(tmp, shards, config, "gpu-defaults", "--backend", "device", "--device", "cuda")))
    try:
        run.fit()
        m = run.test()
    finally:
        run.close()
    assert run.cfg.cuda_graph is True and run.graphed is not None and run.train_loader.stream is not None
    assert all(math.isfinite(h["loss"]) for h in m["history"]) and m["test"]["clips"] > 0
    assert "cuda_graph: true" in (tmp / "models/gpu-defaults/config.yaml").read_text()


def test_cuda_graph_run_trains_through_the_graphed_step(setup, monkeypatch):
    """cuda_graph=true through the real Run, with the graph's eager stand-in (a CPU cannot capture; the capture is
    tested on a GPU in tests/test_graphed_step.py): the update runs on the static buffers every step, mixup's draws
    among them (the recipes' mixup 0.2), the learning rate is a tensor the schedule moves, and checkpoints, resume
    state and the test work as in any run."""
    tmp, shards, config = setup
    monkeypatch.setattr(trainer_module, "check_cuda_graph", lambda device, processes: None)
    made = []

    def eager_graph(*args, **kwargs):
        made.append(GraphedStep(*args, **kwargs, capture=False))
        return made[-1]

    monkeypatch.setattr(trainer_module, "GraphedStep", eager_graph)
    run = Run(load_config(train_args(tmp, shards, config, "graphed", "--backend", "device", "cuda_graph=true",
                                     "--epochs", "2", "augment.mixup_alpha=0.2")))
    try:
        run.fit()
        m = run.test()
    finally:
        run.close()
    assert len(made) == 1 and all(math.isfinite(h["loss"]) for h in m["history"]) and m["test"]["clips"] > 0
    features, labels, lam, pair = made[0].inputs  # mixup's weight and pairing are inputs of the graph
    assert lam.shape == () and 0 <= float(lam) <= 1 and sorted(pair.tolist()) == list(range(len(labels)))
    assert run.accelerator.autocast_handler.cache_enabled is False  # capture needs it off, the model's wrapper too
    lr = run.optimizer.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and float(lr) == pytest.approx(run.scheduler.get_last_lr()[0].item())
    assert load_checkpoint(tmp / "models/graphed/last.pt")["epoch"] == 2
    resumed = Run(load_config(train_args(tmp, shards, config, "graphed", "--backend", "device", "cuda_graph=true",
                                         "--epochs", "3", "--resume", "auto", "augment.mixup_alpha=0.2")))
    try:
        assert resumed.epoch == 2 and isinstance(resumed.optimizer.param_groups[0]["lr"], torch.Tensor)
        resumed.fit()
    finally:
        resumed.close()
    assert resumed.epoch == 3 and len(made) == 2 and math.isfinite(resumed.history[-1]["loss"])
    with pytest.raises(ValueError, match="checkpoint has cuda_graph=True, this run asks False"):
        Run(load_config(train_args(tmp, shards, config, "graphed", "--backend", "device", "--epochs", "4",
                                   "--resume", "auto")))
