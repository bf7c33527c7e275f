"""The device backend: the selected clips decoded once and kept as tensors on the device; every batch is cut, augmented
and turned into features there.

- Load: every shard of the selection is read once per process (webdataset + the shards' PCM16 decode) and cached by
  path and sha256, so cross-validation in one process decodes the corpus once for all folds. The clips of the
  selection are laid end to end in one int16 tensor on the device (pinned host memory when the device is the CPU is
  pointless; CUDA gets a plain copy), with offsets, lengths, 8-way emotions, actors and speech spans
  (`features.speech_top_db`, found once per clip at load time).
- Rank split: this rank's keys of an epoch are `ShardLoader.plan(epoch)` -- the same clips the torch and DALI
  backends give it. Training draws the order within the rank's part, the crops and the speed factors from a generator
  seeded by (seed, epoch, rank), and noise and shift from a second one on the device seeded alike, so an epoch replays
  exactly whoever computes it. SpecAugment on a CPU runs in `ShardLoader.finish`, in the training thread, from torch's
  global generator, which the trainer seeds per epoch (and restores on a mid-epoch resume); on a GPU it runs once per
  pass (below) from the device's generator seeded by (seed, epoch, rank, pass) in a fork, which leaves the global
  state as it was.
- On a CPU with `num_workers` > 0 the training batches are computed PREFETCH batches ahead in one thread
  (`data.prefetch`), overlapping the model's step as the torch backend's worker processes do; `num_workers: 0` computes
  them in the training thread (the same batches). On a GPU they are queued on its stream in order, with no host sync
  (the draws made on the CPU travel with non-blocking copies; the speed resamplers' kernels are built once), and
  GPU_PASS batches at a time: one pass of windows, speed, noise, shift and log-mel over all their clips, so the
  launches a batch costs shrink 16-fold (at batch 32 these small models' steps are bound by kernel launches); the
  pass also labels its clips and applies SpecAugment to all of them at once, and hands over finished Batches. The
  pass size changes only the noise, shift and mask draws, never the order, crops or speed factors. With `data_stream`
  (on a GPU unless set false) each pass is computed on a side stream one pass ahead, the next epoch's first pass
  included, so the GPU computes features while the steps run; the batches are the same.
- Evaluation: the features of every clip's `eval_crops` windows (spread over its speech span; each also played at
  every factor of `eval_speeds`, test-time speed views, 1.0 alone by default) are computed on the first pass and kept:
  they are the same every epoch. A batch's features are then [B, K, 1, F, T]; `evaluate` averages the K windows'
  probabilities.
- speaker_norm (off by default: it uses the test actors' unlabelled audio): each actor's log-mel is normalised by that
  actor's own statistics (mean and standard deviation per mel band over the centre windows of that actor's clips)
  instead of per clip. The clips are this loader's own (transductive: a test actor's scored clips), or those of
  `spec.speaker_reference` (the actor's clips of the other intensity, never scored: an enrolment set).
"""
import contextlib
import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
import webdataset as wds

from ravdess_dist.augment import SpeedPerturb, WaveAugment
from ravdess_dist.data.contract import Batch, RawBatch, ShardLoader, decode, resample_pcm16, sub_seed
from ravdess_dist.data.prefetch import prefetched
from ravdess_dist.features import Frontend, span_crop_starts, span_windows, speech_span
from shards.audio import PCM16_SCALE
from shards.labels import EMOTIONS

CHUNK = 64  # clips per feature call: bounds the intermediate tensors of evaluation passes
PREFETCH = 2  # training batches computed ahead in a thread when the device is the CPU and num_workers > 0
GPU_PASS = 16  # training batches whose device work is queued in one pass on a GPU: a 16th of the kernel launches
SPEED_GROUP = 32  # on a GPU a speed factor's clips are resampled in groups padded to a multiple of this (`speed_group`)
QUEUE_LEFT = 4  # data_stream: batches of a pass still to hand out when the next pass is queued (`DeviceLoader.lead`)


