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
`train_syncnet` trains on a prepared directory.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lipstep.config import check, to_dict
from lipstep.errors import DataError, LipstepError
from lipstep.fsutil import write_json_atomic
from lipstep.nets.syncnet import LipSyncConfig, LipSyncNet, SyncNetS, save_lipsync

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
    from lipstep.data.features import log_mel
    from lipstep.data.prepare import mel_params

    wav = np.array(wav, np.float32)  # a writable copy: shards hold audio as a read-only memmap
    return log_mel(wav, sample_rate, cfg.audio_dim, **mel_params(sample_rate))


def _to_model_frames(windows: np.ndarray, size: int) -> torch.Tensor:
    """uint8 RGB [B, T, H, W, 3] -> float [B, T, 3, size, size] in [-1, 1]."""
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
        return model.forward_lip(_to_model_frames(windows, size).to(device))

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


# --------------------------------------------------------------------------------------- training


@dataclass
class SyncTrainConfig:
    net: LipSyncConfig = field(default_factory=LipSyncConfig)  # architecture; image_size comes from the data
    steps: int = 3000               # optimizer steps
    batch: int = 64                 # in-sync windows per step; each also brings one shifted negative
    lr: float = 1e-3                # AdamW learning rate (linear warm-up, cosine decay to lr / 10)
    warmup_steps: int = 100         # linear warm-up length
    weight_decay: float = 1e-4      # AdamW weight decay
    grad_clip: float = 1.0          # max gradient norm; 0 disables
    min_shift: int = 1              # negatives: the same clip's audio shifted by min_shift..max_shift
    max_shift: int = 15             #   frames either way (any other window if the clip is too short)
    offset_range: int = 3           # K of the offset term: pick the in-sync audio among shifts -K..K; 0 disables
    offset_weight: float = 1.0      # weight of the offset term (softmax cross-entropy) next to the BCE
    eval_pairs: int = 512           # held-out in-sync windows scored (and as many shifted ones)
    eval_clips: int = 16            # held-out clips scored with the full protocol (sync_c / offset)
    seed: int = 0                   # initial weights, window draws, negative shifts

    def validate(self) -> None:
        check(self.steps >= 1 and self.batch >= 1, f"steps and batch must be >= 1, got {self.steps}, {self.batch}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.warmup_steps >= 0 and self.weight_decay >= 0 and self.grad_clip >= 0,
              "warmup_steps, weight_decay and grad_clip must be >= 0")
        check(1 <= self.min_shift <= self.max_shift,
              f"need 1 <= min_shift <= max_shift, got {self.min_shift}, {self.max_shift}")
        check(self.offset_range >= 0 and self.offset_weight >= 0, "offset_range and offset_weight must be >= 0")
        check(self.eval_pairs >= 1 and self.eval_clips >= 0, "eval_pairs must be >= 1 and eval_clips >= 0")


@dataclass
class SyncTrainResult:
    out: Path                       # directory with model.safetensors, config.json, train.json
    losses: list[float]             # training loss per step (BCE + weighted offset term)
    accuracy: float                 # held-out: in-sync logit > 0 and shifted logit <= 0, over both kinds
    rank_accuracy: float            # held-out: in-sync cosine > the paired shifted window's cosine
    eval_split: str                 # split the accuracy was measured on ("val", else "test", else "train")
    eval_pairs: int                 # in-sync windows scored (as many shifted ones)
    protocol: dict                  # mean sync_c / sync_d and |offset| <= 1 rate on held-out clips
    parameters: int
    seconds: float


