"""Audio features without learned weights: log-mel spectrogram and per-video-frame mel windows.

This module is the one home of audio/video alignment (design.md §3: audio features are
``[T, K, D]``, a window of K audio frames around each video frame). The conventions:

- ``log_mel`` uses *centred* STFT frames: mel frame ``n`` is centred on sample ``n * hop_length``,
  i.e. on time ``n / mel_rate`` seconds (``mel_rate = sample_rate / hop_length`` = 100 per second
  at the defaults). A waveform of ``L`` samples gives ``1 + L // hop_length`` frames. The signal is
  zero-padded by ``n_fft // 2`` at both ends (``pad_mode='constant'``, not librosa's reflect).
- ``frame_windows`` gives video frame ``t`` (which covers ``[t/fps, (t+1)/fps)``) the K mel frames
  ``[c_t - K//2, c_t - K//2 + K)`` where ``c_t = round((t + 0.5) * mel_rate / fps)`` is the mel
  frame centred on the video frame's centre time. So window position ``K//2`` is the mel frame at
  the centre of video frame t. At 25 fps / 100 mel frames per second / K = 16: window t holds mel
  frames ``4t-6 .. 4t+9``; positions 6..9 (the middle four) are the mel frames whose centres lie
  inside frame t, and position 8 is centred exactly on ``(t + 0.5) / 25`` s.
"""

from __future__ import annotations

import functools

import librosa
import numpy as np
import torch

LOG_FLOOR = 1e-5
"""Mel power below this is clamped before the log; ``log(LOG_FLOOR)`` is also the edge padding."""
MEL_FMIN, MEL_FMAX = 55.0, 7600.0
"""Band edges (Hz) of the mel filters (the upper one is capped at the Nyquist frequency)."""


@functools.lru_cache(maxsize=8)
def mel_basis(sample_rate: int, n_fft: int, n_mels: int, fmin: float = MEL_FMIN, fmax: float = MEL_FMAX) -> np.ndarray:
    """Slaney mel filters ``[n_mels, n_fft // 2 + 1]`` as `log_mel` applies them (fmax capped at sample_rate / 2)."""
    return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=float(fmin),
                               fmax=float(min(fmax, sample_rate / 2)))


def log_mel(wav: np.ndarray, sample_rate: int = 16000, n_mels: int = 80, n_fft: int = 512,
            win_length: int = 400, hop_length: int = 160, fmin: float = MEL_FMIN,
            fmax: float = MEL_FMAX, center: bool = True) -> np.ndarray:
    """Log mel power spectrogram of a mono waveform: float32 ``[1 + len(wav) // hop_length, n_mels]``.

    Power spectrum of a Hann-windowed centred STFT, Slaney mel filters (``librosa.filters.mel``),
    natural log of ``max(mel, 1e-5)``. Equals ``log(clamp(librosa.feature.melspectrogram(...,
    center=True, pad_mode='constant'), 1e-5)).T`` up to float rounding.

    ``center=False`` (``[1 + (len(wav) - n_fft) // hop_length, n_mels]``): frame n covers samples
    ``[n * hop_length, n * hop_length + n_fft)`` of `wav` itself, no padding. Streaming features
    (`lipstep.audio.stream`) cut a span of the signal that starts ``n_fft // 2`` samples before a
    frame's centre, with zeros where the signal has none, and get the centred frames of that span.
    """
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise ValueError(f"log_mel expects a mono waveform [N], got shape {wav.shape}")
    basis = torch.from_numpy(mel_basis(int(sample_rate), n_fft, n_mels, fmin, fmax))
    with torch.no_grad():
        spec = torch.stft(torch.from_numpy(wav), n_fft=n_fft, hop_length=hop_length,
                          win_length=win_length, window=torch.hann_window(win_length),
                          center=center, pad_mode="constant", return_complex=True)
        power = spec.real.square() + spec.imag.square()  # [n_fft // 2 + 1, N]
        mel = basis @ power  # [n_mels, N]
        return torch.log(mel.clamp_min(LOG_FLOOR)).T.contiguous().numpy()


def frame_count(n_samples: int, sample_rate: int = 16000, fps: float = 25.0) -> int:
    """Video frames that `n_samples` of audio drive: the nearest whole number, at least one."""
    return max(1, round(n_samples * fps / sample_rate))


def window_starts(n_frames: int, fps: float = 25.0, mel_rate: float = 100.0, k: int = 16,
                  first: int = 0) -> np.ndarray:
    """First mel frame of each video frame's window: ``round((t + 0.5) * mel_rate / fps) - k // 2``
    for t = first, ..., first + n_frames - 1."""
    centres = np.floor((np.arange(first, first + n_frames) + 0.5) * (mel_rate / fps) + 0.5).astype(np.int64)
    return centres - k // 2


def frame_windows(mel: np.ndarray, n_frames: int, fps: float = 25.0, mel_rate: float = 100.0,
                  k: int = 16) -> np.ndarray:
    """K mel frames around each video frame's centre: float32 ``[n_frames, k, n_mels]``.

    Window t holds mel frames ``window_starts(...)[t] + arange(k)`` (see the module docstring for
    the exact alignment); indices before 0 or past the end of `mel` read ``log(1e-5)``, the value
    of silence.
    """
    mel = np.asarray(mel, dtype=np.float32)
    if mel.ndim != 2:
        raise ValueError(f"frame_windows expects mel [N, n_mels], got shape {mel.shape}")
    if k < 1 or n_frames < 0:
        raise ValueError(f"frame_windows needs k >= 1 and n_frames >= 0, got k={k}, n_frames={n_frames}")
    idx = window_starts(n_frames, fps, mel_rate, k)[:, None] + np.arange(k)[None, :]  # [T, K]
    floor = np.float32(np.log(LOG_FLOOR))
    padded = np.concatenate([mel, np.full((1, mel.shape[1]), floor, np.float32)])  # row -1 = floor
    idx = np.where((idx >= 0) & (idx < len(mel)), idx, len(mel))
    return padded[idx]  # [T, K, n_mels]


__all__ = ["LOG_FLOOR", "MEL_FMAX", "MEL_FMIN", "frame_count", "frame_windows", "log_mel", "mel_basis", "window_starts"]
