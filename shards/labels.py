"""The RAVDESS label vocabulary shared by every stage: emotions, intensities, actors."""

EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
INTENSITIES = ("normal", "strong")
SELECTIONS = ("normal", "strong", "all")
NUM_ACTORS = 24


def gender_of(actor: int) -> str:
    """RAVDESS convention: odd actors are male, even actors female."""
    return "male" if actor % 2 else "female"


def class_names(emotions_present) -> list[str]:
    """The class list of a selection: the emotions present, in the canonical RAVDESS order."""
    present = set(emotions_present)
    unknown = present - set(EMOTIONS)
    if unknown:
        raise ValueError(f"unknown emotion(s): {sorted(unknown)}")
    return [e for e in EMOTIONS if e in present]


def emotion_of_key(key: str) -> str:
    """The emotion of a sample KEY, the RAVDESS stem MM-VV-EE-II-SS-RR-AA (a key of another form is an error)."""
    parts = key.split("-")
    if len(parts) != 7 or not parts[2].isdigit() or not 1 <= int(parts[2]) <= len(EMOTIONS):
        raise ValueError(f"sample key {key!r} is not a RAVDESS stem MM-VV-EE-II-SS-RR-AA")
    return EMOTIONS[int(parts[2]) - 1]