class _Clips:
    """Frames (memory-mapped) and audio features (in memory) of one split's clips, for window sampling."""

    def __init__(self, root: Path, rows: list[dict], cfg: LipSyncConfig):
        from lipstep.data.dataset import open_shard

        self.frames, self.feats, self.wavs, self.last = [], [], [], []
        t, spf = cfg.frames, cfg.steps_per_frame
        for row in rows:
            path = root / row["shard"]
            data = open_shard(path, ("frames", "audio"))
            if "frames" not in data or "audio" not in data:
                raise DataError(f"shard {path} lacks frames or audio")
            feats = lipsync_features(np.asarray(data["audio"]), cfg)
            last = min(len(data["frames"]) - t, (len(feats) - t * spf) // spf)  # last usable window start
            if last < 1:  # needs at least two windows: one in sync, one shifted
                continue
            self.frames.append(data["frames"])
            self.wavs.append(data["audio"])
            self.feats.append(feats)
            self.last.append(last)
        self.cfg = cfg
        self.size = int(self.frames[0].shape[1]) if self.frames else 0

    def __len__(self) -> int:
        return len(self.frames)

    def negative(self, c: int, v: int, lo: int, hi: int, rng: np.random.Generator) -> int:
        """A start u != v of clip c with lo <= |u - v| <= hi when possible, else any u != v."""
        u = np.arange(max(0, v - hi), min(self.last[c], v + hi) + 1)
        u = u[np.abs(u - v) >= lo]
        if len(u) == 0:
            u = np.delete(np.arange(self.last[c] + 1), v)
        return int(rng.choice(u))

    def batch(self, picks: list[tuple[int, int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(clip, start, negative start) triples -> frames [B, T, 3, S, S], in-sync and shifted features."""
        t, spf = self.cfg.frames, self.cfg.steps_per_frame
        lip = np.stack([np.asarray(self.frames[c][v:v + t]) for c, v, _ in picks])           # [B, T, S, S, 3]
        pos = np.stack([self.feats[c][spf * v:spf * (v + t)] for c, v, _ in picks])           # [B, T*spf, D]
        neg = np.stack([self.feats[c][spf * u:spf * (u + t)] for c, _, u in picks])
        return _to_model_frames(lip, self.cfg.image_size), torch.from_numpy(pos), torch.from_numpy(neg)

    def shifted(self, picks: list[tuple[int, int, int]], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio windows at starts v - k .. v + k of each pick: [B, 2k + 1, T*spf, D], and which exist [B, 2k + 1]."""
        t, spf = self.cfg.frames, self.cfg.steps_per_frame
        out = np.zeros((len(picks), 2 * k + 1, t * spf, self.feats[0].shape[1]), np.float32)
        valid = np.zeros((len(picks), 2 * k + 1), bool)
        for b, (c, v, _) in enumerate(picks):
            for j, u in enumerate(range(v - k, v + k + 1)):
                if 0 <= u <= self.last[c]:
                    out[b, j], valid[b, j] = self.feats[c][spf * u:spf * (u + t)], True
        return torch.from_numpy(out), torch.from_numpy(valid)


def _lr_factor(step: int, cfg: SyncTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _train_picks(clips: _Clips, cfg: SyncTrainConfig, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """One batch of (clip, start, negative start): clips weighted by their number of windows."""
    weights = np.array(clips.last, np.float64) + 1
    chosen = rng.choice(len(clips), size=cfg.batch, p=weights / weights.sum())
    picks = []
    for c in chosen:
        v = int(rng.integers(clips.last[c] + 1))
        picks.append((int(c), v, clips.negative(int(c), v, cfg.min_shift, cfg.max_shift, rng)))
    return picks


def _offset_loss(model: LipSyncNet, e_lip: torch.Tensor, cand: torch.Tensor, valid: torch.Tensor,
                 device) -> torch.Tensor:
    """Cross-entropy of picking the in-sync window (the middle one) among shifted audio windows."""
    b, n = valid.shape
    e_cand = model.forward_aud(cand.to(device).flatten(0, 1)).unflatten(0, (b, n))   # [B, 2K+1, E]
    sims = model.logit_scale.exp() * (e_lip[:, None] * e_cand).sum(-1)               # [B, 2K+1]
    sims = sims.masked_fill(~valid.to(device), float("-inf"))
    return F.cross_entropy(sims, torch.full((b,), n // 2, dtype=torch.long, device=device))


def _eval_picks(clips: _Clips, cfg: SyncTrainConfig) -> list[tuple[int, int, int]]:
    """Fixed held-out pairs: evenly spaced windows of every clip, negatives from a seeded generator."""
    every = [(c, v) for c in range(len(clips)) for v in range(clips.last[c] + 1)]
    keep = np.unique(np.linspace(0, len(every) - 1, min(len(every), cfg.eval_pairs)).round().astype(np.int64))
    rng = np.random.default_rng((cfg.seed, 1))
    return [(c, v, clips.negative(c, v, cfg.min_shift, cfg.max_shift, rng)) for c, v in (every[i] for i in keep)]


@torch.no_grad()
def _pair_accuracy(model: LipSyncNet, clips: _Clips, picks, device) -> tuple[float, float]:
    """(threshold accuracy over in-sync + shifted pairs, rate of in-sync cosine > shifted cosine)."""
    hits, ranked = 0, 0
    for first in range(0, len(picks), 64):
        lip, pos, neg = (x.to(device) for x in clips.batch(picks[first:first + 64]))
        e_lip = model.forward_lip(lip)
        e_pos, e_neg = model.forward_aud(pos), model.forward_aud(neg)
        hits += int((model.logits(e_lip, e_pos) > 0).sum()) + int((model.logits(e_lip, e_neg) <= 0).sum())
        ranked += int(((e_lip * e_pos).sum(-1) > (e_lip * e_neg).sum(-1)).sum())
    return hits / (2 * len(picks)), ranked / len(picks)


def _protocol_summary(model: LipSyncNet, clips: _Clips, n: int, device) -> dict:
    """Mean Sync-C / Sync-D and the rate of |offset| <= 1 over up to n held-out ground-truth clips."""
    scores = []
    for c in range(min(n, len(clips))):
        try:
            scores.append(score_lipsync(model, np.asarray(clips.frames[c]), np.asarray(clips.wavs[c]), device=device))
        except DataError:  # shorter than the protocol's 6 frames
            continue
    if not scores:
        return {"clips": 0}
    return {"clips": len(scores), "sync_c": round(float(np.mean([s.sync_c for s in scores])), 4),
            "sync_d": round(float(np.mean([s.sync_d for s in scores])), 4),
            "offset_within_1": round(float(np.mean([abs(s.offset) <= 1 for s in scores])), 4)}


def _split_clips(root: Path, rows: list[dict], split: str, cfg: LipSyncConfig) -> _Clips | None:
    chosen = [r for r in rows if r.get("split") == split and int(r.get("frames", 0)) > 0]
    clips = _Clips(root, chosen, cfg) if chosen else None
    return clips if clips is not None and len(clips) else None


def train_syncnet(prepared_dir: str | os.PathLike, out_dir: str | os.PathLike,
                  cfg: SyncTrainConfig | None = None, *, progress: bool = True,
                  device: str | torch.device | None = None) -> SyncTrainResult:
    """Train a `LipSyncNet` on the train clips of a prepared directory and save it to `out_dir`.

    Each step draws ``cfg.batch`` in-sync windows (5 frames + their audio steps) and, for each, the
    same frames with audio from a shifted window of the same clip (``min_shift..max_shift`` frames
    either way); the loss is binary cross-entropy on the logits ``exp(scale) * cos + bias`` (1 = in
    sync, 0 = shifted) plus ``offset_weight`` x a softmax cross-entropy that must pick the in-sync
    audio among the same clip's windows shifted by ``-offset_range .. offset_range`` frames.

    Args:
        prepared_dir: output of ``lipstep prepare`` (manifest.jsonl + shards with ``frames`` and ``audio``).
        out_dir: where ``model.safetensors``, ``config.json`` and ``train.json`` are written.
        cfg: training settings; ``cfg.net.image_size`` is set from the data.
        progress: show a tqdm bar with the loss.
        device: where to train; None = CUDA when available, else CPU.

    Returns:
        A `SyncTrainResult`; ``train.json`` holds the same summary without the per-step losses. The
        accuracy is measured on the val split (else test; else, marked as such, train).
    """
    import dataclasses

    from tqdm.auto import tqdm

    from lipstep.data.dataset import read_manifest

    cfg = cfg or SyncTrainConfig()
    cfg.validate()
    started = time.perf_counter()
    root, out = Path(prepared_dir), Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LipstepError(f"{out} exists and is not a directory")
    rows = read_manifest(root)
    train = _split_clips(root, rows, "train", cfg.net)
    if train is None:
        raise DataError(f"{root / 'manifest.jsonl'} has no train clip long enough for two "
                        f"{cfg.net.frames}-frame windows")
    net_cfg = dataclasses.replace(cfg.net, image_size=train.size)
    net_cfg.validate()
    train.cfg = net_cfg
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LipSyncNet(net_cfg)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device).train()
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    labels = torch.cat([torch.ones(cfg.batch), torch.zeros(cfg.batch)]).to(device)

    # Train: BCE on in-sync (label 1) and shifted (label 0) pairs sharing the same frames, plus the
    # offset term: softmax over the audio shifted by -K..K frames must pick shift 0 (what the
    # protocol's offset search asks of the embeddings; BCE alone sits at ln 2 for a long time).
    losses = []
    bar = tqdm(range(cfg.steps), desc="train syncnet", disable=not progress, dynamic_ncols=True)
    for _ in bar:
        picks = _train_picks(train, cfg, rng)
        lip, pos, neg = (x.to(device) for x in train.batch(picks))
        e_lip = model.forward_lip(lip)
        e_aud = model.forward_aud(torch.cat([pos, neg]))                        # [2B, E]
        loss = F.binary_cross_entropy_with_logits(model.logits(e_lip.repeat(2, 1), e_aud), labels)
        if cfg.offset_range > 0 and cfg.offset_weight > 0:
            loss = loss + cfg.offset_weight * _offset_loss(model, e_lip, *train.shifted(picks, cfg.offset_range),
                                                           device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        losses.append(loss.detach().item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    bar.close()
    model.eval().requires_grad_(False)

    # Report: pair accuracy and the full protocol on held-out clips (val, else test, else train).
    split, held = next(((s, c) for s in ("val", "test") if (c := _split_clips(root, rows, s, net_cfg))),
                       ("train", train))
    if split == "train":
        log.warning("sync: %s has no val/test clips; accuracy is measured on the train split", root)
    picks = _eval_picks(held, cfg)
    accuracy, rank_accuracy = _pair_accuracy(model, held, picks, device)
    protocol = _protocol_summary(model, held, cfg.eval_clips, device)
    result = SyncTrainResult(out=out, losses=losses, accuracy=accuracy, rank_accuracy=rank_accuracy,
                             eval_split=split, eval_pairs=len(picks), protocol=protocol,
                             parameters=model.num_parameters(), seconds=time.perf_counter() - started)
    save_lipsync(model, out)
    write_json_atomic(out / "train.json", {
        "accuracy": round(accuracy, 4), "rank_accuracy": round(rank_accuracy, 4), "eval_split": split,
        "eval_pairs": len(picks), "protocol": protocol, "final_loss": losses[-1], "parameters": result.parameters,
        "seconds": round(result.seconds, 2), "prepared_dir": str(root.resolve()),
        "train": to_dict(dataclasses.replace(cfg, net=net_cfg))})
    return result


__all__ = [
    "SyncScores", "SyncTrainConfig", "SyncTrainResult", "lipsync_embedders", "lipsync_features", "mfcc",
    "official_embedders", "score_lipsync", "score_official", "sync_scores", "train_syncnet",
]
