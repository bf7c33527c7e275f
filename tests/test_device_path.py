"""The device backend on shards of the bundled sample: the torch path's features, evaluation windows over the speech,
training crops inside it, per-speaker statistics, and one decode per process."""
from dataclasses import replace

import pytest
import torch

from ravdess_dist.augment import AugmentConfig
from ravdess_dist.data import device_path
from ravdess_dist.data.factory import make_loader
from ravdess_dist.data.device_path import read_shard
from ravdess_dist.evaluate import window_average
from ravdess_dist.features import FeatureConfig, span_crop_starts
from ravdess_dist.models import create_model
from shards.manifest import Manifest
from tests.gpu import GPU_MARKS, gpu
from tests.test_loaders import collect, loader, shards  # noqa: F401  (shards is a fixture)


@pytest.mark.parametrize("intensity", ["normal", "strong"])
def test_device_features_equal_the_torch_path(shards, intensity):  # noqa: F811
    """Evaluation: the same clips, labels and features (centred 3 s windows) as the torch backend, to float tolerance."""
    torch_path, device = (collect(loader(b, shards, intensity, 24)) for b in ("torch", "device"))
    assert list(device) == list(torch_path)
    for key, (features, label) in torch_path.items():
        assert device[key][1] == label
        torch.testing.assert_close(device[key][0], features, atol=1e-4, rtol=0)


def test_eval_crops_are_windows_over_the_speech(shards):  # noqa: F811
    """eval_crops=3 with a speech span: [B, 3, 1, F, T] features of three different windows per clip, whose averaged
    probabilities are a distribution."""
    feats = FeatureConfig(clip_seconds=1.5, speech_top_db=40.0)
    ldr = loader("device", shards, "strong", 16, features=feats, eval_crops=3)
    batch = next(iter(ldr))
    assert batch.features.shape == (16, 3, 1, 64, feats.num_frames)
    assert not torch.equal(batch.features[:, 0], batch.features[:, 2])
    model = create_model("cnn", 7, 64, feats.num_frames).eval()
    with torch.no_grad():
        probs = window_average(model, batch.features).exp()
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(16))
    spans = ldr.spans
    assert (spans[:, 0] > 0).float().mean() > 0.9  # real clips start with silence: the span starts later
    assert ((spans[:, 1] - spans[:, 0]) / ldr.lengths).mean() < 0.8  # and stops before the end


def test_eval_speeds_add_speed_views_of_each_window(shards):  # noqa: F811
    """eval_speeds=(0.9, 1.0, 1.1) with 2 crops: [B, 6, 1, F, T], clip by clip its 2 windows at 0.9, then at 1.0, then
    at 1.1; the 1.0 views are exactly the plain windows, the others are the speed-perturbed (resampled) audio."""
    feats = FeatureConfig(clip_seconds=1.5, speech_top_db=40.0)
    plain = next(iter(loader("device", shards, "strong", 8, features=feats, eval_crops=2)))
    views = next(iter(loader("device", shards, "strong", 8, features=feats, eval_crops=2, eval_speeds=(0.9, 1.0, 1.1))))
    assert views.keys == plain.keys and views.features.shape == (8, 6, 1, 64, feats.num_frames)
    torch.testing.assert_close(views.features[:, 2:4], plain.features)
    assert not torch.allclose(views.features[:, 0:2], plain.features, atol=1e-3)
    assert not torch.allclose(views.features[:, 4:6], plain.features, atol=1e-3)


def test_training_crops_lie_inside_the_speech_span():
    """A window shorter than the span lies inside it; one longer than the span contains it; both inside the clip."""
    lengths = torch.tensor([60000, 60000, 20000])
    spans = torch.tensor([[15000, 45000], [25000, 33000], [2000, 18000]])
    for draw in torch.linspace(0, 0.999, 7):
        starts = span_crop_starts(lengths, spans, 16000, torch.full((3,), float(draw)))
        assert 15000 <= starts[0] <= 45000 - 16000
        assert starts[1] <= 25000 and starts[1] + 16000 >= 33000
        assert 0 <= starts[2] <= 4000
    low, high = (span_crop_starts(lengths, spans, 16000, torch.full((3,), d)) for d in (0.0, 1 - 1e-7))
    assert low[0] == 15000 and high[0] == 45000 - 16000  # the draw spans every position


