"""The loader contract every backend (torch/webdataset, DALI, device-resident) follows; the factory is data.factory.

Rank split (both backends, no communication): the epoch's shard order is laid end to end and rank r takes the samples
[floor(r*T/W), floor((r+1)*T/W)) of the T samples -- exactly how DALI's reader splits with shard_id/num_shards.
Evaluation keeps the selection's order; training permutes the shard order every epoch (seeded by seed+epoch, the same
on every rank, so the ranks' parts stay disjoint). Every rank runs ceil(T / (W*B)) steps of B samples: training
wraps around its own part to fill them, evaluation pads with rows marked valid=False.
"""
import math
import random
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio

from ravdess_dist.augment import AugmentConfig, SpecAugment
from ravdess_dist.features import FeatureConfig
from shards.labels import EMOTIONS
from shards.audio import decode_pcm16
from shards.manifest import Manifest, ShardEntry

SHUFFLE_BUFFER = 512  # samples mixed across shards in training (RAVDESS shards hold 28-32 clips)
BACKENDS = ("torch", "dali", "device")


@dataclass
class Batch:
    """One step's data on the device: features [B, 1, F, T] float32, labels [B] int64, keys, valid [B] bool."""

    features: torch.Tensor
    labels: torch.Tensor
    keys: list[str]
    valid: torch.Tensor


@dataclass
class RawBatch:
    """What a backend hands over: un-augmented features on the device, 8-way `.cls` labels on the CPU, keys."""

    features: torch.Tensor
    emotions: torch.Tensor
    keys: list[str]


