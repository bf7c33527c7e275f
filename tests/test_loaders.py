"""Both data-loader backends on shards of the bundled sample: same clips, labels and features; exact rank splits in
real separate processes; training streams; augmentation; the error when DALI is missing."""
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import webdataset as wds

from preprocess.__main__ import main as preprocess
from ravdess_dist.augment import AugmentConfig
from ravdess_dist.data import torch_path
from ravdess_dist.features import FeatureConfig
from ravdess_dist.data.contract import BACKENDS, rank_bounds, rank_part
from ravdess_dist.data.factory import make_loader
from shards.labels import EMOTIONS
from shards.manifest import Manifest
from tests.corpus import SAMPLE

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Shards of the bundled sample (actors 1-4, 16 kHz): 8 shards, 128 normal and 112 strong clips."""
    out = tmp_path_factory.mktemp("sample")
    assert preprocess(["--archive", str(SAMPLE), "--out", str(out), "--no-analysis", "--jobs", "2"]) == 0
    return out / "shards"


def loader(backend: str, root: Path, intensity: str, batch_size: int, train: bool = False, augment=None, **kw):
    """make_loader over one selection of ROOT's shards, on the CPU unless `device` says otherwise."""
    manifest = Manifest.load(root)
    return make_loader(backend, root=root, entries=manifest.select(intensity), class_names=manifest.class_names(intensity),
                       batch_size=batch_size, train=train, features=kw.pop("features", FeatureConfig()), augment=augment,
                       device=kw.pop("device", CPU), **kw)


def collect(batches) -> dict:
    """key -> (features [1, F, T], label) of the valid rows; a key seen twice fails."""
    seen = {}
    for batch in batches:
        for i, (key, valid) in enumerate(zip(batch.keys, batch.valid.tolist())):
            if valid:
                assert key not in seen, f"{key} yielded twice"
                seen[key] = (batch.features[i], int(batch.labels[i]))
    return seen


def emotion_of(key: str) -> str:
    """The emotion a RAVDESS key names (third field, 01..08)."""
    return EMOTIONS[int(key.split("-")[2]) - 1]


def test_rank_parts_are_disjoint_balanced_and_cover_everything(shards):
    """Every sample in exactly one rank's part, parts differing by at most one sample, for 1 to 5 ranks."""
    entries = Manifest.load(shards).select("all")
    everything = [k for e in entries for k in e.keys]
    for world in range(1, 6):
        parts = [[k for _, keys in rank_part(entries, r, world) for k in keys] for r in range(world)]
        assert sorted(k for p in parts for k in p) == sorted(everything)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_both_backends_read_exactly_the_planned_part(shards):
    """112 clips over 3 ranks (37, 37, 38): each backend's rank reads the planned part, in order -- DALI splitting
    with shard_id/num_shards and the torch backend filtering by key agree sample for sample."""
    entries = Manifest.load(shards).select("strong")
    for rank in range(3):
        planned = [k for _, keys in rank_part(entries, rank, 3) for k in keys]
        assert len(planned) == rank_bounds(112, rank, 3)[1] - rank_bounds(112, rank, 3)[0] == (37, 37, 38)[rank]
        for backend in BACKENDS:
            assert list(collect(loader(backend, shards, "strong", 16, rank=rank, world_size=3))) == planned, backend


@pytest.mark.parametrize("intensity", ["normal", "strong"])
def test_backends_give_the_same_clips_labels_and_features(shards, intensity):
    """Evaluation: both backends yield every clip once, label = its emotion's index in the class list, and the same
    un-normalised dB log-mel (DALI's spectrogram vs torchaudio's on the same 16 kHz waveform: < 0.1 dB mean)."""
    manifest = Manifest.load(shards)
    classes = manifest.class_names(intensity)
    assert len(classes) == (8 if intensity == "normal" else 7)
    raw = FeatureConfig(normalize=False)
    got = {b: collect(loader(b, shards, intensity, 24, features=raw)) for b in BACKENDS}
    expected = {k for e in manifest.select(intensity) for k in e.keys}
    assert set(got["torch"]) == set(got["dali"]) == expected
    for key, (features, label) in got["torch"].items():
        assert classes[label] == emotion_of(key) == classes[got["dali"][key][1]]
        assert features.shape == (1, raw.n_mels, raw.num_frames)
        assert (features - got["dali"][key][0]).abs().mean() < 0.1