def test_training_batches_with_speed_and_span_replay(shards):  # noqa: F811
    """Training with speech spans and speed perturbation: full batches of the fixed shape; an epoch replays exactly."""
    feats = FeatureConfig(clip_seconds=1.5, speech_top_db=40.0)
    aug = AugmentConfig(speed=(0.9, 1.0, 1.1))
    ldr = loader("device", shards, "normal", 32, train=True, augment=aug, features=feats)
    passes = []
    for _ in range(2):
        torch.manual_seed(0)
        passes.append(list(ldr))
    assert all(b.features.shape == (32, 1, 64, feats.num_frames) and b.valid.all() for b in passes[0])
    assert all(torch.equal(a.features, b.features) for a, b in zip(*passes))


def test_prefetch_thread_only_on_the_cpu_with_workers(shards, monkeypatch):  # noqa: F811
    """num_workers > 0 on the CPU: the training batches are computed 2 ahead in a thread; num_workers=0: inline."""
    depths, original = [], device_path.prefetched

    def recording(batches, depth):
        depths.append(depth)
        return original(batches, depth)

    monkeypatch.setattr(device_path, "prefetched", recording)
    for workers in (2, 0):
        ldr = loader("device", shards, "strong", 16, train=True, features=FeatureConfig(clip_seconds=1.0),
                     num_workers=workers)
        next(iter(ldr))
    assert depths == [device_path.PREFETCH, 0] and device_path.PREFETCH > 0


def test_training_batches_do_not_depend_on_the_global_generator(shards):  # noqa: F811
    """Crops, speed, noise and shift come from the loader's generators seeded by (seed, epoch, rank): on the CPU they
    are computed in a prefetch thread while the training thread draws dropout and SpecAugment from torch's global
    generator, so the batches must be the same whatever that generator does, must leave it untouched, and must equal
    those computed in the training thread (num_workers=0)."""
    feats = FeatureConfig(clip_seconds=1.0, speech_top_db=40.0)
    aug = AugmentConfig(speed=(0.9, 1.1), noise_p=1.0, freq_masks=0, time_masks=0)
    ldr = loader("device", shards, "normal", 16, train=True, augment=aug, features=feats)
    passes = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        ldr.set_epoch(3)
        passes.append([b.features for b in ldr])
        assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(a, b) for a, b in zip(*passes))
    inline = loader("device", shards, "normal", 16, train=True, augment=aug, features=feats, num_workers=0)
    inline.set_epoch(3)  # num_workers=0: no prefetch thread, the same batches
    assert all(torch.equal(a.features, b) for a, b in zip(inline, passes[0]))
    ldr.set_epoch(4)
    assert not torch.equal(next(iter(ldr)).features, passes[0][0])  # another epoch, other draws


@pytest.mark.parametrize("pitch_bins", [0, 8])
def test_speaker_norm_standardises_each_actor(shards, pitch_bins):  # noqa: F811
    """speaker_norm: each actor's centre-window features have mean 0 and standard deviation 1 per row: every mel band
    and, with features.pitch_bins, every pitch row (normalised per speaker like the bands)."""
    ldr = loader("device", shards, "normal", 32, speaker_norm=True, features=FeatureConfig(pitch_bins=pitch_bins))
    got = collect(ldr)
    rows = 64 + pitch_bins
    for actor in {int(k[-2:]) for k in got}:
        feats = torch.stack([f for k, (f, _) in got.items() if int(k[-2:]) == actor])  # [N, 1, F, T]
        assert feats.shape[2] == rows
        torch.testing.assert_close(feats.mean(dim=(0, 3)), torch.zeros(1, rows), atol=1e-3, rtol=0)
        torch.testing.assert_close(feats.std(dim=(0, 3)), torch.ones(1, rows), atol=1e-2, rtol=0)


