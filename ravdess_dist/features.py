"""On-device feature front end: fixed-length crops of waveforms, then log-mel or MFCC features in float32 (pitch
salience rows after them if asked).

Shapes: waveforms are [B, N] float; features are [B, 1, F, T] (one channel, F bins, T frames), ready for the models.
"""
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from scipy.fft import next_fast_len
from torch import Tensor, nn

KINDS = ("logmel", "mfcc")
NORMALIZE = ("bands", "clip", "none")  # per-clip normalisation: per band over the frames, over the whole clip, none
CPU_CHUNK = 8  # clips per log-mel pass on a CPU: the intermediates stay in cache (32 clips at once: 1.3-1.6x slower)


@dataclass
class FeatureConfig:
    """Feature settings shared by the torch and DALI backends.

    Defaults: 16 kHz is enough for speech (emotion cues lie below 8 kHz); 25 ms windows with 10 ms hops
    (400/160 samples, FFT size 512) are the standard ASR framing; 64 mel bins keep the frequency detail a CNN
    uses; 40 MFCCs are the original notebook's count; an 80 dB floor below each clip's peak drops inaudible
    detail; 3 s covers the spoken sentence of almost every RAVDESS clip (2.9-5.3 s, mostly leading/trailing
    silence); per-utterance normalisation removes the recording's gain (and, per band, its channel too).
    normalize: "bands" (or true): zero mean and unit variance per band over each clip's frames, which also removes the
    clip's spectral tilt and dynamic range; "clip": one mean and standard deviation over the whole clip, which removes
    only its gain (level and tilt stay, as a listener hears them); "none" (or false): the dB values as they are.
    speech_top_db (None: off) finds each clip's speech span, the frames within that many dB of its loudest frame
    (librosa.effects.trim): training crops are drawn inside it and evaluation windows cover it (device backend,
    predict), instead of windows that are a third silence.
    pitch_bins > 0 (0: off) appends that many rows of pitch salience to the features (`Periodicity`): each frame's
    normalised autocorrelation at periods log-spaced from pitch_fmax down to pitch_fmin, a ridge at the voice's F0 that
    a 25 ms mel spectrogram does not resolve (device and torch backends: it needs the waveform).
    """

    kind: str = "logmel"
    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 64
    n_mfcc: int = 40
    f_min: float = 0.0
    f_max: float | None = None
    top_db: float = 80.0
    clip_seconds: float = 3.0
    normalize: Literal["bands", "clip", "none", True, False] = "bands"  # true/false: earlier versions' settings
    speech_top_db: float | None = None
    pitch_bins: int = 0
    pitch_fmin: float = 60.0
    pitch_fmax: float = 500.0

    def __post_init__(self):
        """Refuse settings the front end cannot honour, before any model is sized from them."""
        if isinstance(self.normalize, bool):  # the settings of earlier versions: true is "bands", false "none"
            self.normalize = "bands" if self.normalize else "none"
        if self.normalize not in NORMALIZE:
            raise ValueError(f"features.normalize must be one of {list(NORMALIZE)} (or true/false), got {self.normalize!r}")
        if self.kind not in KINDS:
            raise ValueError(f"features.kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.win_length > self.n_fft:
            raise ValueError(f"features.win_length ({self.win_length}) must not exceed n_fft ({self.n_fft})")
        if self.speech_top_db is not None and self.speech_top_db <= 0:
            raise ValueError(f"features.speech_top_db must be positive (dB below the peak), got {self.speech_top_db}")
        if self.pitch_bins < 0 or not 0 < self.pitch_fmin < self.pitch_fmax <= self.sample_rate / 2:
            raise ValueError(f"features.pitch_bins must be >= 0 (0: off) and 0 < pitch_fmin < pitch_fmax <= "
                             f"sample_rate / 2, got {self.pitch_bins}, {self.pitch_fmin}, {self.pitch_fmax}")
        if self.kind == "mfcc" and self.n_mfcc > self.n_mels:
            raise ValueError(f"features.n_mfcc ({self.n_mfcc}) must not exceed n_mels ({self.n_mels})")

    @property
    def num_samples(self) -> int:
        """Samples in one fixed-length clip."""
        return round(self.clip_seconds * self.sample_rate)

    @property
    def num_frames(self) -> int:
        """Frames T of one fixed-length clip (center=True adds a frame: 1 + N // hop)."""
        return 1 + self.num_samples // self.hop_length

    @property
    def num_bins(self) -> int:
        """Feature bins F: mel bands for log-mel, coefficients for MFCC, then the pitch rows."""
        return (self.n_mels if self.kind == "logmel" else self.n_mfcc) + self.pitch_bins


class Periodicity(nn.Module):
    """Waveforms [B, N] -> pitch salience [B, bins, T] in float32, framed like the spectrogram (centred, hop_length).

    Each frame's normalised autocorrelation by Boersma's method (1993, Praat's pitch tracker): the frame less its mean,
    Hann-windowed, its autocorrelation (an FFT) over its energy, divided by the window's own normalised
    autocorrelation; read (linear interpolation) at BINS periods log-spaced between 1/pitch_fmax and 1/pitch_fmin, rows
    from the lowest frequency up. A voiced frame shows a ridge near 1 at its F0 (and at its sub-harmonics F0/2, F0/3,
    ...); noise and silence stay near 0. Frames span three periods of pitch_fmin (800 samples, 50 ms, at 16 kHz and
    60 Hz). It depends on neither gain nor spectral tilt, so it is not normalised further.
    """

    def __init__(self, cfg: FeatureConfig):
        """The frame, the FFT size that keeps the longest period free of wrap-around, the window's autocorrelation
        and the interpolation of each row's period."""
        super().__init__()
        self.hop = cfg.hop_length
        self.frame = 2 * math.ceil(1.5 * cfg.sample_rate / cfg.pitch_fmin)  # three periods of the lowest pitch
        periods = cfg.sample_rate / np.geomspace(cfg.pitch_fmin, cfg.pitch_fmax, cfg.pitch_bins)  # samples, row order
        self.longest = math.ceil(periods.max()) + 1
        self.n_fft = next_fast_len(self.frame + self.longest, real=True)  # 5-smooth: 1080, not 2048, by default
        window = torch.hann_window(self.frame, periodic=False, dtype=torch.float64)
        self.register_buffer("window", window.float())
        self.register_buffer("window_ac", self.autocorrelation(window[None])[0].float())
        lower = np.floor(periods).astype(np.int64)
        self.register_buffer("lower", torch.from_numpy(lower))
        self.register_buffer("frac", torch.from_numpy(periods - lower).float())

    def autocorrelation(self, frames: Tensor) -> Tensor:
        """Lags 0 .. longest of each frame's autocorrelation [..., longest + 1], over its lag-0 value (0 if silent)."""
        spec = torch.fft.rfft(frames, n=self.n_fft)
        ac = torch.fft.irfft(spec.real.square() + spec.imag.square(), n=self.n_fft)[..., :self.longest + 1]
        return ac / ac[..., :1].clamp_min(torch.finfo(ac.dtype).tiny)

    def forward(self, wave: Tensor) -> Tensor:
        """Salience [B, bins, T] of waveforms [B, N]; T = 1 + N // hop_length, as the spectrogram's."""
        with torch.autocast(device_type=wave.device.type, enabled=False):
            frames = F.pad(wave.float(), (self.frame // 2, self.frame // 2)).unfold(-1, self.frame, self.hop)
            frames = (frames - frames.mean(dim=-1, keepdim=True)) * self.window
            r = self.autocorrelation(frames) / self.window_ac  # [B, T, longest + 1]
            salience = torch.lerp(r[..., self.lower], r[..., self.lower + 1], self.frac)
            return salience.clamp(-1.0, 1.0).transpose(1, 2)


class Frontend(nn.Module):
    """Waveforms [B, N] -> features [B, 1, F, T], always in float32 (fp16 log-mel overflows), even under autocast.

    `forward` = `log_mel` then `finish`, then the pitch rows (`Periodicity`) if on. A backend that already has dB mel
    spectrograms (DALI) calls `finish` alone, so both backends share the MFCC step and the normalisation (and DALI
    refuses pitch rows, which need the waveform).
    """

    def __init__(self, cfg: FeatureConfig):
        """Mel filterbank matching librosa and DALI (slaney scale and norm, zero-padded centred frames)."""
        super().__init__()
        self.cfg = cfg
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=cfg.n_fft, win_length=cfg.win_length, hop_length=cfg.hop_length, power=None, center=True,
            pad_mode="constant")
        self.mel_scale = torchaudio.transforms.MelScale(
            n_mels=cfg.n_mels, sample_rate=cfg.sample_rate, f_min=cfg.f_min, f_max=cfg.f_max, n_stft=cfg.n_fft // 2 + 1,
            norm="slaney", mel_scale="slaney")
        self.to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=cfg.top_db)  # floor: amin=1e-10
        if cfg.kind == "mfcc":  # the DCT torchaudio.transforms.MFCC uses, kept apart so `finish` can apply it to DALI's mel
            self.register_buffer("dct", torchaudio.functional.create_dct(cfg.n_mfcc, cfg.n_mels, norm="ortho"))
        self.periodicity = Periodicity(cfg) if cfg.pitch_bins else None

    def mel(self, wave: Tensor) -> Tensor:
        """Mel power spectrogram [B, 1, n_mels, T] of waveforms [B, N].

        |X|^2 as real^2 + imag^2: on the CPU twice as fast as torchaudio's abs().pow(2) (no sqrt, no complex kernels).
        """
        spec = self.spectrogram(wave.float().unsqueeze(1))
        return self.mel_scale(spec.real.square() + spec.imag.square())

    def log_mel(self, wave: Tensor) -> Tensor:
        """dB mel spectrogram [B, 1, n_mels, T]; the top_db floor is taken per clip (4-D input), as librosa does."""
        with torch.autocast(device_type=wave.device.type, enabled=False):
            return self.to_db(self.mel(wave))

    def finish(self, db: Tensor) -> Tensor:
        """dB mel [B, n_mels, T] or [B, 1, n_mels, T] -> features [B, 1, F, T]: MFCC if configured, then normalised."""
        with torch.autocast(device_type=db.device.type, enabled=False):
            x = db.float().reshape(db.shape[0], db.shape[-2], db.shape[-1])
            if self.cfg.kind == "mfcc":
                x = (x.transpose(1, 2) @ self.dct).transpose(1, 2)
            if self.cfg.normalize == "bands":  # zero mean, unit variance over time per clip and bin (instance norm)
                x = F.layer_norm(x, x.shape[-1:])
            elif self.cfg.normalize == "clip":  # one mean and variance per clip: its gain goes, its spectral shape stays
                x = F.layer_norm(x, x.shape[-2:])
            return x.unsqueeze(1)

    def features(self, wave: Tensor) -> Tensor:
        """The normalised log-mel (or MFCC) [B, 1, F, T] of waveforms [B, N], followed by the pitch rows if on."""
        x = self.finish(self.log_mel(wave))
        if self.periodicity is None:
            return x
        return torch.cat([x, self.periodicity(wave).unsqueeze(1)], dim=2)

    def forward(self, wave: Tensor) -> Tensor:
        """Features [B, 1, F, T] of waveforms [B, N]; on a CPU CPU_CHUNK clips a pass (every step is per clip, so the
        features are the same)."""
        if wave.device.type == "cpu" and len(wave) > CPU_CHUNK:
            return torch.cat([self.features(part) for part in wave.split(CPU_CHUNK)])
        return self.features(wave)


def crop_starts(lengths: Tensor, length: int, train: bool, generator: torch.Generator | None = None) -> Tensor:
    """Where each fixed-length window starts in clips of LENGTHS samples: random when training, centred otherwise.

    A clip longer than `length` is cropped: at a random offset when training (a different 3 s each epoch), centred
    otherwise (deterministic; the middle holds the sentence, unlike the notebook's fixed start at 0.5 s).
    A shorter clip starts at 0 (and is zero-padded at the end).
    """
    slack = (lengths.long() - length).clamp(min=0)
    if not train:
        return slack // 2
    draw = torch.rand(len(lengths), generator=generator, device=lengths.device if generator is None else generator.device)
    return (draw.to(slack.device) * (slack + 1)).floor().long().clamp(max=slack)


def crop_or_pad(clips: list[Tensor], length: int, train: bool, generator: torch.Generator | None = None) -> Tensor:
    """Fixed-length clips [B, length] (the clips' dtype) from 1-D clips of any lengths, windowed by crop_starts."""
    starts = crop_starts(torch.tensor([len(c) for c in clips]), length, train, generator)
    out = clips[0].new_zeros(len(clips), length)
    for row, clip, start in zip(out, clips, starts.tolist()):
        piece = clip[start:start + length]
        row[:len(piece)] = piece
    return out


def speech_span(wave: np.ndarray, top_db: float | None, frame_length: int = 512, hop_length: int = 160) -> tuple[int, int]:
    """[start, stop) samples of the speech in WAVE: from the first to the last frame within TOP_DB of the loudest one;
    the whole clip when TOP_DB is None or the clip is silent.

    The same rule and frames as librosa.effects.trim (centred, zero-padded frames; RMS power in dB against the
    maximum), equal to it sample for sample (tests); in torch because librosa's first call in a process spends ~17 s
    compiling with numba, paid again by every training process.
    """
    if top_db is None or not np.any(wave):
        return 0, len(wave)
    x = torch.as_tensor(np.asarray(wave, dtype=np.float32))
    frames = F.pad(x, (frame_length // 2, frame_length // 2)).unfold(0, frame_length, hop_length)
    db = 10 * torch.log10(frames.double().square().mean(dim=1).clamp_min(1e-10))
    voiced = (db > db.max() - top_db).nonzero().flatten()
    return int(voiced[0]) * hop_length, min(len(x), (int(voiced[-1]) + 1) * hop_length)


def span_windows(lengths: Tensor, spans: Tensor, length: int, count: int) -> Tensor:
    """Starts [B, count] of COUNT evenly spaced windows of LENGTH samples covering each clip's span [start, stop).

    A span longer than the window: windows from its start to its end (one window: centred on it). A shorter span:
    windows that contain it. Starts are kept inside the clip where the clip is long enough (else 0: padded at the end).
    """
    lo = torch.minimum(spans[:, 0], spans[:, 1] - length)
    hi = torch.maximum(spans[:, 0], spans[:, 1] - length)
    frac = torch.full((1,), 0.5) if count == 1 else torch.linspace(0, 1, count)
    starts = lo[:, None] + ((hi - lo)[:, None] * frac.to(lo.device)[None, :]).floor().long()  # floor: crop_starts
    return starts.clamp(min=0).minimum((lengths - length).clamp(min=0)[:, None])


def span_crop_starts(lengths: Tensor, spans: Tensor, length: int, draw: Tensor) -> Tensor:
    """Random training windows of LENGTH samples at DRAW (uniform [0, 1) per clip) of their possible positions: inside
    the span [start, stop) when it is longer than the window, containing it when shorter; kept inside the clip."""
    lo = torch.minimum(spans[:, 0], spans[:, 1] - length)
    hi = torch.maximum(spans[:, 0], spans[:, 1] - length)
    starts = lo + ((hi - lo + 1) * draw).floor().long().minimum(hi - lo)
    return starts.clamp(min=0).minimum((lengths - length).clamp(min=0))
