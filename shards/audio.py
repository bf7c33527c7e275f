"""Audio in and out of the shard format: decode any WAV/FLAC to mono float32, resample, encode PCM16 WAV."""
import io

import numpy as np
import soundfile as sf
import soxr

PCM16_SCALE = 32768.0  # int16 -> float in [-1, 1), the scale libsndfile (soundfile) uses


def read_mono(source, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decode a path, file object or bytes to mono float32 (channels averaged), resampled if asked."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    audio, sr = sf.read(source, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    if sample_rate is not None and sample_rate != sr:
        mono, sr = soxr.resample(mono, sr, sample_rate, quality="HQ").astype(np.float32), sample_rate
    return np.ascontiguousarray(mono), sr


def decode_pcm16(payload: bytes) -> np.ndarray:
    """A shard's WAV payload (mono PCM16, as encode_wav writes it) -> int16 samples; float32 is samples / PCM16_SCALE.

    Reading int16 and converting after the crop is ~2x faster than asking soundfile for float32.
    """
    audio, _ = sf.read(io.BytesIO(payload), dtype="int16")
    if audio.ndim != 1:
        raise ValueError(f"shard audio must be mono, got {audio.shape[1]} channels")
    return audio


def encode_wav(mono: np.ndarray, sample_rate: int) -> bytes:
    """Encode mono float audio as a 16-bit PCM WAV file in memory (clipped to [-1, 1))."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(mono, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()
