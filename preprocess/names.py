"""Parse and validate RAVDESS file names: MM-VV-EE-II-SS-RR-AA (modality, channel, emotion, intensity, statement, repetition, actor)."""
from dataclasses import dataclass

from shards.labels import EMOTIONS, INTENSITIES, NUM_ACTORS, gender_of


class InvalidName(ValueError):
    """A file name that is not a valid RAVDESS audio-only speech name."""


@dataclass(frozen=True)
class ClipName:
    """The labels a RAVDESS file name carries."""

    key: str
    actor: int
    gender: str
    emotion: str
    emotion_code: int
    intensity: str
    statement: int
    repetition: int


def _code(field: str, value: int, low: int, high: int) -> int:
    """Check that a two-digit code lies in [low, high]."""
    if not low <= value <= high:
        raise InvalidName(f"{field} code {value:02d} is outside {low:02d}..{high:02d}")
    return value


def parse_name(stem: str) -> ClipName:
    """Labels of a file stem such as '03-01-06-01-02-01-12'; InvalidName says exactly what is wrong."""
    parts = stem.split("-")
    if len(parts) != 7 or not all(len(p) == 2 and p.isdigit() for p in parts):
        raise InvalidName(f"name {stem!r} is not 7 two-digit fields MM-VV-EE-II-SS-RR-AA")
    modality, channel, emotion, intensity, statement, repetition, actor = map(int, parts)
    if modality != 3:
        raise InvalidName(f"modality {modality:02d} is not 03 (audio-only)")
    if channel != 1:
        raise InvalidName(f"vocal channel {channel:02d} is not 01 (speech)")
    _code("emotion", emotion, 1, len(EMOTIONS))
    _code("intensity", intensity, 1, len(INTENSITIES))
    if emotion == 1 and intensity == 2:
        raise InvalidName("neutral (emotion 01) has no strong intensity (02)")
    return ClipName(
        key=stem,
        actor=_code("actor", actor, 1, NUM_ACTORS),
        gender=gender_of(actor),
        emotion=EMOTIONS[emotion - 1],
        emotion_code=emotion,
        intensity=INTENSITIES[intensity - 1],
        statement=_code("statement", statement, 1, 2),
        repetition=_code("repetition", repetition, 1, 2),
    )