def test_speaker_reference_gives_the_statistics_of_other_clips(shards):  # noqa: F811
    """speaker_norm with a speaker_reference: each actor is normalised by the statistics of the reference clips (here
    its normal ones) exactly as a loader over those clips computes them, not by the scored clips' own; an actor
    without reference clips is an error naming it."""
    manifest = Manifest.load(shards)
    normal = loader("device", shards, "normal", 32, speaker_norm=True)
    own = loader("device", shards, "strong", 32, speaker_norm=True)
    enrolled = loader("device", shards, "strong", 32, speaker_norm=True, speaker_reference=manifest.select("normal"))
    for got, want in zip(enrolled.speaker_stats, normal.speaker_stats):
        assert torch.equal(got, want)
    assert not torch.allclose(enrolled.speaker_stats[0], own.speaker_stats[0])
    assert len(collect(enrolled)) == 112  # still every strong clip, once
    with pytest.raises(ValueError, match=r"no reference clips for actor\(s\) \[3, 4\]"):
        loader("device", shards, "strong", 32, speaker_norm=True, speaker_reference=manifest.select("normal", [1, 2]))


def test_the_corpus_is_decoded_once_per_process(shards):  # noqa: F811
    """A second loader over the same shards (the next CV fold) takes the decoded clips from the cache."""
    loader("device", shards, "strong", 16)
    before = read_shard.cache_info()
    loader("device", shards, "strong", 16)
    after = read_shard.cache_info()
    assert after.misses == before.misses and after.hits == before.hits + 4


@gpu
@pytest.mark.parametrize("speaker_norm, data_stream", [(False, False), (True, False), (False, True), (True, True)])
def test_training_epoch_makes_no_host_sync_on_the_gpu(shards, speaker_norm, data_stream):  # noqa: F811
    """On a GPU a training epoch of the device backend (speech spans, speed perturbation, noise, shift, SpecAugment)
    only queues work, its passes on a side stream too (data_stream): torch's sync debug mode turns any host sync (a
    blocking copy, .item(), nonzero) into an error. The first batch is made before the check: its resamplers and
    caches warm up then."""
    manifest = Manifest.load(shards)
    ldr = make_loader("device", root=shards, entries=manifest.select("normal"),
                      class_names=manifest.class_names("normal"), batch_size=16, train=True,
                      features=FeatureConfig(clip_seconds=1.5, speech_top_db=40.0),
                      augment=AugmentConfig(speed=(0.9, 1.0, 1.1)), device=torch.device("cuda"),
                      speaker_norm=speaker_norm, data_stream=data_stream)
    ldr.batches_per_pass = 4  # several passes an epoch on the sample's 128 clips
    next(iter(ldr))
    torch.cuda.set_sync_debug_mode("error")
    try:
        batches = list(ldr)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(batches) == len(ldr) and all(b.features.is_cuda and b.labels.is_cuda for b in batches)


def test_batches_computed_in_passes_are_the_batches_computed_one_by_one(shards):  # noqa: F811
    """The GPU's passes of several batches (forced here on the CPU) give the same clips in the same order, the same
    crops and speed factors, hence the same features where no noise or shift is drawn; full batches; an epoch replays."""
    plain = AugmentConfig(noise_snr_db=None, time_shift_s=0.0, freq_masks=0, time_masks=0, speed=(0.9, 1.0, 1.1))
    feats = FeatureConfig(clip_seconds=1.5, speech_top_db=40.0)
    epochs = {}
    for per_pass in (1, 4, 100):
        ldr = loader("device", shards, "normal", 12, train=True, augment=plain, features=feats, num_workers=0)
        ldr.batches_per_pass = per_pass
        epochs[per_pass] = [list(ldr) for _ in range(2)]  # two passes over epoch 0: a replay
    one = epochs[1][0]
    assert len(one) == len(ldr) and all(b.features.shape[0] == 12 and b.valid.all() for b in one)
    for per_pass, (first, again) in epochs.items():
        assert [b.keys for b in first] == [b.keys for b in one], per_pass
        assert all(torch.equal(a.features, b.features) for a, b in zip(first, again)), per_pass
        for a, b in zip(first, one):
            torch.testing.assert_close(a.features, b.features, atol=1e-4, rtol=0)


