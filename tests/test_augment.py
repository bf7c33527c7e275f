"""Augmentation: identity in eval mode, random in training, noise at the configured SNR, shifts within bounds."""
import pytest
import torch
import torchaudio

from ravdess_dist.augment import AugmentConfig, SpecAugment, SpeedPerturb, WaveAugment, speed_ratio

SR = 1000


def waves(batch: int = 16, n: int = 2000) -> torch.Tensor:
    """Sines of different loudness and pitch, so each clip has its own power."""
    t = torch.arange(n) / SR
    amp = torch.linspace(0.01, 1.0, batch)[:, None]
    return amp * torch.sin(2 * torch.pi * torch.linspace(50, 200, batch)[:, None] * t)


@pytest.mark.parametrize("make, x", [(lambda c: WaveAugment(c, SR), waves()),
                                     (SpecAugment, torch.randn(4, 1, 64, 101))])
def test_identity_in_eval_and_random_in_training(make, x):
    """eval(): output equals input, twice; train(): output differs from the input and between calls."""
    module = make(AugmentConfig(noise_p=1.0)).eval()
    torch.manual_seed(0)
    first, second = module(x), module(x)
    assert torch.equal(first, x) and torch.equal(second, x)
    module.train()
    a, b = module(x), module(x)
    assert not torch.equal(a, x) and not torch.equal(a, b)
    assert a.shape == x.shape


def test_noise_snr_lies_in_range_per_clip():
    """Measured SNR of the added noise, against each clip's own power, is inside the range and spread over it."""
    module = WaveAugment(AugmentConfig(noise_snr_db=(15.0, 30.0), noise_p=1.0, time_shift_s=0.0), SR).train()
    torch.manual_seed(0)
    x = waves(64)
    noise = module(x) - x
    snr = 10 * torch.log10(x.pow(2).mean(1) / noise.pow(2).mean(1))
    assert snr.min() >= 15.0 - 1e-3 and snr.max() <= 30.0 + 1e-3
    assert snr.max() - snr.min() > 7.5


def test_noise_p_share_of_clips_is_noisy():
    """noise_p=0.5 leaves roughly half of the clips clean."""
    module = WaveAugment(AugmentConfig(noise_p=0.5, time_shift_s=0.0), SR).train()
    torch.manual_seed(0)
    x = waves(200)
    clean = (module(x) == x).all(dim=1).float().mean()
    assert 0.35 < clean < 0.65


def test_shift_is_a_zero_filled_move_within_bounds():
    """Without noise, each clip is the input moved by at most time_shift_s, zeros where audio left."""
    module = WaveAugment(AugmentConfig(noise_snr_db=None, time_shift_s=0.02), SR).train()  # 20 samples
    torch.manual_seed(0)
    x = waves(8, 200) + 2.0  # no zeros inside the audio
    out = module(x)
    moved = set()
    for row, clip in zip(out, x):
        fits = [s for s in range(-20, 21) if torch.equal(row, torch.roll(clip, s) * (
            (torch.arange(200) - s >= 0) & (torch.arange(200) - s < 200)))]
        assert len(fits) == 1
        moved.add(fits[0])
    assert len(moved) > 1


def test_spec_masks_differ_between_clips_and_stay_in_width():
    """iid masks: identical clips get different masks; no frequency mask is wider than allowed in total."""
    cfg = AugmentConfig(freq_masks=1, freq_mask_width=8, time_masks=0)
    module = SpecAugment(cfg).train()
    torch.manual_seed(0)
    out = module(torch.ones(16, 1, 64, 50))
    masked_bins = (out[:, 0] == 0).all(dim=-1).sum(dim=-1)
    assert masked_bins.max() <= 8 and masked_bins.sum() > 0
    assert len({tuple(m.tolist()) for m in (out[:, 0, :, 0] == 0)}) > 1


def test_config_accepts_yaml_list_and_refuses_reversed_range():
    """YAML gives lists: they become tuples; (high, low) is an error."""
    assert AugmentConfig(noise_snr_db=[10, 20]).noise_snr_db == (10.0, 20.0)
    with pytest.raises(ValueError, match="noise_snr_db"):
        AugmentConfig(noise_snr_db=(30.0, 15.0))


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_changes_length_and_pitch(factor):
    """A window of length*factor samples played factor times faster: `length` samples, pitch times factor."""
    sr, length, freq = 16000, 16000, 440.0
    n = round(length * factor)
    window = torch.sin(2 * torch.pi * freq * torch.arange(n) / sr)[None]
    speed = SpeedPerturb([0.9, 1.0, 1.1])
    out = speed(window, factor, length)
    assert out.shape == (1, length)
    raw = torchaudio.functional.resample(window, *speed_ratio(factor))
    assert abs(raw.shape[1] - n / factor) <= 1  # the resampled clip itself is factor times shorter
    peak = torch.fft.rfft(out[0, :length - 200]).abs().argmax().item() * sr / (length - 200)
    assert peak == pytest.approx(freq * factor, rel=0.01)
    full = torch.sin(2 * torch.pi * freq * torch.arange(length) / sr)[None]
    assert torch.equal(speed(full, 1.0, length), full)  # factor 1: the window itself


def test_speed_perturbation_keeps_its_kernels_and_equals_the_functional_resample():
    """The resamplers are built once (their sinc kernels are buffers, moved with the module), and give exactly what
    torchaudio.functional.resample gives, cut or zero-padded to the length."""
    speed = SpeedPerturb([0.9, 1.0, 1.1])
    assert sorted(speed.resamplers, key=int) == ["90", "110"]  # factor 1 needs none
    kernels = [b.data_ptr() for b in speed.buffers()]
    assert len(kernels) == 2
    waves = torch.randn(3, 17600)
    for factor in (0.9, 1.1):
        raw = torchaudio.functional.resample(waves, *speed_ratio(factor))
        out = speed(waves, factor, 16000)
        expected = raw[:, :16000] if raw.shape[1] >= 16000 else torch.nn.functional.pad(raw, (0, 16000 - raw.shape[1]))
        assert torch.equal(out, expected)
    assert [b.data_ptr() for b in speed.buffers()] == kernels  # not rebuilt by the calls


def test_speed_and_mixup_settings_are_checked():
    """Speed factors outside [0.5, 2] and a negative mixup alpha are config errors; YAML lists become tuples."""
    assert AugmentConfig(speed=[0.9, 1.0, 1.1]).speed == (0.9, 1.0, 1.1)
    with pytest.raises(ValueError, match="augment.speed"):
        AugmentConfig(speed=[3.0])
    with pytest.raises(ValueError, match="mixup_alpha"):
        AugmentConfig(mixup_alpha=-1)


def test_wave_augment_with_a_generator_replays_and_leaves_the_global_generator_alone():
    """Noise and shift drawn from a seeded generator (the device backend's, possibly in a prefetch thread): the same
    seed gives the same output whatever the global generator's state, and the global generator does not move."""
    module = WaveAugment(AugmentConfig(noise_p=1.0, time_shift_s=0.2), SR).train()
    outs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        outs.append(module(waves(), torch.Generator().manual_seed(7)))
        assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(*outs) and not torch.equal(outs[0], waves())
    assert not torch.equal(outs[0], module(waves(), torch.Generator().manual_seed(8)))
