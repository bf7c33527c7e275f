"""Training-time augmentation on the device: noise and time shift on waveforms, SpecAugment masks on features.

Both modules are the identity in eval mode (`module.eval()`), so validation and test features are deterministic.
Order in a training step: crop_or_pad -> WaveAugment -> Frontend -> SpecAugment (masks fill with 0, the mean of
normalised features).
"""
from dataclasses import dataclass

import torch
import torchaudio
from torch import Tensor, nn


@dataclass
class AugmentConfig:
    """Augmentation settings; a count or width of 0, or noise_snr_db None, turns that augmentation off.

    noise_snr_db and noise_p follow the original notebook (white noise at 15-30 dB SNR on a noisy copy of every
    clip, i.e. half of what the model saw was noisy); time_shift_s moves the sentence by up to +-0.2 s;
    each SpecAugment mask covers at most 8 of 64 bins or 20 of 301 frames (0.2 s), milder than SpecAugment's
    LibriSpeech policies (27 of 80 bins, 100 frames) because a clip holds one short sentence.
    speed (None: off) plays each training clip at a factor drawn from the list (e.g. [0.9, 1.0, 1.1]: Kaldi-style
    speed perturbation, tempo and pitch together, by resampling); mixup_alpha > 0 mixes pairs of training clips
    with a Beta(alpha, alpha) weight and mixes their targets alike (the trainer's step).
    """

    noise_snr_db: tuple[float, float] | None = (15.0, 30.0)
    noise_p: float = 0.5
    time_shift_s: float = 0.2
    freq_masks: int = 2
    freq_mask_width: int = 8
    time_masks: int = 2
    time_mask_width: int = 20
    speed: tuple[float, ...] | None = None
    mixup_alpha: float = 0.0

    def __post_init__(self):
        """Accept the SNR range as a list (YAML has no tuples) and refuse a reversed one."""
        if self.noise_snr_db is not None:
            self.noise_snr_db = tuple(float(v) for v in self.noise_snr_db)
            if len(self.noise_snr_db) != 2 or self.noise_snr_db[0] > self.noise_snr_db[1]:
                raise ValueError(f"augment.noise_snr_db must be (low, high) with low <= high, got {self.noise_snr_db}")
        if self.speed is not None:
            self.speed = tuple(float(v) for v in self.speed)
            if not self.speed or not all(0.5 <= v <= 2.0 for v in self.speed):
                raise ValueError(f"augment.speed must list factors in [0.5, 2], got {self.speed}")
        if self.mixup_alpha < 0:
            raise ValueError(f"augment.mixup_alpha must be >= 0, got {self.mixup_alpha}")
        if not 0.0 <= self.noise_p <= 1.0:
            raise ValueError(f"augment.noise_p must lie in [0, 1], got {self.noise_p}")


def take_windows(wave: Tensor, starts: Tensor, length: int) -> Tensor:
    """out[b, j] = wave[b, starts[b] + j] where that index lies inside the clip, else 0; [B, length]."""
    index = starts.long()[:, None] + torch.arange(length, device=wave.device)[None, :]
    inside = (index >= 0) & (index < wave.shape[1])
    return wave.gather(1, index.clamp(0, wave.shape[1] - 1)) * inside


class WaveAugment(nn.Module):
    """Waveforms [B, N] -> [B, N] in training: white noise at a random SNR per clip, then a random zero-filled shift."""

    def __init__(self, cfg: AugmentConfig, sample_rate: int):
        """Keep the settings; the shift in samples comes from the waveforms' sample rate."""
        super().__init__()
        self.cfg = cfg
        self.max_shift = round(cfg.time_shift_s * sample_rate)

    def add_noise(self, wave: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Gaussian noise scaled to exactly the drawn SNR relative to each clip's own power, on a noise_p share of clips."""
        low, high = self.cfg.noise_snr_db
        batch, draw = wave.shape[0], dict(device=wave.device, generator=generator)
        snr_db = low + (high - low) * torch.rand(batch, 1, **draw)
        noise = torch.randn(wave.shape, dtype=wave.dtype, **draw)
        signal_power = wave.pow(2).mean(dim=1, keepdim=True)
        noise_power = noise.pow(2).mean(dim=1, keepdim=True).clamp_min(1e-12)
        scale = torch.sqrt(signal_power / (noise_power * 10 ** (snr_db / 10)))
        chosen = torch.rand(batch, 1, **draw) < self.cfg.noise_p
        return wave + noise * scale * chosen

    def shift(self, wave: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Move each clip by a random whole number of samples in [-max_shift, max_shift], filling with zeros."""
        shifts = torch.randint(-self.max_shift, self.max_shift + 1, (wave.shape[0],), device=wave.device,
                               generator=generator)
        return take_windows(wave, -shifts, wave.shape[1])

    def forward(self, wave: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augmented waveforms when training, the input itself otherwise. The draws come from GENERATOR (on the
        waveforms' device), else from torch's global generator."""
        if not self.training:
            return wave
        if self.cfg.noise_snr_db is not None:
            wave = self.add_noise(wave, generator)
        if self.max_shift > 0:
            wave = self.shift(wave, generator)
        return wave


class SpecAugment(nn.Module):
    """Features [B, 1, F, T] -> same shape in training: independent frequency and time masks for every clip."""

    def __init__(self, cfg: AugmentConfig):
        """torchaudio's maskers; each mask's width is drawn uniformly below the configured maximum."""
        super().__init__()
        self.cfg = cfg
        self.freq = torchaudio.transforms.FrequencyMasking(cfg.freq_mask_width, iid_masks=True)
        self.time = torchaudio.transforms.TimeMasking(cfg.time_mask_width, iid_masks=True)

    def forward(self, spec: Tensor) -> Tensor:
        """Masked features when training, the input itself otherwise."""
        if not self.training:
            return spec
        for _ in range(self.cfg.freq_masks):
            spec = self.freq(spec)
        for _ in range(self.cfg.time_masks):
            spec = self.time(spec)
        return spec


def speed_ratio(factor: float) -> tuple[int, int]:
    """(orig_freq, new_freq) for torchaudio's resample that plays audio FACTOR times faster (1.1: 10 % shorter)."""
    orig, new = round(factor * 100), 100
    return orig, new


class SpeedPerturb(nn.Module):
    """Windows [B, ~length * factor] played FACTOR times faster -> [B, length] (resampled, then cut or zero-padded).

    One torchaudio Resample per factor, built once: its sinc kernel is a buffer that moves with the module.
    torchaudio.functional.resample rebuilds the kernel on every call (a score of small kernels, and on a GPU a blocking
    copy of a CPU scalar: a host sync per call)."""

    def __init__(self, factors):
        """A resampler for every factor other than 1 (factor 1 keeps the window itself)."""
        super().__init__()
        # keyed by the factor in percent; float32 kernels, as the functional resample builds them for float32 audio
        self.resamplers = nn.ModuleDict({str(speed_ratio(f)[0]): torchaudio.transforms.Resample(*speed_ratio(f),
                                                                                                dtype=torch.float32)
                                         for f in factors if f != 1.0})

    def forward(self, windows: Tensor, factor: float, length: int) -> Tensor:
        """WINDOWS played FACTOR times faster, cut or zero-padded to LENGTH samples."""
        out = windows if factor == 1.0 else self.resamplers[str(speed_ratio(factor)[0])](windows)
        if out.shape[1] >= length:
            return out[:, :length]
        return torch.nn.functional.pad(out, (0, length - out.shape[1]))
