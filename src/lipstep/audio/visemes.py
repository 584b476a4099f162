"""Audio -> visemes: the small classifier that labels every video frame of speech with one of the 15 viseme
classes (`lipstep.data.visemes.VISEMES`), and the one-hot viseme windows a viseme-conditioned denoiser reads
(TempoSyncDiff's "viseme tokens", algorithms.md §5.3).

`VisemeNet` reads the log-mel windows of `MelEncoder` / ``lipstep prepare`` (window t = K mel frames centred
on video frame t, `lipstep.data.features`). It embeds each window on its own (two convs over its K mel
frames, mean- and max-pooled) and runs ``context`` valid temporal convs (kernel 3) over the frames, so the
logits of frame t read the windows of frames t - context .. t + context and a sequence of N + 2·context
windows gives N frames of logits.

The frame conventions, shared by training, `VisemeAudioEncoder.encode` and the streaming
`VisemeFeatureStream` (so streamed and whole-file tokens are the same):

- frames before the audio starts read a window of silence (every value ``log(LOG_FLOOR)``); frames at or
  past its end read the audio's own windows (whose mel frames past the end are silence). A frame's label
  therefore depends on the audio and the frame's index only, never on how many frames are asked for;
- `frame_labels` (``smooth`` > 0) averages the class probabilities over 2·smooth + 1 frames before the
  argmax, which needs ``context + smooth`` windows on each side;
- the one-hot windows are `viseme_windows` of the labels: window t holds labels t - K//2 .. t + K//2, the
  labels before frame 0 repeat frame 0's (as `VisemeEncoder` repeats its first label). A token stream
  therefore looks K//2 + context + smooth frames past each frame.

A classifier directory (``lipstep train visemes``) is a `lipstep.netdir` directory: ``config.json``
(`VisemeNetConfig`), ``model.safetensors`` (with the mel normalisation the net was trained with),
``checksums.json`` and ``train.json`` (its held-out accuracy).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipstep.config import check
from lipstep.data.features import LOG_FLOOR
from lipstep.data.visemes import VISEMES
from lipstep.netdir import check_net_out, load_net_dir, save_net_dir

NAME = "lipstep-viseme-classifier-v1"
_WHAT = "viseme classifier"  # names its directory in errors
N_VISEMES = len(VISEMES)


@dataclass
class VisemeNetConfig:
    n_mels: int = 80                # mel bands of the input windows (MelEncoder / prepare: 80)
    mel_window: int = 16            # K: mel frames per window (MelEncoder / prepare: 16)
    fps: float = 25.0               # video frame rate the windows and labels are at
    n_visemes: int = N_VISEMES      # classes
    width: int = 128                # channels of every layer
    context: int = 3                # valid temporal convs (kernel 3): frames read on each side of a frame
    dropout: float = 0.1            # before every temporal conv, in training

    def validate(self) -> None:
        check(self.n_mels >= 1 and self.mel_window >= 2, f"n_mels must be >= 1 and mel_window >= 2, got "
                                                         f"{self.n_mels}, {self.mel_window}")
        check(1.0 <= self.fps <= 120.0, f"fps must be in 1..120, got {self.fps}")
        check(self.n_visemes >= 2, f"n_visemes must be >= 2, got {self.n_visemes}")
        check(self.width >= 8 and 0 <= self.context <= 16, f"width must be >= 8 and context in 0..16, got "
                                                           f"{self.width}, {self.context}")
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")


class VisemeNet(nn.Module):
    """Log-mel windows [B, N + 2·context, K, n_mels] -> viseme logits [B, N, n_visemes]."""

    def __init__(self, cfg: VisemeNetConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        w = cfg.width
        # per-band normalisation of the log-mel input, set from the training data by the trainer
        self.register_buffer("mel_mean", torch.zeros(cfg.n_mels))
        self.register_buffer("mel_std", torch.ones(cfg.n_mels))
        self.frame = nn.Sequential(nn.Conv1d(cfg.n_mels, w, 3, padding=1), nn.GELU(),
                                   nn.Conv1d(w, w, 3, stride=2, padding=1), nn.GELU())
        self.proj = nn.Linear(2 * w, w)
        self.norm = nn.LayerNorm(w)
        self.temporal = nn.ModuleList(nn.Conv1d(w, w, 3) for _ in range(cfg.context))
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(w, cfg.n_visemes)

    def forward(self, windows: Tensor) -> Tensor:
        b, n, k, d = windows.shape
        c = self.cfg.context
        if n <= 2 * c or (k, d) != (self.cfg.mel_window, self.cfg.n_mels):
            raise ValueError(f"VisemeNet expects windows [B, N + {2 * c}, {self.cfg.mel_window}, {self.cfg.n_mels}] "
                             f"with N >= 1, got {list(windows.shape)}")
        x = (windows.float() - self.mel_mean) / self.mel_std
        x = self.frame(x.reshape(b * n, k, d).transpose(1, 2))                 # [B*N', W, K/2]
        x = self.norm(self.proj(torch.cat([x.mean(2), x.amax(2)], 1)))       # [B*N', W]
        h = x.reshape(b, n, -1).transpose(1, 2)                              # [B, W, N']
        for conv in self.temporal:
            h = h[:, :, 1:-1] + conv(self.drop(F.gelu(h)))                   # valid: N' shrinks by 2
        return self.head(h.transpose(1, 2))                                  # [B, N, n_visemes]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def silence_windows(n: int, cfg: VisemeNetConfig) -> Tensor:
    """The windows of `n` frames before the audio starts: float32 [n, K, n_mels] of ``log(LOG_FLOOR)``."""
    return torch.full((n, cfg.mel_window, cfg.n_mels), math.log(LOG_FLOOR), dtype=torch.float32)


@torch.no_grad()
def frame_probs(net: VisemeNet, windows: Tensor, smooth: int = 0) -> Tensor:
    """Windows of frames [a - c, b + c), c = context + smooth, [b - a + 2c, K, D] -> class probabilities
    [b - a, n_visemes] of frames [a, b), averaged over 2·smooth + 1 frames."""
    probs = net(windows[None]).softmax(-1)                                   # [1, N + 2·smooth, n]
    if smooth > 0:
        probs = F.avg_pool1d(probs.transpose(1, 2), 2 * smooth + 1, stride=1).transpose(1, 2)
    return probs[0]


def frame_labels(net: VisemeNet, windows: Tensor, smooth: int = 0) -> Tensor:
    """`frame_probs`' argmax: int64 labels [b - a]."""
    return frame_probs(net, windows, smooth).argmax(-1)


