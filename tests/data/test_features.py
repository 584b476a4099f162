"""Audio features: log-mel against librosa, and the video-frame / mel-window alignment."""

import numpy as np
import pytest

from lipstep.data.features import LOG_FLOOR, frame_windows, log_mel, window_starts

SR = 16000


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def test_log_mel_shape_is_100_frames_per_second():
    for n in (16000, 16159, 16160, 32000):
        mel = log_mel(np.zeros(n, np.float32))
        assert mel.shape == (1 + n // 160, 80) and mel.dtype == np.float32
    assert np.allclose(log_mel(np.zeros(4000, np.float32)), np.log(LOG_FLOOR))


def test_log_mel_matches_librosa_melspectrogram():
    librosa = pytest.importorskip("librosa")
    wav = _noise(1.3) * np.linspace(0, 1, int(1.3 * SR), dtype=np.float32)
    ref = librosa.feature.melspectrogram(y=wav, sr=SR, n_fft=512, win_length=400, hop_length=160,
                                         n_mels=80, fmin=55.0, fmax=7600.0, center=True,
                                         pad_mode="constant", power=2.0)
    ref = np.log(np.maximum(ref, LOG_FLOOR)).T
    ours = log_mel(wav)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_log_mel_rejects_multichannel():
    with pytest.raises(ValueError):
        log_mel(np.zeros((2, 1600), np.float32))


def test_window_starts_centre_on_video_frames():
    starts = window_starts(5, fps=25.0, mel_rate=100.0, k=16)
    assert list(starts) == [4 * t - 6 for t in range(5)]  # mel 4t+2 (= (t+0.5)/25 s) at position 8


@pytest.mark.parametrize("t", [0, 3, 7, 12])
def test_tone_burst_in_frame_t_sits_in_the_centre_of_window_t(t):
    n_frames, spf = 14, SR // 25
    wav = np.zeros(n_frames * spf, np.float32)
    seg = np.arange(spf) / SR
    wav[t * spf:(t + 1) * spf] = 0.5 * np.sin(2 * np.pi * 1000.0 * seg)  # burst exactly in frame t
    windows = frame_windows(log_mel(wav), n_frames)
    assert windows.shape == (n_frames, 16, 80) and windows.dtype == np.float32
    energy = np.exp(windows[t]).sum(axis=1)  # [K] mel power per window position
    energy = energy - energy.min()
    centroid = float((energy * np.arange(16)).sum() / energy.sum())
    assert abs(centroid - 8.0) < 0.5, centroid  # position 8 = mel frame at the frame's centre
    assert int(np.argmax(energy)) in (7, 8, 9)
    # neighbours see the burst 4 mel frames (one video frame) off-centre
    if t + 1 < n_frames:
        assert int(np.argmax(np.exp(windows[t + 1]).sum(axis=1))) in (3, 4, 5)
    far = [u for u in range(n_frames) if abs(u - t) >= 4]
    assert np.exp(windows[far]).sum(axis=(1, 2)).max() < 1e-2 * np.exp(windows[t]).sum()


def test_frame_windows_pads_with_log_floor_at_edges():
    mel = np.zeros((101, 80), np.float32)  # 1 s of "loud" frames (log value 0)
    win = frame_windows(mel, 25)
    floor = np.float32(np.log(LOG_FLOOR))
    assert np.all(win[0, :6] == floor) and np.all(win[0, 6:] == 0)  # mel -6..-1 are padding
    assert np.all(win[-1, :11] == 0) and np.all(win[-1, 11:] == floor)  # mel 90..100, then past the end
    assert np.all(frame_windows(mel[:10], 25)[10:] == floor)  # audio shorter than video: silence
    assert frame_windows(mel, 0).shape == (0, 16, 80)


def test_frame_windows_other_k_and_rates():
    mel = np.arange(200, dtype=np.float32)[:, None].repeat(4, 1)
    win = frame_windows(mel, 10, fps=25.0, mel_rate=100.0, k=5)
    assert win.shape == (10, 5, 4)
    assert win[3, 5 // 2, 0] == 14  # centre position holds mel frame round(3.5 * 4) = 14
    win = frame_windows(mel, 10, fps=50.0, mel_rate=100.0, k=4)
    assert win[4, 2, 0] == 9  # centre mel frame round(4.5 * 2) = 9