def test_eval_is_deterministic_and_padded_to_full_batches(shards):
    """Two evaluation passes give identical batches; the padding rows of the last batch are flagged valid=False."""
    for backend in BACKENDS:
        ldr = loader(backend, shards, "strong", 48)
        first, second = list(ldr), list(ldr)
        assert len(first) == len(ldr) == 3 and all(b.features.shape[0] == 48 for b in first)
        assert [b.valid.sum().item() for b in first] == [48, 48, 16]
        for a, b in zip(first, second):
            assert a.keys == b.keys and torch.equal(a.features, b.features) and torch.equal(a.valid, b.valid)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_abandoned_eval_pass_does_not_shift_the_next(shards, backend):
    """Stopping a pass after one batch (an exception in the consumer) leaves the next pass complete and identical."""
    ldr = loader(backend, shards, "strong", 32)
    first = list(ldr)
    next(iter(ldr))  # the generator is dropped after its first batch
    again = list(ldr)
    assert [b.keys for b in again] == [b.keys for b in first] and len(first) == 4
    assert all(torch.equal(a.features, b.features) for a, b in zip(first, again))


@pytest.mark.parametrize("train", [False, True])
def test_features_on_the_device_equal_features_in_the_workers(shards, train):
    """num_workers=0 computes features in the main process, as on a GPU: same clips, crops and features as the
    CPU path that computes them in the workers (one worker, so both draw the same crops)."""
    passes = [list(loader("torch", shards, "strong", 16, train=train, num_workers=n)) for n in (0, 1)]
    assert len(passes[0]) == len(passes[1]) == 7
    for a, b in zip(*passes):
        assert a.keys == b.keys
        torch.testing.assert_close(a.features, b.features, atol=1e-4, rtol=0)


def test_pitch_rows_are_the_same_on_the_device_and_torch_paths(shards):
    """features.pitch_bins: both waveform backends give every clip the same log-mel and pitch rows (F = 64 + 16)."""
    feats = FeatureConfig(pitch_bins=16)
    got = {b: collect(loader(b, shards, "strong", 28, features=feats)) for b in ("torch", "device")}
    assert set(got["torch"]) == set(got["device"])
    for key, (features, _) in got["torch"].items():
        assert features.shape == (1, 64 + 16, feats.num_frames)
        torch.testing.assert_close(got["device"][key][0], features, atol=1e-4, rtol=0)


def test_training_augments_reshuffles_and_replays(shards):
    """Training: full valid batches; the same epoch replays identically, another epoch reorders; augmentation
    changes the features (same clips in the same order)."""
    for backend in BACKENDS:
        plain = loader(backend, shards, "normal", 32, train=True)
        noisy = loader(backend, shards, "normal", 32, train=True, augment=AugmentConfig(noise_p=1.0))
        passes = {}
        runs = [("plain0", plain, 0), ("again0", plain, 0), ("plain1", plain, 1), ("noisy0", noisy, 0)]
        for name, ldr, epoch in runs:
            ldr.set_epoch(epoch)
            torch.manual_seed(0)  # SpecAugment draws from the global generator, which the trainer seeds per epoch
            passes[name] = list(ldr)
            assert len(passes[name]) == len(ldr) == 4
            assert all(b.valid.all() and len(b.keys) == 32 for b in passes[name])
        keys = {name: [k for b in batches for k in b.keys] for name, batches in passes.items()}
        assert keys["plain0"] == keys["again0"] == keys["noisy0"] and keys["plain1"] != keys["plain0"]
        assert len(set(keys["plain0"])) == 128  # one pass covers the whole selection
        same = [torch.equal(a.features, b.features) for a, b in zip(passes["plain0"], passes["again0"])]
        changed = [torch.equal(a.features, b.features) for a, b in zip(passes["plain0"], passes["noisy0"])]
        assert all(same) and not any(changed), backend


def test_more_workers_than_shards(shards):
    """One shard, two workers, one of which has nothing to read: each mode still yields the shard's clips once."""
    manifest = Manifest.load(shards)
    entry = manifest.select("normal", actors=[2])
    for train in (False, True):
        ldr = make_loader("torch", root=shards, entries=entry, class_names=manifest.class_names("normal"), batch_size=32,
                          train=train, features=FeatureConfig(), augment=AugmentConfig() if train else None, device=CPU,
                          num_workers=2)
        assert sorted(collect(ldr)) == sorted(entry[0].keys)


