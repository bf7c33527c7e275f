"""The DALI backend: DALI reads, decodes and crops on the CPU, then adds noise and shifts (training) and computes the
dB mel spectrogram on the GPU (with CPU operators when there is none); torch applies Frontend.finish (MFCC when
configured, normalisation) and SpecAugment.

Rank split: every rank's reader gets all tars in the epoch's order and takes its own samples with shard_id=rank,
num_shards=world_size -- the same split as ravdess_dist.data.contract.rank_part, so both backends give a rank the same clips.
The loader counts this rank's samples from the manifest itself, so the iterator runs without an epoch size: evaluation
stops after the rank's own samples (pad_last_batch keeps the reader inside its part and ends each pass on a batch
boundary), training streams endlessly and wraps around its own part (stick_to_shard). Training builds a pipeline for
every epoch, seeded by seed+epoch+rank, so an epoch replays identically. Evaluation passes are all the same, so one
pipeline serves them all while each pass reads its part to the end (the reader then stands at the start of the next
pass); a pass abandoned halfway drops that pipeline, so it never leaks into the next.

Features match the torch Frontend: DALI's spectrogram centres 25 ms windows with zero padding (torchaudio's
pad_mode="constant"), its slaney mel filter bank equals torchaudio's norm="slaney", mel_scale="slaney", and the dB step
floors at 1e-10 (torchaudio's amin) and then at each clip's peak minus top_db (torchaudio's 4-D top_db); the window is
torch's periodic Hann. Measured on the bundled sample: the two backends' dB log-mel differ by about 1e-5 dB on average.
Crops and augmentations follow crop_or_pad and WaveAugment (same distributions, not the same random draws).
"""
import gc

import torch

try:
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator
except ImportError as err:  # the extra is optional: the torch backend needs none of it
    raise ImportError("the dali backend needs NVIDIA DALI: pip install -e '.[dali]' (nvidia-dali-cuda130)") from err

from ravdess_dist.augment import AugmentConfig
from ravdess_dist.features import FeatureConfig, Frontend
from ravdess_dist.data.contract import SHUFFLE_BUFFER, RawBatch, ShardLoader, epoch_order, sub_seed

OUTPUTS = ["features", "emotions", "source"]
AMIN_DB = -100.0  # 10 * log10(1e-10): torchaudio AmplitudeToDB's floor


def shuffle_fill(num_samples: int) -> int:
    """The training reader's shuffle buffer for a rank that reads NUM_SAMPLES clips: SHUFFLE_BUFFER, or the rank's whole
    share when that is smaller (a buffer larger than the share only re-reads the share to fill itself), at least 1."""
    return max(1, min(SHUFFLE_BUFFER, num_samples))


def crop(audio, length: int, train: bool):
    """crop_or_pad in DALI: a random offset when training, centred otherwise; short clips zero-padded at the end."""
    slack = dmath.max(audio.shape(dtype=types.INT32) - length, 0)
    if train:
        draw = fn.random.uniform(range=[0.0, 1.0])
        start = dmath.min(fn.cast(dmath.floor(draw * fn.cast(slack + 1, dtype=types.FLOAT)), dtype=types.INT32), slack)
    else:
        start = slack // 2
    return fn.slice(audio, start=start, shape=[length], axes=[0], out_of_bounds_policy="pad")


def add_noise(audio, cfg: AugmentConfig, device: str):
    """WaveAugment.add_noise in DALI: white noise at a uniform random SNR of each clip's power, on noise_p of the clips.

    Runs where AUDIO lives (the GPU when there is one: Gaussian noise costs ~2 ms per clip on a CPU thread).
    """
    low, high = cfg.noise_snr_db
    snr_db = low + (high - low) * fn.random.uniform(range=[0.0, 1.0], device=device)
    noise = fn.random.normal(audio)
    scale = dmath.sqrt(fn.reductions.mean_square(audio)
                       / (dmath.max(fn.reductions.mean_square(noise), 1e-12) * dmath.pow(10.0, snr_db / 10.0)))
    return audio + noise * scale * fn.random.coin_flip(probability=cfg.noise_p, device=device)


def shift(audio, max_shift: int, length: int):
    """WaveAugment.shift in DALI: move by a whole number of samples in [-max_shift, max_shift], filling with zeros.

    The offsets are drawn on the CPU: operator arguments always live there, whatever the data's device.
    """
    samples = fn.cast(dmath.floor(fn.random.uniform(range=[-float(max_shift), max_shift + 1.0])), dtype=types.INT32)
    return fn.slice(audio, start=-samples, shape=[length], axes=[0], out_of_bounds_policy="pad")


def log_mel(audio, cfg: FeatureConfig):
    """Frontend.log_mel in DALI: power spectrogram -> slaney mel -> dB, floored at 1e-10 and at the peak - top_db."""
    spec = fn.spectrogram(audio, nfft=cfg.n_fft, window_length=cfg.win_length, window_step=cfg.hop_length,
                          window_fn=torch.hann_window(cfg.win_length).tolist(), center_windows=True,
                          reflect_padding=False, power=2)
    mel = fn.mel_filter_bank(spec, sample_rate=cfg.sample_rate, nfilter=cfg.n_mels, freq_low=cfg.f_min,
                             freq_high=cfg.f_max or cfg.sample_rate / 2, normalize=True, mel_formula="slaney")
    db = fn.to_decibels(mel, multiplier=10.0, reference=1.0, cutoff_db=AMIN_DB)
    return dmath.max(db, fn.reductions.max(db) - cfg.top_db)