def test_a_gpu_pass_finishes_its_batches_with_seeded_masks(shards):  # noqa: F811
    """A pass of several batches (the GPU's, forced here on the CPU) labels its clips and applies SpecAugment to all
    of them at once: the labels are the per-batch path's, the masks are drawn (features differ from the unmasked
    ones), replay exactly whatever the global generator did in between (dropout draws from it between passes), and
    leave that generator untouched."""
    masked = AugmentConfig(noise_snr_db=None, time_shift_s=0.0, freq_masks=2, freq_mask_width=8, time_masks=2,
                           time_mask_width=10, speed=None)
    plain = replace(masked, freq_masks=0, time_masks=0)
    feats = FeatureConfig(clip_seconds=1.0, speech_top_db=40.0)

    def epoch(augment, per_pass):
        ldr = loader("device", shards, "normal", 12, train=True, augment=augment, features=feats, num_workers=0)
        ldr.batches_per_pass = per_pass
        return list(ldr)

    one_by_one = epoch(masked, 1)
    rng = torch.get_rng_state()
    first = epoch(masked, 4)
    assert torch.equal(torch.get_rng_state(), rng)
    torch.manual_seed(1234)  # what dropout would do between passes
    again = epoch(masked, 4)
    assert [b.keys for b in first] == [b.keys for b in one_by_one]
    assert all(torch.equal(a.labels, b.labels) for a, b in zip(first, one_by_one))
    assert all(torch.equal(a.features, b.features) for a, b in zip(first, again))
    unmasked = epoch(plain, 4)
    assert all(not torch.equal(a.features, b.features) for a, b in zip(first, unmasked))


@pytest.mark.parametrize("per_pass", [4, 6])  # 6: batches handed out before the next pass is queued (QUEUE_LEFT 4)
def test_passes_computed_ahead_are_the_passes_computed_in_turn(shards, per_pass):  # noqa: F811
    """data_stream (each pass computed one pass ahead, the next epoch's first pass queued before an epoch's last pass
    is handed out; forced here on the CPU, where there is no stream) gives the very batches of the plain passes, every
    augmentation on: over epochs in a row, each after the first starting from the pass queued for it, and for an
    epoch other than the queued one (a resumed run), which starts afresh."""
    augment = AugmentConfig(noise_snr_db=(15.0, 30.0), time_shift_s=0.1, freq_masks=2, freq_mask_width=8,
                            time_masks=2, time_mask_width=10, speed=(0.9, 1.0, 1.1))
    feats = FeatureConfig(clip_seconds=1.0, speech_top_db=40.0)
    order = [0, 1, 2, 5]

    def epochs(data_stream):
        ldr = loader("device", shards, "normal", 12, train=True, augment=augment, features=feats, num_workers=0)
        ldr.batches_per_pass, ldr.data_stream = per_pass, data_stream
        made, passes = [], ldr.passes
        ldr.passes = lambda epoch: made.append(epoch) or passes(epoch)
        out = []
        for epoch in order:
            ldr.set_epoch(epoch)
            out.append(list(ldr))
        return ldr, made, out

    _, _, plain = epochs(False)
    ldr, made, ahead = epochs(True)
    assert len(plain[0]) == len(ldr) > 4  # several passes an epoch
    assert made == [0, 1, 2, 3, 5, 6]  # epochs 1 and 2 began with the pass queued ahead; 5 afresh
    assert ldr.ahead[0].epoch == 6
    for first, second in zip(plain, ahead, strict=True):
        assert [b.keys for b in first] == [b.keys for b in second]
        assert all(torch.equal(a.labels, b.labels) and torch.equal(a.features, b.features)
                   for a, b in zip(first, second, strict=True))
    assert not torch.equal(plain[0][0].features, plain[1][0].features)  # the epochs differ: a real comparison


def test_data_stream_needs_the_device_backend():
    """data_stream is the device backend's: with another backend it is an error naming it."""
    from ravdess_dist.config import load_config
    assert load_config(["--backend", "device", "data_stream=true"]).data_stream is True
    with pytest.raises(ValueError, match="data_stream need.*--backend device"):
        load_config(["--backend", "torch", "data_stream=true"])


