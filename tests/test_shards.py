"""Shard format read back by webdataset and by DALI's CPU reader; PCM16 payloads; manifest selection (splits: test_splits.py)."""
import io
import json
import tarfile

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from preprocess.__main__ import main
from shards.audio import PCM16_SCALE, decode_pcm16, encode_wav, read_mono
from shards.labels import EMOTIONS, emotion_of_key
from shards.manifest import Manifest
from shards.writer import make_sample, write_shard
from tests.corpus import make_corpus


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory):
    """Shards of a generated two-actor corpus."""
    tmp = tmp_path_factory.mktemp("shards")
    make_corpus(tmp / "archive", actors=(3, 4))
    assert main(["--archive", str(tmp / "archive"), "--out", str(tmp / "out"), "--no-analysis", "--jobs", "2"]) == 0
    return tmp / "out/shards"


def read_webdataset(root, entries) -> dict:
    """key -> (label index, float32 audio) through webdataset."""
    urls = [str(root / e.path) for e in entries]
    return {s["__key__"]: (int(s["cls"]), read_mono(s["wav"])[0]) for s in wds.WebDataset(urls, shardshuffle=False)}


def read_dali(root, entries) -> dict:
    """key -> (label index, float32 audio) through DALI's webdataset reader and audio decoder, on the CPU."""
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        wav, cls, meta = fn.readers.webdataset(paths=[str(root / e.path) for e in entries],
                                               index_paths=[str(root / e.index_path) for e in entries],
                                               ext=["wav", "cls", "json"], name="Reader")
        audio, _ = fn.decoders.audio(wav, downmix=True)
        return audio, cls, meta

    p = pipe()
    p.build()
    total = p.epoch_size("Reader")
    out = {}
    for _ in range(total):
        audio, cls, meta = (np.array(t[0]) for t in p.run())
        out[json.loads(meta.tobytes())["key"]] = (int(cls.tobytes()), audio.astype(np.float32))
    return out


def test_webdataset_and_dali_read_the_same_samples(shard_root):
    """Both readers give the same keys, labels and audio samples (DALI decodes int16 as float32 in [-1, 1))."""
    manifest = Manifest.load(shard_root)
    entries = manifest.select("all")
    ours, dali = read_webdataset(shard_root, entries), read_dali(shard_root, entries)
    assert set(ours) == set(dali) == {k for e in entries for k in e.keys}
    for key, (label, audio) in ours.items():
        assert dali[key][0] == label == EMOTIONS.index(EMOTIONS[int(key.split("-")[2]) - 1])
        np.testing.assert_allclose(dali[key][1], audio, atol=1.0 / 32768)


def test_pcm16_payload_decodes_to_the_samples_written():
    """decode_pcm16 / PCM16_SCALE equals soundfile's float32 decode of the same payload; stereo is refused."""
    wave = np.sin(np.linspace(0, 100, 16000, dtype=np.float32)) * 0.5
    payload = encode_wav(wave, 16000)
    samples = decode_pcm16(payload)
    assert samples.dtype == np.int16 and samples.shape == (16000,)
    np.testing.assert_array_equal(samples / np.float32(PCM16_SCALE), read_mono(payload)[0])
    stereo = io.BytesIO()
    sf.write(stereo, np.stack([wave, wave], axis=1), 16000, subtype="PCM_16", format="WAV")
    with pytest.raises(ValueError, match="mono, got 2 channels"):
        decode_pcm16(stereo.getvalue())


def test_shards_are_reproducible_ustar_tars(tmp_path):
    """The same samples give byte-identical tars (same sha256), without a PAX header per member."""
    wave = np.zeros(1600, dtype=np.float32)
    samples = [make_sample(f"03-01-0{e}-01-01-01-05", wave, 16000, {"emotion": EMOTIONS[e - 1]}) for e in (1, 2)]
    first = write_shard(tmp_path / "a.tar", samples)
    assert write_shard(tmp_path / "b.tar", samples) == first
    with tarfile.open(tmp_path / "a.tar") as tar:
        assert len(tar.getmembers()) == 6 and all(not m.pax_headers for m in tar.getmembers())


def test_manifest_selection_and_classes(shard_root):
    """normal = 8 classes, strong = 7 (no neutral), all = both; actor selection keeps only those actors."""
    manifest = Manifest.load(shard_root)
    assert manifest.class_names("normal") == list(EMOTIONS)
    assert manifest.class_names("strong") == list(EMOTIONS[1:])
    assert len(manifest.select("all")) == 4 and {s.intensity for s in manifest.select("strong")} == {"strong"}
    assert [s.actor for s in manifest.select("normal", actors=[4])] == [4]
    assert sum(s.samples for s in manifest.select("normal")) == 64
    with pytest.raises(ValueError, match="intensity must be one of"):
        manifest.select("loud")


def test_entry_restricted_to_emotions(shard_root):
    """ShardEntry.only keeps the keys, count and emotion counts of the given emotions; a foreign key is an error."""
    entry = Manifest.load(shard_root).select("normal")[0]
    seven = entry.only(EMOTIONS[1:])
    assert seven.samples == len(seven.keys) == entry.samples - entry.emotions["neutral"]
    assert "neutral" not in seven.emotions and all(emotion_of_key(k) != "neutral" for k in seven.keys)
    assert seven.path == entry.path and entry.only(EMOTIONS).keys == entry.keys
    with pytest.raises(ValueError, match="not a RAVDESS stem"):
        emotion_of_key("clip-7")