def viseme_windows(visemes: Tensor, window: int, n: int) -> Tensor:
    """Viseme labels int [B, T] -> one-hot windows float32 [B, T, window, n]: window t holds the labels of
    frames t - window//2 .. t - window//2 + window - 1, the first / last label repeated past the edges (what
    `VisemeEncoder` gives for one clip; training recipes call it on ``batch["visemes"]``)."""
    if visemes.ndim != 2 or visemes.shape[1] < 1 or window < 1:
        raise ValueError(f"viseme_windows expects labels [B, T] with T >= 1 and window >= 1, got "
                         f"{list(visemes.shape)}, window {window}")
    if visemes.numel() and (int(visemes.min()) < 0 or int(visemes.max()) >= n):
        raise ValueError(f"viseme labels must be in 0..{n - 1}, got {int(visemes.min())}..{int(visemes.max())}")
    t = visemes.shape[1]
    idx = torch.arange(t, device=visemes.device)[:, None] - window // 2 + torch.arange(window, device=visemes.device)
    return F.one_hot(visemes.long()[:, idx.clamp(0, t - 1)], n).float()   # [B, T, window, n]


# ------------------------------------------------------------------------------------ weight directory


def check_viseme_classifier_out(directory: str | os.PathLike) -> None:
    """Refuse to write a classifier over anything but a classifier directory or an empty one."""
    check_net_out(directory, VisemeNetConfig, what=_WHAT)


def save_viseme_classifier(net: VisemeNet, directory: str | os.PathLike, *, train: dict | None = None) -> Path:
    """Write ``model.safetensors``, ``config.json`` (and ``train.json`` if given) as one atomic directory."""
    return save_net_dir(net, directory, what=_WHAT, metadata={"kind": "VisemeNet", "name": NAME}, train=train)


def load_viseme_classifier(path: str | os.PathLike) -> VisemeNet:
    """A `VisemeNet` saved by `save_viseme_classifier` (or ``lipstep train visemes``), in eval mode and frozen."""
    return load_net_dir(path, VisemeNetConfig, VisemeNet, what=_WHAT)


__all__ = [
    "NAME",
    "N_VISEMES",
    "VisemeNet",
    "VisemeNetConfig",
    "check_viseme_classifier_out",
    "frame_labels",
    "frame_probs",
    "load_viseme_classifier",
    "save_viseme_classifier",
    "silence_windows",
    "viseme_windows",
]