@pytest.mark.parametrize("data_stream, expected", [(None, False), (False, False), (True, True)])
def test_data_stream_unset_is_off_on_a_cpu(shards, data_stream, expected):  # noqa: F811
    """data_stream unset is on on a GPU only (DeviceLoader decides by its device): on a CPU, passes forced to several
    batches still come one by one in the training thread unless it is set true."""
    manifest = Manifest.load(shards)
    ldr = make_loader("device", root=shards, entries=manifest.select("normal"),
                      class_names=manifest.class_names("normal"), batch_size=12, train=True,
                      features=FeatureConfig(clip_seconds=1.5, speech_top_db=40.0), device=torch.device("cpu"),
                      **({} if data_stream is None else {"data_stream": data_stream}))
    ldr.batches_per_pass = 4
    assert ldr.data_stream is expected and ldr.overlapped is expected and ldr.stream is None


def test_every_pass_size_has_its_fft_plans_made_before_it_is_queued(shards):  # noqa: F811
    """data_stream (forced here on the CPU, which has no side stream): every pass the loader computes, full, the
    epoch's short last one and the wrap-around's single batch, is of a size whose FFTs were run on the training stream
    before (DeviceLoader.plan_ffts). On a GPU a cuFFT plan first made inside a pass on the side stream is set up on the
    default stream behind the queued steps and can run before its set-up (an H100, 2026-11-28: illegal memory accesses
    in 9 of 24 CV folds sharing the GPU, none in 12 with the plans made first)."""
    manifest = Manifest.load(shards)
    ldr = make_loader("device", root=shards, entries=manifest.select("normal"),
                      class_names=manifest.class_names("normal"), batch_size=12, train=True,
                      features=FeatureConfig(clip_seconds=1.5, speech_top_db=40.0),
                      augment=AugmentConfig(speed=(0.9, 1.0, 1.1)), device=torch.device("cpu"), data_stream=True)
    ldr.batches_per_pass = 4
    computed, unplanned, compute = [], [], ldr.train_features

    def spied(rows, *args):
        computed.append(len(rows))
        if len(rows) not in ldr.planned:
            unplanned.append(len(rows))
        return compute(rows, *args)

    ldr.train_features = spied
    for epoch in range(3):
        ldr.set_epoch(epoch)
        list(ldr)
    assert len(set(computed)) >= 2 and not unplanned, (sorted(set(computed)), unplanned)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=GPU_MARKS)])
def test_speed_groups_padded_to_a_few_sizes_give_the_same_features(shards, device):  # noqa: F811
    """The GPU's speed groups (forced on the CPU too): each factor's clips of a pass are resampled in a group padded
    to a multiple of `speed_group`, so the resampler sees a few input shapes (cuDNN plans each new shape: ~1.3 ms of
    host time a call on an H100) and the features are those of the exact groups; factor 1.0 is not resampled."""
    plain = AugmentConfig(noise_snr_db=None, time_shift_s=0.0, freq_masks=0, time_masks=0, speed=(0.9, 1.0, 1.1))
    feats = FeatureConfig(clip_seconds=1.0, speech_top_db=40.0)
    out = {}
    for group in (1, 16):
        ldr = loader("device", shards, "normal", 12, train=True, augment=plain, features=feats, num_workers=0,
                     device=torch.device(device), data_stream=False)
        ldr.batches_per_pass, ldr.speed_group, shapes = 4, group, []
        for resampler in ldr.speed_perturb.resamplers.values():
            resampler.register_forward_pre_hook(lambda module, args: shapes.append(args[0].shape[0]))
        out[group] = list(ldr), shapes
    (exact, exact_shapes), (padded, padded_shapes) = out[1], out[16]
    assert any(n % 16 for n in exact_shapes)  # the exact groups: sizes of every kind
    assert padded_shapes and all(n % 16 == 0 for n in padded_shapes), padded_shapes
    assert [b.keys for b in exact] == [b.keys for b in padded]
    for a, b in zip(exact, padded, strict=True):
        torch.testing.assert_close(a.features, b.features, atol=1e-4, rtol=0)  # cuDNN: per-shape algorithms


