"""Feature front end: torchaudio log-mel/MFCC against librosa on real speech, float32 under autocast, fixed-length crops."""
import numpy as np
import pytest
import torch

from ravdess_dist.features import (CPU_CHUNK, FeatureConfig, Frontend, Periodicity, crop_or_pad,
                                   span_windows, speech_span)
from shards.audio import read_mono
from shards.librosa_import import librosa
from tests.corpus import SAMPLE

CLIP = SAMPLE / "Actor_01" / "03-01-05-02-01-01-01.flac"  # angry, strong: a wide dynamic range


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """One real 16 kHz RAVDESS clip from the bundled sample."""
    wave, sr = read_mono(CLIP)
    assert sr == 16000
    return wave


def librosa_mel(wave: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """librosa's power mel spectrogram with the settings the front end claims to match."""
    return librosa.feature.melspectrogram(
        y=wave, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
        n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max, htk=False, norm="slaney", center=True, pad_mode="constant")


def test_log_mel_matches_librosa(speech):
    """Power within 1e-4 relative (of the peak) and dB within 1e-3 of librosa, top_db applied per clip."""
    cfg = FeatureConfig(normalize=False)
    frontend = Frontend(cfg)
    wave = torch.from_numpy(speech)[None]
    ref_power = librosa_mel(speech, cfg)
    power = frontend.mel(wave)[0, 0].numpy()
    assert power.shape == ref_power.shape
    np.testing.assert_allclose(power, ref_power, rtol=1e-4, atol=1e-6 * ref_power.max())
    ref_db = librosa.power_to_db(ref_power, ref=1.0, amin=1e-10, top_db=cfg.top_db)
    np.testing.assert_allclose(frontend.log_mel(wave)[0, 0].numpy(), ref_db, atol=1e-3)


def test_top_db_floor_is_per_clip_not_per_batch(speech):
    """A loud clip beside a quiet one does not raise the quiet clip's floor."""
    frontend = Frontend(FeatureConfig(normalize=False))
    quiet = torch.from_numpy(speech)[None] * 1e-3
    alone = frontend.log_mel(quiet)
    beside_loud = frontend.log_mel(torch.cat([quiet * 1e3, quiet]))[1:]
    torch.testing.assert_close(beside_loud, alone)


@pytest.mark.parametrize("kind", ["logmel", "mfcc"])
def test_cpu_batches_are_computed_in_chunks_with_the_same_features(speech, kind):
    """On a CPU the front end computes a batch CPU_CHUNK clips at a time (faster: the intermediates stay in cache);
    every step is per clip, so 19 clips at once give exactly each clip's features computed alone."""
    frontend = Frontend(FeatureConfig(kind=kind, n_mels=128))
    rng = torch.Generator().manual_seed(0)
    waves = torch.from_numpy(speech[:16000]).float()[None, :] * torch.rand(19, 1, generator=rng)
    assert len(waves) > CPU_CHUNK
    together = frontend(waves)
    assert torch.equal(together, torch.cat([frontend(w[None]) for w in waves]))


def test_mfcc_matches_librosa(speech):
    """40 MFCCs from the same dB mel equal librosa.feature.mfcc (DCT-II, ortho)."""
    cfg = FeatureConfig(kind="mfcc", normalize=False)
    ref = librosa.feature.mfcc(S=librosa.power_to_db(librosa_mel(speech, cfg), top_db=cfg.top_db), n_mfcc=cfg.n_mfcc)
    out = Frontend(cfg)(torch.from_numpy(speech)[None])
    assert out.shape == (1, 1, 40, ref.shape[1]) and cfg.num_bins == 40
    np.testing.assert_allclose(out[0, 0].numpy(), ref, atol=2e-3)


def test_normalize_modes(speech):
    """"bands": every band of a clip has zero mean and unit variance over its frames (its spectral tilt is gone);
    "clip": the clip as a whole has, its bands keep their differences, and a clip 20 dB quieter gives the same
    features (gain removed); "none": the dB log-mel itself. true and false are the earlier names of "bands" and
    "none"; anything else is refused, naming the choices."""
    wave = torch.from_numpy(speech)[None]
    db = Frontend(FeatureConfig(normalize="none")).log_mel(wave)
    bands = Frontend(FeatureConfig(normalize="bands"))(wave)[0, 0]
    clip = Frontend(FeatureConfig(normalize="clip"))
    whole = clip(wave)[0, 0]
    torch.testing.assert_close(bands.mean(dim=1), torch.zeros(64), atol=1e-4, rtol=0)
    torch.testing.assert_close(bands.std(dim=1, unbiased=False), torch.ones(64), atol=1e-3, rtol=0)
    assert abs(float(whole.mean())) < 1e-4 and abs(float(whole.std(unbiased=False)) - 1) < 1e-3
    band_means = whole.mean(dim=1)
    assert float(band_means.max() - band_means.min()) > 1.0  # low bands stay louder than high ones
    torch.testing.assert_close(clip(wave * 0.1)[0, 0], whole, atol=1e-3, rtol=0)  # -20 dB: above the top_db floor
    torch.testing.assert_close(Frontend(FeatureConfig(normalize="none"))(wave), db)
    assert FeatureConfig(normalize=True).normalize == "bands" and FeatureConfig(normalize=False).normalize == "none"
    with pytest.raises(ValueError, match=r"features.normalize must be one of \['bands', 'clip', 'none'\]"):
        FeatureConfig(normalize="speaker")


@pytest.mark.parametrize("kind", ["logmel", "mfcc"])
def test_float32_under_autocast_and_fixed_shape(speech, kind):
    """bf16 autocast does not reach the front end: float32, finite, identical to no autocast; T == cfg.num_frames."""
    cfg = FeatureConfig(kind=kind)
    frontend = Frontend(cfg)
    wave = crop_or_pad([torch.from_numpy(speech)] * 2, cfg.num_samples, train=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = frontend(wave.to(torch.bfloat16))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert out.shape == (2, 1, cfg.num_bins, cfg.num_frames) == (2, 1, cfg.num_bins, 301)
    torch.testing.assert_close(out, frontend(wave.to(torch.bfloat16)))


def test_finish_reuses_normalisation_on_precomputed_db(speech):
    """A [B, F, T] dB mel (what DALI gives) goes through `finish` to the same features; each bin is standardised."""
    frontend = Frontend(FeatureConfig())
    wave = torch.from_numpy(speech)[None]
    out = frontend(wave)
    torch.testing.assert_close(frontend.finish(frontend.log_mel(wave).squeeze(1)), out)
    torch.testing.assert_close(out.mean(dim=-1), torch.zeros(1, 1, 64), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(dim=-1, unbiased=False), torch.ones(1, 1, 64), atol=1e-3, rtol=0)


def test_config_sizes_and_validation():
    """num_frames counts centred frames; num_bins follows the kind; a bad kind is refused."""
    assert FeatureConfig().num_frames == 1 + 48000 // 160 and FeatureConfig().num_bins == 64
    assert FeatureConfig(clip_seconds=1.0, hop_length=100).num_frames == 161
    with pytest.raises(ValueError, match="kind"):
        FeatureConfig(kind="spectrogram")


PITCH = FeatureConfig(pitch_bins=32, hop_length=320, clip_seconds=2.0)


def harmonic_tone(f0: float, seconds: float = 1.0, sr: int = 16000) -> torch.Tensor:
    """A voiced-like tone: F0 and its first seven harmonics falling as 1/k, over a little noise."""
    t = torch.arange(round(seconds * sr), dtype=torch.float64) / sr
    wave = sum(torch.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8)) * 0.3
    return (wave + 0.01 * torch.randn(len(t), generator=torch.Generator().manual_seed(0), dtype=torch.float64)).float()


@pytest.mark.parametrize("f0", [100.0, 160.0, 250.0])
def test_pitch_rows_ridge_at_the_f0_of_a_harmonic_tone(f0):
    """Every frame inside the tone has its ridge (>= 0.9) in the row nearest F0 and nothing above 0.5 in the rows
    more than two semitones above it (no periodicity there); rows run from pitch_fmin up."""
    salience = Periodicity(PITCH)(harmonic_tone(f0)[None])[0][:, 3:-3]  # frames that see the tone only
    freqs = np.geomspace(PITCH.pitch_fmin, PITCH.pitch_fmax, PITCH.pitch_bins)
    row = int(np.abs(np.log(freqs / f0)).argmin())
    assert salience[row].min() >= 0.9, salience[row]
    assert salience[freqs > f0 * 2 ** (2 / 12)].max() < 0.5


def test_pitch_rows_follow_pyin_on_real_speech(speech):
    """On the real clip, frames that librosa's pYIN calls voiced and that have a ridge (a row >= 0.6): the highest such
    row is within 1.5 semitones of pYIN's F0 in at least 85 % of them, and at least half of pYIN's voiced frames have
    one (found here: 95 % and 70 %)."""
    salience = Periodicity(PITCH)(torch.from_numpy(speech)[None])[0].numpy()
    f0, voiced, _ = librosa.pyin(speech, fmin=PITCH.pitch_fmin, fmax=PITCH.pitch_fmax, sr=16000, frame_length=1024,
                                 hop_length=PITCH.hop_length)
    freqs = np.geomspace(PITCH.pitch_fmin, PITCH.pitch_fmax, PITCH.pitch_bins)
    frames = [t for t in range(min(len(f0), salience.shape[1])) if voiced[t] and salience[:, t].max() >= 0.6]
    assert len(frames) >= 0.5 * voiced.sum()
    top = np.array([freqs[np.nonzero(salience[:, t] >= 0.6)[0].max()] for t in frames])
    assert np.mean(np.abs(12 * np.log2(top / f0[frames])) <= 1.5) >= 0.85


def test_pitch_rows_ignore_gain_and_stay_zero_in_silence():
    """The rows of a tone at a hundredth of its level are the same; digital silence gives zeros, not NaN."""
    periodicity = Periodicity(PITCH)
    tone = harmonic_tone(160.0)[None]
    torch.testing.assert_close(periodicity(tone * 0.01), periodicity(tone), atol=1e-5, rtol=0)
    assert torch.equal(periodicity(torch.zeros(1, 8000)), torch.zeros(1, PITCH.pitch_bins, 26))


def test_pitch_rows_follow_the_normalised_log_mel(speech):
    """With pitch_bins, the features are the log-mel as without them, then the salience rows, in chunks on a CPU as
    in one pass, sized by num_bins; bad pitch settings are refused."""
    wave = torch.from_numpy(speech[:32000]).repeat(CPU_CHUNK + 1, 1)
    out = Frontend(PITCH)(wave)
    assert PITCH.num_bins == 64 + 32 and out.shape == (CPU_CHUNK + 1, 1, PITCH.num_bins, PITCH.num_frames)
    torch.testing.assert_close(out[:, :, :64], Frontend(FeatureConfig(hop_length=320, clip_seconds=2.0))(wave))
    torch.testing.assert_close(out[:1, 0, 64:], Periodicity(PITCH)(wave[:1]))
    for bad in (dict(pitch_bins=-1), dict(pitch_bins=8, pitch_fmin=300.0, pitch_fmax=200.0),
                dict(pitch_bins=8, pitch_fmax=9000.0)):
        with pytest.raises(ValueError, match="pitch_bins must be >= 0"):
            FeatureConfig(**bad)


def test_pitch_rows_use_a_5_smooth_fft_size():
    """The pitch rows' FFT (frame + longest period) is the next size with no prime factor above 5 (scipy's real
    next_fast_len): 1080 for the defaults, where the next power of two would be 2048."""
    p = Periodicity(FeatureConfig(pitch_bins=8))
    assert p.n_fft >= p.frame + p.longest and p.n_fft == 1080


def clips() -> list[torch.Tensor]:
    """Three clips of 600, 480 and 300 samples."""
    wave = torch.randn(3, 600, generator=torch.Generator().manual_seed(0))
    return [wave[0], wave[1, :480], wave[2, :300]]


def test_crop_eval_is_centred_and_deterministic():
    """Eval: long clips cropped from the centre, short ones zero-padded at the end, same result every call."""
    waves = clips()
    out = crop_or_pad(waves, 400, train=False)
    torch.testing.assert_close(out, crop_or_pad(waves, 400, train=False))
    torch.testing.assert_close(out[0], waves[0][100:500])
    torch.testing.assert_close(out[1], waves[1][40:440])
    torch.testing.assert_close(out[2, :300], waves[2])
    assert (out[2, 300:] == 0).all()


def test_crop_keeps_the_dtype():
    """int16 clips (the shards' PCM16) stay int16: the loader converts to float after cropping."""
    out = crop_or_pad([torch.arange(500, dtype=torch.int16)], 400, train=False)
    assert out.dtype == torch.int16 and out[0, 0] == 50


def window_start(out: torch.Tensor, clip: torch.Tensor) -> int:
    """The offset at which OUT appears inside CLIP (asserts that it does)."""
    starts = [s for s in range(len(clip) - len(out) + 1) if torch.equal(clip[s:s + len(out)], out)]
    assert len(starts) == 1
    return starts[0]


def test_crop_train_is_random_within_the_clip_and_reproducible():
    """Train: each crop is a window of the real audio; offsets change with the generator, repeat with its seed."""
    waves = clips()
    crops = [crop_or_pad(waves, 400, train=True, generator=torch.Generator().manual_seed(s)) for s in range(8)]
    starts = {window_start(c[1], waves[1]) for c in crops}
    assert len(starts) > 1 and all(0 <= s <= 80 for s in starts)
    again = crop_or_pad(waves, 400, train=True, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, crops[0])
    assert all((c[2, 300:] == 0).all() for c in crops)


def tone_burst(sr: int = 16000) -> np.ndarray:
    """0.6 s of near-silence, 1.0 s of a 220 Hz tone, 0.4 s of near-silence (the shape of a RAVDESS clip)."""
    rng = np.random.default_rng(0)
    wave = 1e-4 * rng.standard_normal(2 * sr).astype(np.float32)
    t = np.arange(sr) / sr
    wave[int(0.6 * sr):int(1.6 * sr)] += 0.3 * np.sin(2 * np.pi * 220 * t).astype(np.float32)
    return wave


@pytest.mark.parametrize("top_db", [30.0, 40.0])
def test_speech_span_of_a_tone_burst(top_db):
    """The span of a tone burst starts and ends within a frame of the tone, exactly as librosa.effects.trim finds it."""
    wave = tone_burst()
    start, stop = speech_span(wave, top_db, 512, 160)
    assert abs(start - 0.6 * 16000) <= 512 and abs(stop - 1.6 * 16000) <= 512
    _, (lstart, lstop) = librosa.effects.trim(wave, top_db=top_db, frame_length=512, hop_length=160)
    assert (start, stop) == (lstart, lstop)
    assert speech_span(wave, None) == (0, len(wave)) and speech_span(np.zeros(100, np.float32), 30.0) == (0, 100)


def test_span_windows_cover_the_span_inside_the_clip():
    """K windows spread from the start to the end of a long span; a short span lies inside its one centred window;
    windows never start before the clip or run past the end of a clip that is long enough."""
    lengths = torch.tensor([48000, 48000, 10000])
    spans = torch.tensor([[8000, 40000], [20000, 26000], [0, 10000]])
    starts = span_windows(lengths, spans, 16000, 3)
    assert starts[0].tolist() == [8000, 16000, 24000]  # first window at the span's start, last one ends at its end
    assert all(s <= 20000 and s + 16000 >= 26000 for s in starts[1].tolist())
    assert starts[2].tolist() == [0, 0, 0]  # clip shorter than the window: start 0, padded at the end
    centred = span_windows(lengths, spans, 16000, 1)[:, 0]
    assert centred.tolist() == [16000, 15000, 0]


def test_speech_top_db_must_be_positive():
    """A non-positive threshold is a config error naming the key."""
    with pytest.raises(ValueError, match="speech_top_db"):
        FeatureConfig(speech_top_db=0)