@functools.lru_cache(maxsize=256)
def read_shard(path: str, sha256: str, source_rate: int, sample_rate: int, top_db: float | None, n_fft: int,
               hop: int) -> list[tuple[str, int, np.ndarray, tuple[int, int]]]:
    """(key, 8-way emotion, int16 audio at SAMPLE_RATE, speech span) of every sample of one tar, cached per process."""
    out = []
    for sample in wds.DataPipeline(wds.SimpleShardList([path]), wds.tarfile_to_samples(), wds.map(decode)):
        wave, emotion, key = sample
        audio = resample_pcm16(wave, source_rate, sample_rate).numpy()
        out.append((key, emotion, audio, speech_span(audio.astype(np.float32) / PCM16_SCALE, top_db, n_fft, hop)))
    return out


@dataclass
class Passes:
    """One epoch's training passes: its draws (DeviceLoader.pass_draws) and its noise generator on the device."""

    epoch: int
    draws: Iterator[tuple[int, list]]
    noise: torch.Generator


class DeviceLoader(ShardLoader):
    """Clips resident on the device; batches cut, augmented and featurised there (see the module docstring)."""

    def __init__(self, spec):
        """Decode (or take from the cache) every clip of the selection; keep them on the device."""
        super().__init__(spec)
        feats = self.features
        keys, emotions, actors, waves, spans = [], [], [], [], []
        for entry in self.entries:
            wanted = set(entry.keys)
            for key, emotion, audio, span in read_shard(str(self.root / entry.path), entry.sha256, self.source_rate,
                                                        feats.sample_rate, feats.speech_top_db, feats.n_fft,
                                                        feats.hop_length):
                if key in wanted:  # an entry may hold a subset of its tar's keys (e.g. neutral left out)
                    keys.append(key), emotions.append(emotion), actors.append(entry.actor)
                    waves.append(audio), spans.append(span)
        if len(keys) != self.total:
            raise ValueError(f"{self.root}: the manifest lists {self.total} clips for this selection, the tars hold "
                             f"{len(keys)} of them: run `python -m preprocess verify`")
        self.index = {k: i for i, k in enumerate(keys)}
        self.keys = keys
        lengths = torch.tensor([len(w) for w in waves], dtype=torch.int64)
        self.lengths = lengths.to(self.device)
        self.offsets = (torch.cumsum(lengths, 0) - lengths).to(self.device)
        self.audio = torch.from_numpy(np.concatenate(waves)).to(self.device)
        self.emotions = torch.tensor(emotions, dtype=torch.int64)
        self.actors = torch.tensor(actors, dtype=torch.int64)
        self.device_actors = self.actors.to(self.device)
        self.spans = torch.tensor(spans, dtype=torch.int64).reshape(-1, 2).to(self.device)
        self.frontend = Frontend(replace(feats, normalize=False) if spec.speaker_norm else feats).to(self.device)
        self.wave_augment = WaveAugment(self.augment, feats.sample_rate).to(self.device) if self.augment else None
        speeds = ((self.augment and self.augment.speed) or ()) if self.train else spec.eval_speeds
        self.speed_perturb = SpeedPerturb(speeds).to(self.device)
        self.speaker_stats = self.reference_statistics(spec) if spec.speaker_norm else None
        self.eval_cache: list[RawBatch] | None = None
        # on a GPU a step of these small models is bound by kernel launches: the data path makes its launches for
        # GPU_PASS batches at once; on the CPU batch by batch (the prefetch thread keeps a step's worth ahead)
        self.batches_per_pass = GPU_PASS if self.device.type == "cuda" else 1
        # data_stream: passes computed one ahead on a side stream of the GPU, overlapping the steps (unset: on a GPU;
        # an H100: data wait 17 -> 9 % of GPU time); `ahead` holds the next epoch's producer and first pass once queued
        self.data_stream = spec.data_stream if spec.data_stream is not None else self.device.type == "cuda"
        on_gpu = self.data_stream and self.train and self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if on_gpu else None
        self.ahead: tuple[Passes, tuple[list, torch.cuda.Event | None]] | None = None
        self.planned: set[int] = set()  # pass sizes (clips) whose cuFFT plans exist (`plan_ffts`)
        # the speed resampler's convolution on a GPU: cuDNN plans each new input shape (~1.3 ms of host time a call
        # on an H100, 8 calls an epoch, 2026-11-28) and the number of a pass's clips drawn at each factor is random;
        # padded to multiples of SPEED_GROUP, a few shapes recur and are planned once. The CPU keeps exact groups.
        self.speed_group = SPEED_GROUP if self.device.type == "cuda" else 1
        self.full_batch = torch.ones(self.batch_size, dtype=torch.bool, device=self.device)  # a pass's `valid`: all rows

    def windows(self, rows: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
        """Float windows [B, length] of clips ROWS from STARTS (zero outside each clip)."""
        index = starts[:, None] + torch.arange(length, device=self.device)[None, :]
        inside = (index >= 0) & (index < self.lengths[rows, None])
        flat = self.offsets[rows, None] + index.clamp(min=0).minimum(self.lengths[rows, None] - 1)
        return self.audio[flat].float().div_(PCM16_SCALE) * inside

    def features_of(self, rows: torch.Tensor, waves: torch.Tensor) -> torch.Tensor:
        """Features [B, 1, F, T] of waveforms [B, N] of clips ROWS (per-actor normalisation when asked)."""
        x = self.frontend(waves)
        if self.speaker_stats is not None:
            mean, std = self.speaker_stats
            actors = self.device_actors[rows]  # a lookup on the device: no round trip through the host
            x = (x - mean[actors]) / std[actors]
        return x

    def reference_statistics(self, spec) -> tuple[torch.Tensor, torch.Tensor]:
        """speaker_norm's per-actor statistics: over this loader's clips, or over spec.speaker_reference's (decoded
        like these, from the same cache); an actor of this loader without reference clips is an error."""
        if spec.speaker_reference is None:
            return self.actor_statistics()
        reference = DeviceLoader(replace(spec, entries=spec.speaker_reference, speaker_reference=None, train=False,
                                         augment=None, class_names=EMOTIONS, rank=0, world_size=1))
        missing = sorted(set(self.actors.tolist()) - set(reference.actors.tolist()))
        if missing:
            raise ValueError(f"{self.root}: speaker_norm has no reference clips for actor(s) {missing}")
        return reference.speaker_stats

    def actor_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-actor mean and std per feature bin [A, 1, F, 1] over the centre windows of the actor's clips."""
        length, n = self.features.num_samples, len(self.keys)
        rows = torch.arange(n, device=self.device)
        starts = span_windows(self.lengths, self.spans, length, 1)[:, 0]
        feats = torch.cat([self.frontend(self.windows(r, starts[r], length)) for r in rows.split(CHUNK)])
        size = int(self.actors.max()) + 1
        mean = torch.zeros(size, 1, feats.shape[2], 1, device=self.device)
        std = torch.ones_like(mean)
        for actor in self.actors.unique().tolist():
            mine = feats[(self.actors == actor).to(self.device)]
            mean[actor] = mine.mean(dim=(0, 3), keepdim=True)[0]
            std[actor] = mine.std(dim=(0, 3), keepdim=True)[0].clamp_min(1e-5)
        return mean, std

    def rows_of(self, keys: list[str]) -> torch.Tensor:
        """Row indices of KEYS."""
        return torch.tensor([self.index[k] for k in keys], dtype=torch.int64)

    def raw_batches(self):
        """Training: endless full batches from this epoch's part; evaluation: the cached windows of the part, once."""
        if self.train:
            ahead = PREFETCH if self.device.type == "cpu" and self.num_workers > 0 else 0
            yield from prefetched(self.train_batches(), ahead)
            return
        if self.eval_cache is None:
            self.eval_cache = list(self.eval_batches())
        yield from self.eval_cache

    def eval_batches(self):
        """Batches of this rank's part in order: features [B, K, 1, F, T] of K windows over each clip's speech
        (`eval_crops` windows, each played at every factor of `eval_speeds`: K = crops x speeds; K = 1: [B, 1, F, T])."""
        keys = [k for _, ks in self.plan(0) for k in ks]
        length, crops, speeds = self.features.num_samples, self.spec.eval_crops, self.spec.eval_speeds
        for at in range(0, len(keys), self.batch_size):
            part = keys[at:at + self.batch_size]
            rows = self.rows_of(part).to(self.device)
            views = []
            for factor in speeds:  # a window played FACTOR times faster covers FACTOR times the speech
                need = round(length * factor)
                starts = span_windows(self.lengths[rows], self.spans[rows], need, crops)  # [B, crops]
                windows = self.windows(rows.repeat_interleave(crops), starts.reshape(-1), need)
                views.append(self.speed_perturb(windows, factor, length).reshape(len(part), crops, length))
            waves = torch.cat(views, dim=1).reshape(-1, length)  # clip by clip: its crops x speeds windows
            k = crops * len(speeds)
            feats = self.features_of(rows.repeat_interleave(k), waves)
            if k > 1:
                feats = feats.reshape(len(part), k, *feats.shape[1:])
            yield RawBatch(feats, self.emotions[rows.cpu()], part)

    def train_batches(self):
        """Endless batches of this epoch's part (ShardLoader.__iter__ takes len(self)): order, crops inside the speech
        span and speed factors from a seeded generator (`pass_draws`); speed perturbation, noise, shift (from a
        seeded generator on the device) and features computed for `batches_per_pass` batches at once. With
        `data_stream` (a GPU) each pass is computed one pass ahead on a side stream (`overlapped_batches`)."""
        if self.overlapped:
            yield from self.overlapped_batches()
            return
        producer = self.passes(self.epoch)
        while True:
            yield from self.computed(producer)

    @property
    def overlapped(self) -> bool:
        """Whether passes are computed ahead (data_stream, with passes of several batches: a GPU)."""
        return self.data_stream and self.batches_per_pass > 1

    def passes(self, epoch: int) -> Passes:
        """EPOCH's pass producer: its draws (`pass_draws`) and its noise generator on the device."""
        noise = torch.Generator(self.device).manual_seed(sub_seed(self.seed, epoch, self.rank, 1))
        return Passes(epoch, self.pass_draws(epoch), noise)

    def pass_draws(self, epoch: int):
        """Endless (pass index, draws) of EPOCH, `batches_per_pass` batches' draws at a time (fewer at the end of a
        permutation, where the wrap-around batch takes the tail and the head of a fresh one). Each pass's index seeds
        its SpecAugment draws on a GPU; an empty list of draws still takes its index."""
        keys = [k for _, ks in self.plan(epoch) for k in ks]
        generator = torch.Generator().manual_seed(sub_seed(self.seed, epoch, self.rank))
        rows_all = self.rows_of(keys)
        speeds, size = self.augment.speed if self.augment else None, self.batch_size
        passes = itertools.count()
        while True:
            order, pending = rows_all[torch.randperm(len(rows_all), generator=generator)], []
            for at in range(0, len(order) - size + 1, size):
                pending.append(self.draw(order[at:at + size], generator, speeds))
                if len(pending) == self.batches_per_pass:
                    yield next(passes), pending
                    pending = []
            yield next(passes), pending
            if len(order) % size:  # wrap around: the tail plus the head of a fresh permutation
                tail = order[len(order) - len(order) % size:]
                head = rows_all[torch.randperm(len(rows_all), generator=generator)][:size - len(tail)]
                yield next(passes), [self.draw(torch.cat([tail, head]), generator, speeds)]

    def computed(self, producer: Passes) -> list:
        """The batches of PRODUCER's next non-empty pass, computed now (on the side stream when there is one: each
        batch's tensors are then marked as used by the training stream, so that their memory is not reused before
        the steps that read them ran)."""
        index, draws = next(producer.draws)
        while not draws:
            index, draws = next(producer.draws)
        with torch.cuda.stream(self.stream):  # None (no side stream): nothing changes
            batches = list(self.train_pass(draws, producer, index))
        if self.stream is not None:
            main = torch.cuda.current_stream(self.device)
            for batch in batches:
                for tensor in (batch.features, batch.labels):
                    tensor.record_stream(main)
        return batches

    def overlapped_batches(self):
        """This epoch's batches with each pass computed on the side stream one pass ahead of the batches handed out:
        the GPU computes a pass while the steps of the previous one run. Before the epoch's last pass is handed out,
        the next epoch's first pass is queued too and kept (`self.ahead`): the epoch's one host sync then leaves it
        running. The next pass is queued when only a few of the current pass's batches are left to hand out (`lead`).
        A pass's batches go out after the training stream was told to wait for it (on the GPU, no host wait).
        The batches are the same as without the side stream: each pass draws only from its epoch's own generators."""
        steps, handed = len(self), 0
        self.plan_ffts()
        if self.ahead is not None and self.ahead[0].epoch == self.epoch:
            (producer, current), self.ahead = self.ahead, None
        else:  # the first epoch, or another one than was queued (a resumed run, a replay)
            producer = self.passes(self.epoch)
            current = self.queued(producer)
        while True:
            batches, ready = current
            last = handed + len(batches) >= steps
            if ready is not None:
                torch.cuda.current_stream(self.device).wait_event(ready)
            lead = self.lead(len(batches), steps - handed)
            yield from batches[:lead]
            if last:
                upcoming = self.passes(self.epoch + 1)
                self.ahead = upcoming, self.queued(upcoming)
            else:
                current = self.queued(producer)
            yield from batches[lead:]
            handed += len(batches)
            if last:
                return

    @staticmethod
    def lead(size: int, left: int) -> int:
        """How many of a pass's SIZE batches go out before the next pass is queued, LEFT batches being left to hand out
        in the epoch: all but QUEUE_LEFT, and always before the epoch's last batch.

        Why not at once: queuing a pass costs the host ~19 ms of launches (hybrid, H100: 57 ms of loader host time
        an epoch, three passes), and an epoch starts with the GPU's queue empty (the epoch's one host sync drained it).
        Queued before the first step, the GPU idles through it: the epoch's data wait measured 12-13 % of its GPU time,
        ~16 ms of ~125 ms, that idle time (2026-11-28, `scripts/device/profile_step.py`; the new order is to be
        measured on the next GPU lease). Handed out first, the pass's steps keep the GPU busy while the host queues
        the next pass; the last QUEUE_LEFT steps cover the next pass's own GPU work (a few ms) on the side stream."""
        return max(0, min(size - QUEUE_LEFT, left - 1))

    def plan_ffts(self) -> None:
        """The cuFFT plans of every pass size the side stream can compute (1 to `batches_per_pass` batches), made on the
        training stream before any pass is queued on the side stream.

        Why: cuFFT sets a new plan up with work queued on the GPU's default stream (the training stream here), which a
        side stream does not wait for. A plan first made inside a pass on the side stream could run before its set-up
        ran: on an H100, CV folds run six at a time on the GPU (their default streams long queues of steps) hit illegal
        memory accesses in epoch 0 as a pass of a size not seen before was queued, 9 folds of 24 in four CVs; with
        the plans made here first, none of 12 (2026-11-28). Made here, a plan's set-up precedes the passes that use it,
        which wait for the training stream (`queued`); nothing here waits for the GPU. The frontend's other FFTs
        (`features.pitch_bins`) are planned by the same call."""
        with torch.no_grad():
            for batches in range(1, self.batches_per_pass + 1):
                size = batches * self.batch_size
                if size not in self.planned:
                    self.frontend(torch.zeros(size, self.features.num_samples, device=self.device))
                    self.planned.add(size)

    def queued(self, producer: Passes) -> tuple[list, torch.cuda.Event | None]:
        """PRODUCER's next pass queued on the side stream, and an event recorded behind it (None without a stream).
        The side stream first waits for what the training stream has queued so far (e.g. speaker_norm's statistics,
        the steps of the pass before the one about to be handed out), then runs beside the steps queued after."""
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
        batches = self.computed(producer)
        if self.stream is None:
            return batches, None
        ready = torch.cuda.Event()
        ready.record(self.stream)
        return batches, ready

    @staticmethod
    def draw(rows: torch.Tensor, generator: torch.Generator, speeds) -> tuple[torch.Tensor, ...]:
        """A training batch's draws on the CPU: (ROWS, speed factors, uniform crop positions), from GENERATOR."""
        factors = torch.ones(len(rows))
        if speeds:
            factors = torch.tensor(speeds)[torch.randint(len(speeds), (len(rows),), generator=generator)]
        return rows, factors, torch.rand(len(rows), generator=generator)

    def train_pass(self, draws: list[tuple[torch.Tensor, ...]], producer: Passes, index: int):
        """The batches of DRAWS (from `draw`), pass INDEX of PRODUCER's epoch, their device work done in one pass over
        all their clips. On a GPU the pass also does `finish`'s work for all its batches at once (`finished_pass`); on
        the CPU finish does it."""
        rows, factors, positions = (torch.cat(parts) for parts in zip(*draws))
        features = self.train_features(rows, factors, positions, producer.noise, self.features.num_samples)
        if self.batches_per_pass > 1:
            yield from self.finished_pass(rows, features, producer.epoch, index)
            return
        for at in range(0, len(rows), self.batch_size):
            part = rows[at:at + self.batch_size]
            yield RawBatch(features[at:at + self.batch_size], self.emotions[part], [self.keys[j] for j in part.tolist()])

    def finished_pass(self, rows: torch.Tensor, features: torch.Tensor, epoch: int, index: int):
        """Finished training Batches of a GPU pass: the labels copied once, SpecAugment over every clip of the pass
        at once (torchaudio's masks are drawn clip by clip, so the distribution is the batch's), its draws from the
        device's generator seeded by (seed, EPOCH, rank, pass INDEX) inside a fork: the masks replay on resume
        and leave the generator that dropout draws from as it was. About 80 launches a pass instead of a batch."""
        labels = self.class_indices(self.emotions[rows]).to(self.device, non_blocking=True)
        if self.spec_augment is not None:
            with self.forked_generator(sub_seed(self.seed, epoch, self.rank, 2, index)):
                features = self.spec_augment(features)
        for at in range(0, len(rows), self.batch_size):
            part = rows[at:at + self.batch_size]
            yield Batch(features[at:at + self.batch_size], labels[at:at + self.batch_size],
                        [self.keys[j] for j in part.tolist()], self.full_batch)

    @contextlib.contextmanager
    def forked_generator(self, seed: int):
        """Torch's generator of this loader's device seeded with SEED inside, as it was outside (torch.random.fork_rng)."""
        if self.device.type != "cuda":
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)
                yield
            return
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index]), torch.cuda.device(index):
            torch.cuda.manual_seed(seed)
            yield

    def train_features(self, rows: torch.Tensor, factors: torch.Tensor, positions: torch.Tensor,
                       noise: torch.Generator, length: int) -> torch.Tensor:
        """Training features of clips ROWS: windows at POSITIONS of their possible places inside the speech span,
        played FACTORS times faster; noise and shift (NOISE, on the device); log-mel.

        The draws and the grouping by factor happen on the CPU; what the device needs of them is copied without
        blocking (a blocking copy would wait for the device to finish the previous step: a host sync)."""
        waves = torch.empty(len(rows), length, device=self.device)
        dev_rows, dev_positions = (t.to(self.device, non_blocking=True) for t in (rows, positions))
        for factor in factors.unique().tolist():
            pick = (factors == factor).nonzero().flatten()
            count = len(pick)
            if factor != 1.0 and count % self.speed_group:  # resampled: a few group sizes, the padding thrown away
                pick = torch.cat([pick, pick[:1].expand(-count % self.speed_group)])
            pick = pick.to(self.device, non_blocking=True)
            need = round(length * factor)
            r = dev_rows[pick]
            starts = span_crop_starts(self.lengths[r], self.spans[r], need, dev_positions[pick])
            windows = self.windows(r, starts, need)
            waves[pick[:count]] = self.speed_perturb(windows, factor, length)[:count]
        if self.wave_augment is not None:
            waves = self.wave_augment(waves, noise)
        return self.features_of(dev_rows, waves)