def test_the_next_pass_is_queued_once_most_of_a_pass_is_handed_out(shards):  # noqa: F811
    """data_stream (forced here on the CPU, which has no side stream): the next pass is queued when QUEUE_LEFT batches
    of the current one are left to hand out, not before its first batch; the next epoch's first pass before the
    epoch's last batch. On a GPU an epoch starts with the GPU's queue drained: queuing the next pass first (~19 ms of
    host launches, hybrid on an H100) left it idle, 12-13 % of the epoch's GPU time counted as data wait."""
    manifest = Manifest.load(shards)
    ldr = make_loader("device", root=shards, entries=manifest.select("normal"),
                      class_names=manifest.class_names("normal"), batch_size=8, train=True,
                      features=FeatureConfig(clip_seconds=1.0, speech_top_db=40.0),
                      augment=AugmentConfig(speed=(0.9, 1.0, 1.1)), device=torch.device("cpu"), data_stream=True,
                      num_workers=0)  # as on a GPU: no prefetch thread taking batches ahead
    ldr.batches_per_pass = 6
    handed, queued_at, compute = [0], [], ldr.computed
    ldr.computed = lambda producer: queued_at.append((producer.epoch, handed[0])) or compute(producer)
    for epoch in range(2):
        ldr.set_epoch(epoch)
        handed[0] = 0
        for _ in ldr:
            handed[0] += 1
    steps, left = len(ldr), device_path.QUEUE_LEFT
    assert steps > 2 * ldr.batches_per_pass > 2 * left  # several passes, each with batches to hand out first
    first = ldr.batches_per_pass - left
    # epoch 0: its first pass at once, the second after `first` batches, ..., epoch 1's first before the last batch
    assert queued_at[:3] == [(0, 0), (0, first), (0, ldr.batches_per_pass + first)], queued_at
    epoch_1 = [at for epoch, at in queued_at if epoch == 1]
    assert 0 < epoch_1[0] < steps  # queued in epoch 0, while its last pass went out
    assert epoch_1[1] == first  # epoch 1 began with the pass queued for it, then `first` batches before the next


@gpu
def test_passes_on_the_side_stream_are_the_passes_on_the_training_stream(shards):  # noqa: F811
    """On a GPU, data_stream's passes (computed on a side stream, one pass ahead, the next epoch's first one queued
    early) give the same batches as the passes computed on the training stream, bit for bit, over three epochs, while
    the training stream consumes them (each batch read there as a step would, after the loader handed it over).
    The side stream goes first, with no cuFFT plan made yet and the training stream busy as each epoch starts: a plan
    first made on the side stream is set up on the default stream, behind that work, and a pass could run before its
    set-up (DeviceLoader.plan_ffts). One process alone did not hit that race on an H100 with plan_ffts switched off
    (2026-11-28; six CV folds sharing the GPU did): the test above checks that the plans are made first."""
    manifest = Manifest.load(shards)
    out = {}
    torch.backends.cuda.cufft_plan_cache.clear()
    for data_stream in (True, False):
        ldr = make_loader("device", root=shards, entries=manifest.select("normal"),
                          class_names=manifest.class_names("normal"), batch_size=16, train=True,
                          features=FeatureConfig(clip_seconds=1.5, speech_top_db=40.0),
                          augment=AugmentConfig(speed=(0.9, 1.0, 1.1)), device=torch.device("cuda"),
                          data_stream=data_stream)
        ldr.batches_per_pass = 4
        seen = []
        for epoch in range(3):
            ldr.set_epoch(epoch)
            torch.cuda._sleep(200_000_000)  # the training stream busy (~0.1 s) as the epoch's passes are queued
            for batch in ldr:
                torch.cuda._sleep(1_000_000)  # a step's worth of work on the training stream first
                seen.append((batch.keys, batch.features.clone(), batch.labels.clone()))
        torch.cuda.synchronize()
        out[data_stream] = seen
    assert len(out[True]) == len(out[False]) == 3 * len(ldr)
    for (keys, feats, labels), (keys2, feats2, labels2) in zip(out[False], out[True]):
        assert keys == keys2 and torch.equal(feats, feats2) and torch.equal(labels, labels2)
