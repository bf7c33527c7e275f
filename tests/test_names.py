"""RAVDESS file-name parsing: every valid code, and each kind of invalid name."""
import itertools

import pytest

from preprocess.names import InvalidName, parse_name
from shards.labels import EMOTIONS
from tests.corpus import clip_name


def test_every_valid_code_parses():
    """All 1440 valid names parse to the labels their codes stand for."""
    names = 0
    for emotion, intensity, statement, repetition, actor in itertools.product(range(1, 9), (1, 2), (1, 2), (1, 2), range(1, 25)):
        if emotion == 1 and intensity == 2:
            continue
        clip = parse_name(clip_name(emotion, intensity, statement, repetition, actor))
        assert clip.emotion == EMOTIONS[emotion - 1] and clip.emotion_code == emotion
        assert clip.intensity == ("normal", "strong")[intensity - 1]
        assert (clip.statement, clip.repetition, clip.actor) == (statement, repetition, actor)
        assert clip.gender == ("male" if actor % 2 else "female")
        names += 1
    assert names == 1440


@pytest.mark.parametrize("stem, reason", [
    ("03-01-06-01-02-01", "not 7 two-digit fields"),
    ("03-01-06-01-02-01-12-01", "not 7 two-digit fields"),
    ("03-01-6-01-02-01-12", "not 7 two-digit fields"),
    ("03-01-xx-01-02-01-12", "not 7 two-digit fields"),
    ("01-01-06-01-02-01-12", "modality 01 is not 03"),
    ("03-02-06-01-02-01-12", "vocal channel 02 is not 01"),
    ("03-01-09-01-02-01-12", "emotion code 09"),
    ("03-01-00-01-02-01-12", "emotion code 00"),
    ("03-01-06-03-02-01-12", "intensity code 03"),
    ("03-01-06-01-03-01-12", "statement code 03"),
    ("03-01-06-01-02-03-12", "repetition code 03"),
    ("03-01-06-01-02-01-25", "actor code 25"),
    ("03-01-06-01-02-01-00", "actor code 00"),
    ("03-01-01-02-01-01-01", "neutral (emotion 01) has no strong intensity"),
])
def test_invalid_names_say_why(stem, reason):
    """Each kind of invalid name is rejected with a message naming the problem."""
    with pytest.raises(InvalidName, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_name(stem)
