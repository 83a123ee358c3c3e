import librosa
import numpy as np
import pytest
import torch

from tagstack.config import FrontEndConfig
from tagstack.errors import ParameterError
from synth import clip_mels
from tagstack.audio.frontend import ClipMel, LogMel, fit_clip, mel_filterbank

SR = 22050


def music_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Harmonic notes with attacks and decays over a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    y = 0.005 * rng.standard_normal(t.size)
    for start in np.arange(0, seconds, 0.25):
        f0 = 110 * 2 ** (rng.integers(0, 36) / 12)
        env = np.where(t >= start, np.exp(-(t - start) * 4), 0)
        for h in range(1, 6):
            y += env * np.sin(2 * np.pi * f0 * h * t) / h * 0.1
    return y.astype(np.float32)


def test_filterbank_matches_librosa():
    ours = mel_filterbank(sample_rate=SR, n_fft=1024, n_mels=128)
    ref = librosa.filters.mel(sr=SR, n_fft=1024, n_mels=128)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-7)


def test_htk_filterbank_matches_librosa_and_decibels_with_reflected_edges_match_librosas_power_to_db():
    """torchaudio's MelSpectrogram(mel_scale="htk", norm=None) then AmplitudeToDB, as librosa writes it."""
    np.testing.assert_allclose(
        mel_filterbank(sample_rate=16000, n_fft=512, n_mels=96, f_max=8000.0, scale="htk"),
        librosa.filters.mel(sr=16000, n_fft=512, n_mels=96, fmax=8000.0, htk=True, norm=None),
        rtol=1e-4,
        atol=1e-6,
    )
    y = music_like(3.0)
    fe = FrontEndConfig(sample_rate=SR, n_fft=1024, hop_length=512, power=2.0, mel_scale="htk", decibels=True, pad_mode="reflect")
    mel = librosa.feature.melspectrogram(
        y=y, sr=SR, n_fft=1024, hop_length=512, pad_mode="reflect", power=2.0, n_mels=128, htk=True, norm=None
    )
    ref = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)
    ours = LogMel(fe)(torch.from_numpy(y)).numpy()
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=2e-3)  # dB
    zeros = LogMel(fe)(torch.zeros(SR)).numpy()
    assert np.all(zeros == -100.0)  # the floor, 10 log10(1e-10), never -inf


def test_logmel_matches_librosa_within_1e4_relative():
    y = music_like(6.0)
    ref = np.log1p(
        10
        * librosa.feature.melspectrogram(
            y=y, sr=SR, n_fft=1024, hop_length=512, window="hann", center=True, pad_mode="constant", power=1.0, n_mels=128
        )
    )
    ours = LogMel()(torch.from_numpy(y)).numpy()
    assert ours.shape == ref.shape
    big = ref > 1e-3  # relative error is meaningless on exact zeros
    rel = np.abs(ours - ref)[big] / ref[big]
    assert rel.max() < 1e-4
    assert np.abs(ours - ref).max() < 1e-5


@pytest.mark.slow
def test_a_291_second_clip_gives_1250_frames():
    y = music_like(29.1)
    assert y.size == 641655
    mels = clip_mels([y])
    assert mels.shape == (1, 1250, 128)
    # frame t is librosa's centred frame t
    ref = np.log1p(10 * librosa.feature.melspectrogram(y=y, sr=SR, n_fft=1024, hop_length=512, power=1.0, pad_mode="constant"))
    np.testing.assert_allclose(mels[0], ref[:, :1250].T, rtol=1e-4, atol=1e-5)


def test_short_audio_is_zero_padded_and_long_audio_cut():
    cfg = FrontEndConfig(clip_seconds=2.0, n_frames=80)
    y = music_like(1.0)
    padded = fit_clip(y, cfg.clip_samples)
    assert padded.size == cfg.clip_samples and np.all(padded[y.size :] == 0)
    a = clip_mels([y], config=cfg)
    b = clip_mels([np.concatenate([y, np.zeros(cfg.clip_samples * 2, np.float32)])], config=cfg)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_batches_agree_with_single_items():
    ys = np.stack([music_like(3.0, seed=s) for s in range(3)])
    cfg = FrontEndConfig(clip_seconds=3.0, n_frames=120)
    module = ClipMel(cfg)
    batch = module(torch.from_numpy(ys)).numpy()
    for i in range(3):
        np.testing.assert_allclose(batch[i], module(torch.from_numpy(ys[i])).numpy(), rtol=1e-5, atol=1e-6)


def test_bad_frontend_parameters_are_named():
    with pytest.raises(ParameterError, match="hop_length"):
        FrontEndConfig(hop_length=2048)
    with pytest.raises(ParameterError, match="n_frames"):
        FrontEndConfig(clip_seconds=1.0)
    with pytest.raises(ParameterError, match="mel_scale"):
        FrontEndConfig(mel_scale="mel")
    with pytest.raises(ParameterError, match="pad_mode"):
        FrontEndConfig(pad_mode="edge")
    with pytest.raises(ParameterError, match="decibels"):
        FrontEndConfig(decibels=True, log10=True)
    with pytest.raises(ParameterError, match="decibels"):
        FrontEndConfig(decibels=True)  # of a magnitude spectrum
    with pytest.raises(ParameterError, match="reflect"):
        FrontEndConfig(pad_mode="reflect", clip_seconds=0.01, n_frames=1)
    reflect = FrontEndConfig(pad_mode="reflect", power=2.0, decibels=True)
    with pytest.raises(ParameterError, match="reflect padding needs more than n_fft/2 = 512 samples, got 300"):
        LogMel(reflect)(torch.zeros(300))
