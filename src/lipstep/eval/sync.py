"""Lip sync: Sync-C / Sync-D / AV offset by the official SyncNet protocol, and training `LipSyncNet`.

The protocol (joonson/syncnet_python ``SyncNetInstance.evaluate``; metrics.md §1.1-1.2), written
once here for any pair of embedders (`sync_scores`):

- input is 25 fps video and 16 kHz audio; audio features come at 100 Hz, 4 steps per video frame;
- ``L = min(#frames, #samples // 640)``; windows ``v = 0 .. L - 6`` (``L - 5`` windows: like the
  reference, the last frame never starts or ends a window); window v is frames ``v .. v + 4`` and
  feature steps ``4v .. 4v + 19``;
- the audio-embedding sequence is zero-padded by ``vshift`` entries at both ends, and visual window
  v is compared with audio windows ``v + j - vshift`` for ``j = 0 .. 2 * vshift`` by Euclidean
  distance (``torch.nn.functional.pairwise_distance``, eps 1e-6, as the reference); shifts that run
  off the clip meet a zero vector;
- ``dists[j]`` = mean over windows; **Sync-D** = ``min(dists)``; **Sync-C** = ``median(dists) -
  min(dists)``; **offset** = ``vshift - argmin(dists)`` frames.

Sign convention (the reference's): with ``j*`` the best index, the best audio window for visual
window v is ``v + j* - vshift = v - offset``. A **positive offset means the matching audio comes
earlier than the picture: the video lags the audio** (e.g. audio advanced by 2 frames against the
video, or video delayed by 2 frames -> offset +2); a negative offset means the audio lags the video.
Sync-D is taken at the best offset, not at 0, so always report the offset too.

`mfcc` reproduces ``python_speech_features.mfcc`` with its defaults in numpy (the official audio
features). `score_official` runs the protocol with the official `SyncNetS` (224 px BGR 0..255 crops,
MFCC of int16 samples); `score_lipsync` with lipstep's own `LipSyncNet`, which
`lipstep.eval.train_syncnet` trains on a prepared directory.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lipstep.data.features import log_mel
from lipstep.data.prepare import mel_params
from lipstep.errors import DataError, LipstepError
from lipstep.nets.syncnet import LipSyncConfig, LipSyncNet, SyncNetS

log = logging.getLogger(__name__)

FPS = 25                # the protocol's video rate
SAMPLE_RATE = 16000     # the protocol's audio rate
STEPS_PER_FRAME = 4     # 100 Hz features / 25 fps
WINDOW = 5              # video frames per window (0.2 s)
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640

EmbedFn = Callable[[np.ndarray], "np.ndarray | torch.Tensor"]

# ------------------------------------------------------------------------------------------- MFCC


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def _mfcc_filterbank(n_filters: int, n_fft: int, sample_rate: int) -> np.ndarray:
    """Triangular mel filters on FFT bins [n_filters, n_fft // 2 + 1], 0 Hz to Nyquist, peak 1.

    Filter edges are FFT bins ``floor((n_fft + 1) * hz / sample_rate)`` of equally spaced mel points
    (the python_speech_features construction, not librosa's Slaney filters).
    """
    mels = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_filters + 2)
    edges = np.floor((n_fft + 1) * _mel_to_hz(mels) / sample_rate)  # [n_filters + 2]
    k = np.arange(n_fft // 2 + 1, dtype=np.float64)[None, :]        # [1, bins]
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # [n_filters, 1] each
    rise = np.where((k >= lo) & (k < mid), (k - lo) / np.maximum(mid - lo, 1e-12), 0.0)
    fall = np.where((k >= mid) & (k < hi), (hi - k) / np.maximum(hi - mid, 1e-12), 0.0)
    return rise + fall


def _dct2_ortho(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix [n, n]: row k is the k-th cosine basis vector."""
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    basis = np.sqrt(2.0 / n) * np.cos(np.pi * k * (2 * i + 1) / (2 * n))
    basis[0] /= np.sqrt(2.0)
    return basis


def mfcc(wav: np.ndarray, sr: int = SAMPLE_RATE, *, int16_scale: bool = True) -> np.ndarray:
    """13 MFCC at 100 Hz as the official protocol computes them: float32 ``[N, 13]`` (rows = 10 ms steps).

    ``python_speech_features.mfcc`` defaults: pre-emphasis 0.97 (first sample kept), 25 ms frames
    every 10 ms with a rectangular window, starting at sample 0 (not centred; the last frame
    zero-padded), ``N = 1 + ceil((len - win) / hop)`` frames (1 if shorter than a window), power
    spectrum ``|rfft_512|^2 / 512``, 26 triangular mel filters 0 Hz .. sr/2, natural log, orthonormal
    DCT-II keeping 13, sinusoidal lifter 22, and coefficient 0 replaced by the log of the frame's
    total power (zeros are replaced by float64 eps before each log).

    Scale: the reference reads the int16 PCM that ffmpeg writes (``pcm_s16le``) without rescaling,
    and c0 depends on the scale. With `int16_scale` (default), floating-point input is taken as
    lipstep's [-1, 1] audio and converted as ffmpeg converts it: multiplied by 32768, rounded to the
    nearest integer (ties to even, as ``lrint``) and clipped to [-32768, 32767]. Integer input (e.g.
    int16 samples) is always used as is.
    """
    x = np.asarray(wav)
    if x.ndim != 1:
        raise ValueError(f"mfcc expects a mono waveform [N], got shape {x.shape}")
    if sr < 1:
        raise ValueError(f"mfcc needs a positive sample rate, got {sr}")
    is_float = np.issubdtype(x.dtype, np.floating)
    x = x.astype(np.float64)
    if is_float and int16_scale:
        x = np.clip(np.rint(x * 32768.0), -32768.0, 32767.0)             # whole int16 values, as pcm_s16le
    win, hop, n_fft = _round_half_up(0.025 * sr), _round_half_up(0.01 * sr), 512
    emphasised = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
    n = 1 if len(emphasised) <= win else 1 + math.ceil((len(emphasised) - win) / hop)
    padded = np.zeros((n - 1) * hop + win)
    padded[:len(emphasised)] = emphasised
    frames = padded[np.arange(n)[:, None] * hop + np.arange(win)[None, :]]  # [N, win]
    power = np.abs(np.fft.rfft(frames, n_fft)) ** 2 / n_fft                # [N, 257]
    tiny = np.finfo(np.float64).eps
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, tiny, energy)
    bands = power @ _mfcc_filterbank(26, n_fft, sr).T                       # [N, 26]
    bands = np.where(bands == 0, tiny, bands)
    cep = np.log(bands) @ _dct2_ortho(26)[:13].T                            # [N, 13]
    cep *= 1.0 + 11.0 * np.sin(np.pi * np.arange(13) / 22.0)                # lifter L = 22: 1 + L/2 sin(pi n / L)
    cep[:, 0] = np.log(energy)
    return cep.astype(np.float32)


# --------------------------------------------------------------------------------------- protocol


@dataclass
class SyncScores:
    """Result of `sync_scores` (see the module docstring for the definitions and the sign convention)."""

    sync_c: float          # confidence: median(dists) - min(dists); higher is better
    sync_d: float          # min over offsets of the mean embedding distance; lower is better
    offset: int            # AV offset in frames, vshift - argmin(dists); > 0: the video lags the audio
    dists: np.ndarray      # [2 * vshift + 1] mean distance per offset index j (audio window v + j - vshift)
    windows: int = 0       # number of 5-frame windows averaged

    @property
    def vshift(self) -> int:
        return (len(self.dists) - 1) // 2

    def to_dict(self) -> dict:
        """JSON-able summary (distance curve included)."""
        return {"sync_c": self.sync_c, "sync_d": self.sync_d, "offset": self.offset, "windows": self.windows,
                "dists": [round(float(d), 6) for d in self.dists]}


def _embed(fn: EmbedFn, batch: np.ndarray) -> torch.Tensor:
    """Call an embedder and return its output as a CPU float32 tensor [B, E]."""
    out = torch.as_tensor(fn(batch)).detach().to("cpu", torch.float32)
    if out.ndim != 2 or out.shape[0] != len(batch):
        raise ValueError(f"an embedder must return [B, E] for a batch of {len(batch)}, got {list(out.shape)}")
    return out


def sync_scores(lip_embed_fn: EmbedFn, aud_embed_fn: EmbedFn, frames: np.ndarray, wav: np.ndarray,
                vshift: int = 15, *, features: Callable[[np.ndarray], np.ndarray] = mfcc,
                batch: int = 20) -> SyncScores:
    """Sync-C, Sync-D and AV offset of one clip by the official protocol (module docstring).

    Args:
        lip_embed_fn: visual windows ``frames[v : v + 5]`` stacked, ``[B, 5, *frame_shape]`` (for
            lipstep frames: uint8 RGB ``[B, 5, H, W, 3]``) -> embeddings ``[B, E]`` (numpy or torch).
        aud_embed_fn: feature windows ``[B, 20, D]`` float32 (time-major: 20 steps of 10 ms) ->
            embeddings ``[B, E]``.
        frames: the clip's frames at 25 fps, indexed along axis 0.
        wav: the clip's mono audio at 16 kHz, starting with frame 0.
        vshift: offsets -vshift..vshift frames are searched (15 in the official scripts).
        features: waveform -> ``[N, D]`` features at 100 Hz; `mfcc` (official) by default.
        batch: windows per embedder call (20 in the reference).

    Returns:
        `SyncScores`. Raises `DataError` when the clip has fewer than 6 usable frames.
    """
    if vshift < 0 or batch < 1:
        raise ValueError(f"sync_scores needs vshift >= 0 and batch >= 1, got {vshift}, {batch}")
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise ValueError(f"sync_scores expects mono audio [N], got shape {wav.shape}")
    n_frames = len(frames)
    length = min(n_frames, len(wav) // SAMPLES_PER_FRAME)
    n_windows = length - WINDOW
    if n_windows < 1:
        raise DataError(f"clip too short for the sync protocol: {n_frames} frames and {len(wav)} audio samples "
                        f"give {length} usable frames, at least {WINDOW + 1} are needed")
    if abs(n_frames / FPS - len(wav) / SAMPLE_RATE) > 1.0 / FPS:
        log.warning("sync: video is %.3f s but audio is %.3f s; scoring the first %d frames",
                    n_frames / FPS, len(wav) / SAMPLE_RATE, length)
    feats = np.asarray(features(wav), dtype=np.float32)
    steps = WINDOW * STEPS_PER_FRAME
    if feats.ndim != 2 or len(feats) < STEPS_PER_FRAME * (n_windows - 1) + steps:
        raise ValueError(f"features gave {list(feats.shape)} for {len(wav)} samples; need [>= "
                         f"{STEPS_PER_FRAME * (n_windows - 1) + steps}, D] at 100 Hz")
    lip, aud = [], []
    for first in range(0, n_windows, batch):
        starts = range(first, min(n_windows, first + batch))
        lip.append(_embed(lip_embed_fn, np.stack([np.asarray(frames[v:v + WINDOW]) for v in starts])))
        aud.append(_embed(aud_embed_fn, np.stack([feats[STEPS_PER_FRAME * v:STEPS_PER_FRAME * v + steps]
                                                  for v in starts])))
    return _score_embeddings(torch.cat(lip), torch.cat(aud), vshift)


def _score_embeddings(lip: torch.Tensor, aud: torch.Tensor, vshift: int) -> SyncScores:
    """The offset sweep on per-window embeddings lip [N, E] and aud [N, E]."""
    n, span = len(lip), 2 * vshift + 1
    padded = F.pad(aud, (0, 0, vshift, vshift))                               # [N + 2 vshift, E], zeros at the ends
    per_window = []
    for first in range(0, n, 256):                                            # bounded memory on long clips
        v = torch.arange(first, min(n, first + 256))
        idx = v[:, None] + torch.arange(span)[None, :]                        # [n_v, span]: padded row v + j
        per_window.append(F.pairwise_distance(lip[v, None, :].expand(-1, span, -1), padded[idx], eps=1e-6))
    dists = torch.cat(per_window).mean(0)                                     # [N, span] -> [span]
    best = int(torch.argmin(dists))
    sync_d = float(dists[best])
    sync_c = float(torch.median(dists)) - sync_d
    return SyncScores(sync_c=sync_c, sync_d=sync_d, offset=vshift - best, dists=dists.numpy(), windows=n)


# ------------------------------------------------------------------------------ official SyncNet S


def _resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 [T, H, W, 3] -> [T, size, size, 3] with OpenCV's default bilinear (the official crops' filter)."""
    import cv2

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [T, H, W, 3], got shape {frames.shape}")
    if frames.shape[1:3] == (size, size):
        return frames
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_LINEAR) for f in frames])


def official_embedders(model: SyncNetS, device: str | torch.device | None = None) -> tuple[EmbedFn, EmbedFn]:
    """(lip_embed_fn, aud_embed_fn) for `sync_scores` with the official S.

    Lip windows: uint8 RGB [B, 5, H, W, 3] -> resized to 224 if needed, flipped to BGR, raw 0..255
    floats [B, 3, 5, 224, 224] (what the reference reads from OpenCV). Audio windows: MFCC [B, 20, 13]
    -> [B, 1, 13, 20].
    """
    model = model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device

    @torch.no_grad()
    def lip_fn(windows: np.ndarray) -> torch.Tensor:
        b, t = windows.shape[:2]
        frames = _resize_frames(windows.reshape(b * t, *windows.shape[2:]), 224)[..., ::-1]  # RGB -> BGR
        x = torch.from_numpy(np.ascontiguousarray(frames)).float().reshape(b, t, 224, 224, 3)
        return model.forward_lip(x.permute(0, 4, 1, 2, 3).to(device))  # [B, 3, 5, 224, 224]

    @torch.no_grad()
    def aud_fn(windows: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(windows)).float().transpose(1, 2)[:, None]  # [B, 1, 13, 20]
        return model.forward_aud(x.to(device))

    return lip_fn, aud_fn


def score_official(model: SyncNetS, frames: np.ndarray, wav: np.ndarray, vshift: int = 15, *,
                   batch: int = 20, device: str | torch.device | None = None) -> SyncScores:
    """`sync_scores` with the official S on uint8 RGB frames [T, H, W, 3] (25 fps) and 16 kHz audio.

    Frames are resized to 224 x 224 once (bilinear). The reference scores face tracks cropped as in
    metrics.md §1.3 (a square 2.8 face-half-sizes wide, shifted down); other crop geometries, such as
    lipstep's centred crops, are valid for comparisons between models but not with published numbers.
    Float audio in [-1, 1] is converted to int16 values for the MFCC as ffmpeg's pcm_s16le does (see `mfcc`).
    """
    lip_fn, aud_fn = official_embedders(model, device)
    return sync_scores(lip_fn, aud_fn, _resize_frames(frames, 224), wav, vshift, features=mfcc, batch=batch)


# ------------------------------------------------------------------------------ lipstep LipSyncNet


def lipsync_features(wav: np.ndarray, cfg: LipSyncConfig, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The 100 Hz audio features a `LipSyncNet` reads: float32 [N, cfg.audio_dim].

    "mel": `lipstep.data.features.log_mel` with prepare's STFT settings (centred 25 ms Hann windows,
    step 10 ms: step n is centred on n / 100 s, so steps 4v .. 4v + 19 cover frames v .. v + 4);
    "mfcc": `mfcc` (the official features). Training and scoring both use this one function.
    """
    if cfg.audio == "mfcc":
        return mfcc(wav, sample_rate)
    wav = np.array(wav, np.float32)  # a writable copy: shards hold audio as a read-only memmap
    return log_mel(wav, sample_rate, cfg.audio_dim, **mel_params(sample_rate))


def lipsync_frames(windows: np.ndarray, size: int) -> torch.Tensor:
    """uint8 RGB windows [B, T, H, W, 3] -> a `LipSyncNet`'s input, float [B, T, 3, size, size] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(windows)).float().div_(127.5).sub_(1.0)
    x = x.permute(0, 1, 4, 2, 3)                                             # [B, T, 3, H, W]
    if x.shape[-2:] != (size, size):
        b, t = x.shape[:2]
        x = F.interpolate(x.flatten(0, 1), size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False).unflatten(0, (b, t))
    return x


def lipsync_embedders(model: LipSyncNet, device: str | torch.device | None = None) -> tuple[EmbedFn, EmbedFn]:
    """(lip_embed_fn, aud_embed_fn) for `sync_scores` with a `LipSyncNet` (frames resized to its size)."""
    model = model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    size = model.cfg.image_size

    @torch.no_grad()
    def lip_fn(windows: np.ndarray) -> torch.Tensor:
        return model.forward_lip(lipsync_frames(windows, size).to(device))

    @torch.no_grad()
    def aud_fn(windows: np.ndarray) -> torch.Tensor:
        return model.forward_aud(torch.from_numpy(np.ascontiguousarray(windows)).float().to(device))

    return lip_fn, aud_fn


def score_lipsync(model: LipSyncNet, frames: np.ndarray, wav: np.ndarray, vshift: int = 15, *,
                  batch: int = 64, device: str | torch.device | None = None) -> SyncScores:
    """`sync_scores` with a `LipSyncNet` on uint8 RGB face crops [T, S, S, 3] (25 fps) and 16 kHz audio.

    Distances are between unit-norm embeddings (0..2), so numbers are on a different scale from the
    official S and only comparable between runs of the same checkpoint.
    """
    if model.cfg.frames != WINDOW or model.cfg.steps_per_frame != STEPS_PER_FRAME:
        raise LipstepError(f"the sync protocol uses {WINDOW}-frame windows of {STEPS_PER_FRAME} steps per frame; "
                           f"this LipSyncNet has frames={model.cfg.frames}, "
                           f"steps_per_frame={model.cfg.steps_per_frame}")
    lip_fn, aud_fn = lipsync_embedders(model, device)
    return sync_scores(lip_fn, aud_fn, frames, wav, vshift, batch=batch,
                       features=lambda w: lipsync_features(w, model.cfg))


__all__ = [
    "SyncScores", "lipsync_embedders", "lipsync_features", "lipsync_frames", "mfcc", "official_embedders",
    "score_lipsync", "score_official", "sync_scores",
]