@pipeline_def
def feature_pipeline(paths: list[str], index_paths: list[str] | None, rank: int, world_size: int, train: bool,
                     features: FeatureConfig, augment: AugmentConfig | None, gpu: bool, initial_fill: int = SHUFFLE_BUFFER):
    """Shards -> (dB mel [n_mels, T] per clip, padded `.cls` text, padded source info "tar:offset:KEY.wav").

    INITIAL_FILL: the reader's shuffle buffer when training (shuffle_fill of the rank's share).

    Reading, decoding and cropping run on the CPU; noise, shift and the spectrogram on the GPU when GPU is set.
    """
    wav, cls = fn.readers.webdataset(paths=paths, index_paths=index_paths, ext=["wav", "cls"], shard_id=rank,
                                     num_shards=world_size, random_shuffle=train, initial_fill=initial_fill,
                                     pad_last_batch=not train, stick_to_shard=True, name="Reader")
    source = fn.get_property(wav, key="source_info")
    audio, _ = fn.decoders.audio(wav, downmix=True, sample_rate=features.sample_rate, dtype=types.FLOAT)
    if augment is not None and augment.speed:  # speed perturbation: the whole clip played at a drawn factor
        audio = fn.audio_resample(audio, scale=1.0 / fn.random.choice(list(augment.speed)))
    audio = crop(audio, features.num_samples, train)
    if gpu:
        audio = audio.gpu()
    if augment is not None and augment.noise_snr_db is not None:
        audio = add_noise(audio, augment, "gpu" if gpu else "cpu")
    max_shift = round(augment.time_shift_s * features.sample_rate) if augment is not None else 0
    if max_shift > 0:
        audio = shift(audio, max_shift, features.num_samples)
    return log_mel(audio, features), fn.pad(cls), fn.pad(source)


def texts(padded: torch.Tensor) -> list[str]:
    """Rows of zero-padded bytes [B, L] (DALI's padded strings) -> Python strings."""
    return [bytes(row).rstrip(b"\0").decode() for row in padded.numpy()]


def key_of(source_info: str) -> str:
    """The sample key from DALI's source info "path/to/shard.tar:offset:KEY.wav"."""
    return source_info.rsplit(":", 1)[1].split(".", 1)[0]


class DaliLoader(ShardLoader):
    """A DALI pipeline per training epoch, one for all evaluation passes; Frontend.finish (MFCC, normalisation) and
    SpecAugment in torch."""

    def __init__(self, spec):
        """Keep the Frontend for its torch-side step and the GPU to run on (see ShardLoader for the arguments)."""
        super().__init__(spec)
        self.frontend = Frontend(self.features).to(self.device)
        self.device_id = None  # DALI's CPU-only mode
        if self.device.type == "cuda":
            self.device_id = torch.cuda.current_device() if self.device.index is None else self.device.index
        self.gpu = self.device_id is not None
        self.eval_iterator = None  # kept between evaluation passes (see the module's docstring)

    def pipeline(self):
        """A built pipeline over every tar in this epoch's order, seeded by seed+epoch+rank."""
        order = epoch_order(self.entries, self.train, self.seed, self.epoch)
        index = [self.root / e.index_path for e in order]
        pipe = feature_pipeline([str(self.root / e.path) for e in order],
                                [str(i) for i in index] if all(i.is_file() for i in index) else None,
                                self.rank, self.world_size, self.train, self.features, self.augment, self.gpu,
                                shuffle_fill(self.num_samples), batch_size=self.batch_size,
                                num_threads=max(1, self.num_workers), device_id=self.device_id,
                                seed=sub_seed(self.seed, self.epoch, self.rank))
        pipe.build()
        return pipe

    def raw_batches(self):
        """This rank's batches: endless when training, its own samples once otherwise (last batch trimmed)."""
        if self.num_samples == 0:  # more ranks than clips (evaluation only): nothing to read
            return
        iterator = self.eval_iterator
        if iterator is None:
            iterator = DALIGenericIterator(self.pipeline(), OUTPUTS, size=-1)
        self.eval_iterator, left, read_to_the_end = None, self.num_samples, False
        try:
            while not read_to_the_end:
                (out,) = next(iterator)
                n = self.batch_size if self.train else min(self.batch_size, left)
                left -= n
                read_to_the_end = not self.train and left == 0
                emotions = torch.tensor([int(t) for t in texts(out["emotions"][:n])])
                keys = [key_of(t) for t in texts(out["source"][:n])]
                yield RawBatch(self.frontend.finish(out["features"][:n]), emotions, keys)
        finally:
            if read_to_the_end:
                self.eval_iterator = iterator
            else:
                # the DALI graph sits in reference cycles: collect it now, or each pipeline's native buffers pile up
                # until Python's next full collection (measured: RSS +125 MB over 240 passes; with this, flat)
                del iterator
                gc.collect()
