"""The torch backend: webdataset reads the rank's shards in DataLoader workers (soundfile decode), features on the device.

Rank split: from the manifest (see ravdess_dist.data.contract), not by webdataset's node splitter, so the pipeline is
a plain `wds.DataPipeline` (no WORLD_SIZE check, no "No samples found" when workers outnumber shards) and the ranks'
parts are the same as DALI's. Within a rank, worker w takes every num_workers-th chunk of batch_size samples, so in
evaluation the DataLoader's round-robin over the workers yields the rank's part in order with one short batch at the
end, and in training (endless passes, each shuffled) the workers' shares match the batches they are asked for.

Waveforms: the workers decode the shards' PCM16 as int16 and crop each clip to the fixed length (crop_or_pad, with
the worker's generator), so a batch is a small [B, L] int16 tensor: half the bytes of float32 to pin and copy.
Features: on a GPU, WaveAugment and Frontend run there. When the device is the CPU they run at the end of each worker's
pipeline instead (same code, same device): separate worker processes use the cores far better than intra-op threads on
small tensors (2-core machine: ~2x the throughput).
"""
import functools
import random
import signal
from pathlib import Path

import torch
import webdataset as wds
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ravdess_dist.augment import AugmentConfig, WaveAugment
from ravdess_dist.features import CPU_CHUNK, FeatureConfig, Frontend, crop_or_pad
from ravdess_dist.data.contract import (SHUFFLE_BUFFER, RawBatch, ShardLoader, decode, epoch_part, resample_pcm16,
                                        sub_seed)
from shards.audio import PCM16_SCALE

# seconds the trainer waits for a worker's next batch before it fails: a worker that hangs is then an error naming the
# shards, not a run (or a SLURM job) that waits until it is killed. A batch takes well under a second; a hung worker
# was seen once (2026-11-28b, CI under extra load: a test loader's worker forked at the end of a 2-process run never
# started; 48 reruns did not repeat it).
WORKER_TIMEOUT = 300.0


def shard_urls(urls: list[str], rng: random.Random | None) -> list[dict]:
    """One pass of tar URLs for wds.tarfile_to_samples: in order, or in a fresh random order (training)."""
    return [{"url": url} for url in (rng.sample(urls, len(urls)) if rng else urls)]


def leave_signals_to_the_trainer(_worker_id: int) -> None:
    """Workers ignore SIGUSR1, the preemption warning SLURM sends every process of a step: the trainer handles it."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


class Featurizer(nn.Module):
    """Fixed-length int16 clips [B, L] -> float -> WaveAugment (training) -> Frontend features [B, 1, F, T]."""

    def __init__(self, features: FeatureConfig, augment: AugmentConfig | None):
        """The Frontend, and WaveAugment when there is an augmentation config."""
        super().__init__()
        self.frontend = Frontend(features)
        self.wave_augment = WaveAugment(augment, features.sample_rate) if augment else None

    @torch.no_grad()
    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """Features of int16 clips, on the clips' device."""
        waves = clips.float().div_(PCM16_SCALE)
        if self.wave_augment is not None:
            waves = self.wave_augment(waves)
        return self.frontend(waves)