def rank_bounds(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """The [start, stop) sample range of one rank, DALI's formula (parts differ by at most one sample)."""
    return total * rank // world_size, total * (rank + 1) // world_size


def epoch_order(entries: list[ShardEntry], train: bool, seed: int, epoch: int) -> list[ShardEntry]:
    """The shard order of an epoch: as given for evaluation, a seed+epoch permutation (same on every rank) for training."""
    if not train:
        return list(entries)
    order = list(entries)
    random.Random(f"{seed}-{epoch}").shuffle(order)
    return order


def rank_part(entries: list[ShardEntry], rank: int, world_size: int) -> list[tuple[ShardEntry, list[str]]]:
    """The shards rank RANK opens, in order, each with the keys (in tar order) of its own samples there."""
    start, stop = rank_bounds(sum(e.samples for e in entries), rank, world_size)
    part, offset = [], 0
    for entry in entries:
        lo, hi = max(start - offset, 0), min(stop - offset, entry.samples)
        if lo < hi:
            part.append((entry, entry.keys[lo:hi]))
        offset += entry.samples
    return part


def epoch_part(entries: list[ShardEntry], train: bool, seed: int, epoch: int, rank: int,
               world_size: int) -> list[tuple[ShardEntry, list[str]]]:
    """The shards and keys rank RANK reads in EPOCH: rank_part of that epoch's shard order."""
    return rank_part(epoch_order(entries, train, seed, epoch), rank, world_size)


def label_lookup(class_names: list[str]) -> torch.Tensor:
    """Map from the shards' 8-way emotion index to the index in CLASS_NAMES (-1 for an emotion not in the list)."""
    unknown = set(class_names) - set(EMOTIONS)
    if unknown:
        raise ValueError(f"unknown class name(s) {sorted(unknown)}")
    return torch.tensor([class_names.index(e) if e in class_names else -1 for e in EMOTIONS], dtype=torch.int64)


def sub_seed(*parts: int) -> int:
    """One 31-bit seed from several integers (seed, epoch, rank, worker), well mixed and reproducible."""
    return int(np.random.SeedSequence(parts).generate_state(1)[0] >> 1)


@dataclass
class LoaderSpec:
    """What a loader reads and how: one object instead of a dozen positional arguments.

    eval_crops: windows per clip at evaluation (device backend; probabilities averaged by `evaluate`).
    speaker_norm: per-actor feature statistics (device backend; uses the actors' unlabelled audio), over the loader's
        own clips, or over SPEAKER_REFERENCE's where given (`reference_entries`: each actor's other-intensity clips).
    eval_speeds: speed factors of test-time views (device backend): every window is also scored played at each of
        them (speed perturbation, as in training), so a clip has eval_crops x len(eval_speeds) windows.
    data_stream: training passes computed one pass ahead on a side CUDA stream (device backend on a GPU; None, the
        default: on a GPU).
    """

    root: Path
    entries: list[ShardEntry]
    class_names: list[str]
    batch_size: int
    train: bool
    features: FeatureConfig
    augment: AugmentConfig | None = None
    device: torch.device | str = "cpu"
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    num_workers: int = 2
    eval_crops: int = 1
    speaker_norm: bool = False
    eval_speeds: tuple[float, ...] = (1.0,)
    speaker_reference: list[ShardEntry] | None = None
    data_stream: bool | None = None


OTHER_INTENSITY = {"normal": "strong", "strong": "normal"}


def reference_entries(manifest: Manifest, intensity: str, speaker_stats: str, actors) -> list[ShardEntry] | None:
    """The shards whose clips give ACTORS' speaker_norm statistics: None for "own" (the loader's own clips); for
    "other_intensity" each actor's clips of the other intensity, which this intensity's task never scores."""
    if speaker_stats == "own" or not actors:
        return None
    return manifest.select(OTHER_INTENSITY[intensity], actors)


def decode(sample: dict) -> tuple[torch.Tensor, int, str]:
    """A shard sample -> (mono int16 waveform, 8-way emotion index, key); a bad one is an error naming tar and key."""
    try:
        return torch.from_numpy(decode_pcm16(sample["wav"])), int(sample["cls"]), sample["__key__"]
    except Exception as err:
        raise ValueError(f"{sample.get('__url__')}: sample {sample.get('__key__')}: cannot decode ({err})") from err


def resample_pcm16(wave: torch.Tensor, source_rate: int, sample_rate: int) -> torch.Tensor:
    """int16 audio at SOURCE_RATE -> int16 at SAMPLE_RATE (torchaudio's sinc resampler; unchanged if equal): shards
    packed at another rate (`--sample-rate 48000` or `native`) still give features at the configured rate."""
    if source_rate == sample_rate:
        return wave
    out = torchaudio.functional.resample(wave.float(), source_rate, sample_rate)
    return out.round().clamp(-32768, 32767).to(torch.int16)


class ShardLoader:
    """Base of every backend: rank split, step count, labels, padding, SpecAugment; a backend yields RawBatches."""

    def __init__(self, spec: LoaderSpec):
        """Check the spec and compute this rank's share from the manifest's sample counts alone."""
        if not spec.entries:
            raise ValueError("no shards selected: check the intensity and the actors of the split")
        if not 0 <= spec.rank < spec.world_size:
            raise ValueError(f"rank {spec.rank} is outside 0..{spec.world_size - 1}")
        if spec.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {spec.batch_size}")
        self.spec = spec
        self.root, self.entries, self.class_names = Path(spec.root), list(spec.entries), list(spec.class_names)
        self.batch_size, self.train, self.features = spec.batch_size, spec.train, spec.features
        self.device = torch.device(spec.device)
        self.augment = spec.augment if spec.train else None
        self.rank, self.world_size, self.seed, self.num_workers = spec.rank, spec.world_size, spec.seed, spec.num_workers
        self.total = sum(e.samples for e in self.entries)
        start, stop = rank_bounds(self.total, self.rank, self.world_size)
        self.num_samples = stop - start
        if self.train and self.num_samples == 0:
            raise ValueError(f"{self.total} training samples cannot feed {self.world_size} ranks")
        self.epoch = 0
        self.source_rate = Manifest.load(self.root).sample_rate  # the shards' rate; features.sample_rate may differ
        self.lookup = label_lookup(self.class_names)
        self.spec_augment = SpecAugment(self.augment).to(self.device) if self.augment else None

    def plan(self, epoch: int) -> list[tuple[ShardEntry, list[str]]]:
        """The shards and keys this rank reads in EPOCH (what ranks.json records; the trainer need not recompute it)."""
        return epoch_part(self.entries, self.train, self.seed, epoch, self.rank, self.world_size)

    def __len__(self) -> int:
        """Steps per epoch, the same on every rank: ceil(total samples / (world size * batch size))."""
        return math.ceil(self.total / (self.world_size * self.batch_size))

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shard order, shuffling and crops the next iteration replays."""
        self.epoch = epoch

    def raw_batches(self) -> Generator[RawBatch | Batch, None, None]:
        """The backend's batches: endless full ones when training, this rank's part once (last one short) otherwise;
        finished Batches where the backend did `finish`'s work itself."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Batch]:
        """Exactly len(self) batches of batch_size rows; padding rows (evaluation only) have valid=False."""
        raw, last = self.raw_batches(), None
        try:
            for _ in range(len(self)):
                batch = next(raw, None)
                last = self.finish(batch) if batch is not None else self.padding(last)
                yield last
        finally:
            raw.close()  # training streams are endless: stop this one here

    def class_indices(self, emotions: torch.Tensor) -> torch.Tensor:
        """The class index (CPU) of each 8-way emotion; an emotion outside the class list is an error naming it."""
        labels = self.lookup[emotions]
        if (labels < 0).any():
            missing = sorted({EMOTIONS[e] for e, l in zip(emotions.tolist(), labels.tolist()) if l < 0})
            raise ValueError(f"emotion(s) {missing} are not among the classes {self.class_names}")
        return labels

    def finish(self, raw: RawBatch | Batch) -> Batch:
        """Map labels to class indices, pad a short batch, apply SpecAugment when training. A Batch is finished
        already (the device backend's GPU passes do this once for all their batches) and passes as it is."""
        if isinstance(raw, Batch):
            return raw
        labels = self.class_indices(raw.emotions)
        n, fill = len(raw.keys), self.batch_size - len(raw.keys)
        valid = torch.arange(self.batch_size) < n
        features = raw.features
        if fill:  # repeat the last real row: the shape stays fixed and the row is real data, only flagged
            rows = torch.cat([torch.arange(n), torch.full((fill,), n - 1)])
            features, labels = features[rows.to(features.device)], labels[rows]
        if self.spec_augment is not None:
            features = self.spec_augment(features)
        return Batch(features, labels.to(self.device, non_blocking=True), list(raw.keys) + [raw.keys[-1]] * fill,
                     valid.to(self.device, non_blocking=True))

    def padding(self, last: Batch | None) -> Batch:
        """A batch of padding rows only, for a rank whose part ran out before the others'."""
        if last is None:  # this rank's part is empty: zeros of the right shape
            shape = (self.batch_size, 1, self.features.num_bins, self.features.num_frames)
            last = Batch(torch.zeros(shape, device=self.device), torch.zeros(self.batch_size, dtype=torch.int64,
                         device=self.device), [""] * self.batch_size, torch.zeros(self.batch_size, dtype=torch.bool))
        return Batch(last.features, last.labels, last.keys, torch.zeros_like(last.valid, device=self.device))