def test_a_hung_worker_is_an_error_naming_the_shards(shards, monkeypatch):
    """A DataLoader worker that never sends a batch (here: its stream waits on an event nobody sets) stops the torch
    loader after two WORKER_TIMEOUTs with an error naming the shards, instead of a run that waits forever."""
    monkeypatch.setattr(torch_path, "WORKER_TIMEOUT", 2.0)
    monkeypatch.setattr(torch_path.ShardStream, "__iter__", lambda self: iter([threading.Event().wait()]))
    ldr = loader("torch", shards, "normal", 16, num_workers=1)
    assert ldr.dataloader.timeout == 2.0  # (without it the loop below would wait forever)
    with pytest.raises(RuntimeError, match=re.escape(f"{shards}: no batch from the DataLoader workers in 2 x 2 s")):
        list(ldr)


def test_one_timeout_alone_is_waited_out(shards):
    """A wait for a worker's batch that times out once (a process stopped longer than WORKER_TIMEOUT, e.g. a
    suspended SLURM job: its wait ends at once when it continues) is asked again and the batches all come; two in a
    row are the error. The DataLoader's iterator here answers its first request with the timeout."""
    ldr = loader("torch", shards, "normal", 16, num_workers=0)
    real = list(ldr.dataloader)

    class Stalling:
        """The DataLoader's iterator, with STALLS timeouts before its first batch."""
        timeout = 2.0

        def __init__(self, stalls):
            self.batches, self.stalls = iter(real), stalls

        def __iter__(self):
            return self

        def __next__(self):
            if self.stalls:
                self.stalls -= 1
                raise RuntimeError("DataLoader timed out after 2.0 seconds")
            return next(self.batches)

    ldr.dataloader = Stalling(1)
    assert [b.keys for b in ldr.raw_batches()] == [keys for _, _, keys in real]
    ldr.dataloader = Stalling(2)
    with pytest.raises(RuntimeError, match="no batch from the DataLoader workers in 2 x 2 s"):
        next(ldr.raw_batches())


def test_undecodable_sample_is_an_error_naming_tar_and_key(shards, tmp_path):
    """A shard sample whose audio does not decode stops the torch loader with the tar's path and the sample's key."""
    root = tmp_path / "shards"
    shutil.copytree(shards, root)
    entry = Manifest.load(root).select("normal", actors=[2])[0]
    tar = root / entry.path
    samples = list(wds.WebDataset(str(tar), shardshuffle=False))
    with wds.TarWriter(str(tar)) as sink:
        for sample in samples:
            bad = sample["__key__"] == entry.keys[3]
            sink.write({k: b"not audio" if bad and k == "wav" else v for k, v in sample.items() if k != "__url__"})
    ldr = loader("torch", root, "normal", 8, num_workers=1)
    with pytest.raises(ValueError, match=f"{tar}: sample {entry.keys[3]}: cannot decode"):
        collect(ldr)


def test_rank_without_samples_yields_only_padding(shards):
    """More ranks than clips (evaluation): the empty rank still takes len() steps, every row flagged invalid."""
    manifest = Manifest.load(shards)
    entry = manifest.select("normal", actors=[1])
    for backend in BACKENDS:
        ldr = make_loader(backend, root=shards, entries=entry, class_names=manifest.class_names("normal"), batch_size=4,
                          train=False, features=FeatureConfig(), device=CPU, rank=0, world_size=33)  # 32 clips: rank 0 gets none
        batches = list(ldr)
        assert ldr.num_samples == 0 and len(batches) == len(ldr) == 1
        assert not batches[0].valid.any() and batches[0].features.shape == (4, 1, 64, 301)


def rank_report(root: str, rank: int, world: int, out: str) -> None:
    """Run in a separate process per rank: each backend's eval keys and steps, and its training batches, to JSON."""
    report = {}
    for backend in BACKENDS:
        evaluation = loader(backend, Path(root), "all", 16, rank=rank, world_size=world)
        batches, training = list(evaluation), list(loader(backend, Path(root), "all", 16, train=True,
                                                          augment=AugmentConfig(), rank=rank, world_size=world))
        report[backend] = {"len": len(evaluation), "steps": len(batches), "num_samples": evaluation.num_samples,
                           "keys": [k for b in batches for k, v in zip(b.keys, b.valid.tolist()) if v],
                           "train_rows": [[len(b.keys), int(b.valid.sum())] for b in training],
                           "train_keys": [k for b in training for k in b.keys]}
    Path(out).write_text(json.dumps(report))