class ShardStream(IterableDataset):
    """Runs in each DataLoader worker: the worker's share of the rank's part for the current epoch, batched."""

    def __init__(self, root: Path, loader: ShardLoader, featurizer: Featurizer | None):
        """Keep what the workers need; the epoch lives in shared memory so persistent workers see set_epoch."""
        super().__init__()
        self.root, self.entries, self.train = root, loader.entries, loader.train
        self.seed, self.rank, self.world_size = loader.seed, loader.rank, loader.world_size
        self.batch_size, self.length = loader.batch_size, loader.features.num_samples
        self.rates = (loader.source_rate, loader.features.sample_rate)
        self.featurizer, self.crops = featurizer, torch.Generator()
        self.epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def resample(self, sample: tuple) -> tuple:
        """(wave, emotion, key) with the wave at the features' sample rate (a no-op when the shards have it)."""
        wave, emotion, key = sample
        return resample_pcm16(wave, *self.rates), emotion, key

    def collate(self, samples: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Decoded samples -> (int16 clips [B, L] cropped at the worker generator's offsets, emotions [B], keys)."""
        waves, emotions, keys = zip(*samples)
        return crop_or_pad(list(waves), self.length, self.train, self.crops), torch.tensor(emotions), list(keys)

    def featurize(self, batch: tuple) -> tuple:
        """(clips, emotions, keys) -> (features, emotions, keys) in the worker, CPU_CHUNK clips a call."""
        clips, emotions, keys = batch
        return torch.cat([self.featurizer(part) for part in clips.split(CPU_CHUNK)]), emotions, keys

    def __iter__(self):
        """A webdataset pipeline over this worker's tars, keeping only this worker's keys."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        epoch = int(self.epoch)
        part = epoch_part(self.entries, self.train, self.seed, epoch, self.rank, self.world_size)
        keys = [k for _, ks in part for k in ks]
        mine = {k for i, k in enumerate(keys) if (i // self.batch_size) % workers == worker}
        if not mine:
            return iter(())
        urls = [str(self.root / entry.path) for entry, ks in part if mine.intersection(ks)]
        seed = sub_seed(self.seed, epoch, self.rank, worker)
        rng = random.Random(seed)
        samples = wds.DataPipeline(functools.partial(shard_urls, urls, rng if self.train else None),
                                   wds.tarfile_to_samples(), wds.select(lambda sample: sample["__key__"] in mine),
                                   wds.shuffle(SHUFFLE_BUFFER, SHUFFLE_BUFFER, rng=rng) if self.train else None)
        if self.train:  # endless passes, each drained before the next: every sample once per pass
            samples = samples.repeat()
        self.crops.manual_seed(seed)
        stages = [samples, wds.map(decode), wds.map(self.resample), wds.batched(self.batch_size, collation_fn=self.collate, partial=not self.train)]
        if self.featurizer is not None:
            torch.manual_seed(seed)  # WaveAugment draws from the worker's global generator
            stages.append(wds.map(self.featurize))
        return iter(wds.DataPipeline(*stages))


class TorchLoader(ShardLoader):
    """webdataset + DataLoader workers decode, crop and collate; WaveAugment and Frontend run on the device."""

    def __init__(self, spec):
        """Build the worker pipeline and the device-side modules (see ShardLoader for the arguments)."""
        super().__init__(spec)
        self.featurizer = Featurizer(self.features, self.augment).to(self.device)
        self.on_workers = self.device.type == "cpu" and self.num_workers > 0
        self.stream = ShardStream(self.root, self, self.featurizer if self.on_workers else None)
        self.dataloader = DataLoader(self.stream, batch_size=None, num_workers=self.num_workers,
                                     pin_memory=self.device.type == "cuda", persistent_workers=self.num_workers > 0,
                                     generator=torch.Generator(),  # not the global RNG: resumed runs replay exactly
                                     worker_init_fn=leave_signals_to_the_trainer,
                                     timeout=WORKER_TIMEOUT if self.num_workers > 0 else 0)

    def set_epoch(self, epoch: int) -> None:
        """Also tell the (persistent) workers, through shared memory."""
        super().set_epoch(epoch)
        self.stream.epoch.fill_(epoch)

    def raw_batches(self):
        """Worker batches -> device -> features (unless the workers made them already). Workers that send nothing
        for two WORKER_TIMEOUTs in a row are an error: one alone can be a process stopped for longer than that
        (SIGSTOP, a suspended SLURM job), whose wait times out at once when it continues; the wait is then retried."""
        batches, timeouts = iter(self.dataloader), 0
        while True:
            try:
                data, emotions, keys = next(batches)
            except StopIteration:
                return
            except RuntimeError as error:
                if "timed out" not in str(error):
                    raise
                timeouts += 1
                if timeouts < 2:
                    continue  # the DataLoader's state is as before the wait: asking again is safe
                raise RuntimeError(f"{self.root}: no batch from the DataLoader workers in {timeouts} x "
                                   f"{self.dataloader.timeout:g} s: a worker hangs (rerun; a resumed run starts from "
                                   f"its last checkpoint)") from error
            timeouts = 0
            data = data.to(self.device, non_blocking=True)
            yield RawBatch(data if self.on_workers else self.featurizer(data), emotions, keys)
