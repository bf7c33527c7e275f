"""Small generated RAVDESS-like corpora for tests: real WAV/FLAC files with valid names, tones of known pitch."""
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE = Path(__file__).resolve().parent.parent / "sample" / "ravdess_actors01-04_16k"


def clip_name(emotion: int, intensity: int, statement: int, repetition: int, actor: int) -> str:
    """A RAVDESS audio-only speech stem."""
    return f"03-01-{emotion:02d}-{intensity:02d}-{statement:02d}-{repetition:02d}-{actor:02d}"


def tone(seconds: float, sample_rate: int, freq: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A sine with a little noise, shaped (frames, channels)."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    rng = np.random.default_rng(seed)
    y = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
    return np.repeat(y[:, None], channels, axis=1).astype(np.float32)


def make_corpus(root: Path, actors=(1, 2), emotions=range(1, 9), sample_rate=16000, seconds=0.6, suffix=".wav") -> list[Path]:
    """Write every valid clip (both intensities, statements, repetitions) of the given actors and emotions."""
    written = []
    for actor in actors:
        folder = root / f"Actor_{actor:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for emotion in emotions:
            for intensity in (1, 2) if emotion != 1 else (1,):
                for statement in (1, 2):
                    for repetition in (1, 2):
                        path = folder / (clip_name(emotion, intensity, statement, repetition, actor) + suffix)
                        seed = hash((actor, emotion, intensity, statement, repetition)) % 2**32
                        sf.write(path, tone(seconds, sample_rate, 110 * emotion + 7 * actor, seed=seed), sample_rate)
                        written.append(path)
    return written