def test_two_ranks_in_separate_processes(shards, tmp_path):
    """Two real processes (WORLD_SIZE=2 set, as under a launcher): equal step counts, eval parts disjoint and together
    every clip, same part for both backends; training: len() full batches on both ranks, from disjoint parts that
    together cover every clip."""
    procs = []
    for rank in range(2):
        out = tmp_path / f"{rank}.json"
        code = f"from tests.test_loaders import rank_report; rank_report({str(shards)!r}, {rank}, 2, {str(out)!r})"
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2"}
        procs.append(subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stderr=subprocess.PIPE,
                                      text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    everything = {k for e in Manifest.load(shards).select("all") for k in e.keys}
    for backend in BACKENDS:
        r0, r1 = ranks[0][backend], ranks[1][backend]
        # ceil(240 / (2 * 16)) steps; each rank's last batch is 8 clips + 8 padding rows
        assert r0["len"] == r1["len"] == r0["steps"] == r1["steps"] == 8
        assert set(r0["keys"]).isdisjoint(r1["keys"]) and set(r0["keys"]) | set(r1["keys"]) == everything
        assert len(r0["keys"]) == r0["num_samples"] == 120 and len(r1["keys"]) == r1["num_samples"] == 120
        assert r0["train_rows"] == r1["train_rows"] == [[16, 16]] * 8  # len() full batches
        # training parts come from a permuted shard order, but are still disjoint and cover every clip
        assert set(r0["train_keys"]).isdisjoint(r1["train_keys"])
        assert set(r0["train_keys"]) | set(r1["train_keys"]) == everything
    for rank in ranks:
        assert rank["torch"]["keys"] == rank["dali"]["keys"]


def test_missing_dali_names_the_fix(shards, monkeypatch):
    """Without nvidia.dali importable, asking for the dali backend says how to install it."""
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # what Python does for a package that is absent
    monkeypatch.delitem(sys.modules, "ravdess_dist.data.dali_path", raising=False)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[dali\]'"):
        loader("dali", shards, "normal", 8)


def test_shards_at_another_rate_give_the_configured_rate_features(shards, tmp_path):
    """Shards packed at 48 kHz: the torch and device backends resample to features.sample_rate (16 kHz) and give the
    features of the 16 kHz shards (up to the two resamplers' differences), and equal features to each other."""
    assert preprocess(["--archive", str(SAMPLE), "--out", str(tmp_path), "--no-analysis", "--jobs", "2",
                       "--sample-rate", "48000"]) == 0
    high = tmp_path / "shards"
    assert Manifest.load(high).sample_rate == 48000
    raw = FeatureConfig(normalize=False)
    reference = collect(loader("torch", shards, "strong", 28, features=raw))
    for backend in ("torch", "device"):
        got = collect(loader(backend, high, "strong", 28, features=raw))
        assert list(got) == list(reference)
        diff = torch.stack([(got[k][0] - reference[k][0]).abs().mean() for k in got])
        assert diff.mean() < 0.5, backend  # dB; without resampling: 3x the samples per window, another spectrum
    torch_high, device_high = (collect(loader(b, high, "strong", 28)) for b in ("torch", "device"))
    for key, (features, _) in torch_high.items():
        torch.testing.assert_close(device_high[key][0], features, atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", ["dali", "device"])
def test_speed_perturbation_raises_the_pitch(shards, backend):
    """augment.speed: clips played 1.25x faster have their energy in higher mel bands than clips played 0.8x."""
    plain = dict(noise_snr_db=None, time_shift_s=0.0, freq_masks=0, time_masks=0)
    centroid = {}
    for factor in (0.8, 1.25):
        ldr = loader(backend, shards, "strong", 32, train=True, augment=AugmentConfig(speed=(factor,), **plain),
                     features=FeatureConfig(normalize=False))
        power = 10 ** (next(iter(ldr)).features[:, 0] / 10)  # [B, F, T]
        bands = torch.arange(power.shape[1], dtype=torch.float32)[None, :, None]
        centroid[factor] = float((power * bands).sum() / power.sum())
    assert centroid[1.25] > centroid[0.8] + 1, centroid
