"""Feature extractors for FD / KID / FVD (`lipstep.eval.fd`, `lipstep.eval.kid`).

They share one small interface (`FrameFeatures`, `VideoFeatures`): a ``name``, a ``dim``, a ``sha256``
of their weights and ``__call__(frames) -> float32 [N, dim]``. Frames are channels-last RGB, uint8
[N, H, W, 3] (0..255) or float in [0, 1]; clips are [N, T, H, W, 3]. Anything else (channels
first, [-1, 1] floats, 0..255 floats, a single frame) is a `LipstepError` naming the fix.

- `InceptionFeatures(path)`: pytorch-fid's FID InceptionV3 (`lipstep.nets.inception`), 2048-d pool3
  features, weights only from a local ``pt_inception-2015-12-05-*.pth`` (never downloaded).
  Preprocessing as pytorch-fid: [0, 1] -> bilinear resize to 299 (``align_corners=False``, no
  antialias) -> [-1, 1]. Its FD is **FID**.
- `OwnFeatures(dir)`: lipstep's own small CNN (`lipstep.nets.features`), trained by
  `lipstep.eval.train_features.train_feature_net` on prepared frames (autoencoder + identity
  classifier). Reported under its own name (``lipstep-frames-v1``), an *internal* distance that is never
  to be compared with published FID.
- `I3DFeatures(path)`: the TorchScript Kinetics-400 I3D of StyleGAN-V/DIGAN (``i3d_torchscript.pt``),
  400-d pre-softmax features of 16-frame clips, called as StyleGAN-V does (uint8 [B, 3, T, H, W],
  ``rescale=True, resize=True, return_features=True``). Its FD is **FVD**.
- `OwnVideoFeatures(own)`: the fallback when no I3D file exists: temporal mean/std/mean-|Δ| of
  `OwnFeatures` over a 16-frame clip plus pixel frame-difference statistics; named
  ``<own name>+motion-clip16``, again internal only.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipstep.errors import LipstepError
from lipstep.nets.features import WEIGHTS_NAME, FeatureEncoder, FeatureNetConfig, load_feature_net
from lipstep.nets.inception import FIDInceptionV3, find_inception_weights, load_inception_state

# -------------------------------------------------------------------------------- input validation


@runtime_checkable
class FrameFeatures(Protocol):
    """Per-frame feature extractor: RGB frames [N, H, W, 3] (uint8, or float in [0, 1]) -> [N, dim]."""

    name: str
    dim: int

    def __call__(self, frames) -> np.ndarray: ...


@runtime_checkable
class VideoFeatures(Protocol):
    """Per-clip feature extractor: clips [N, clip_length, H, W, 3] -> [N, dim]."""

    name: str
    dim: int
    clip_length: int

    def __call__(self, clips) -> np.ndarray: ...


_RANGE_TOL = 1e-3  # float frames may overshoot [0, 1] by this much (resampling ringing); then clamped


def _shared_tensor(x) -> torch.Tensor:
    """A tensor sharing the array's memory (copied only if not C-contiguous). Read-only arrays, such as the
    memory-mapped shards of `open_shard`, are fine: nothing here writes to the input."""
    a = np.ascontiguousarray(np.asarray(x))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*", category=UserWarning)
        return torch.from_numpy(a)


def check_pixels(x, *, ndim: int, what: str, layout: str) -> torch.Tensor:
    """Check channels-last RGB input, uint8 (0..255) or float in [0, 1]; returned as a tensor, not copied.

    Conversion to float happens later, per batch (`to_unit`), so large frame sets are never copied whole.
    """
    t = x if isinstance(x, torch.Tensor) else _shared_tensor(x)
    shape = tuple(t.shape)
    if t.ndim != ndim or shape[-1] != 3:
        hint = " (channels-first? move channels last)" if t.ndim == ndim and shape[-3] == 3 else ""
        hint = hint or (" (a single item? add a leading batch axis)" if t.ndim == ndim - 1 else "")
        raise LipstepError(f"{what}: expected {layout}, got shape {shape}{hint}")
    if 0 in shape:
        raise LipstepError(f"{what}: empty input of shape {shape}")
    if t.dtype == torch.uint8:
        return t
    if not t.is_floating_point():
        raise LipstepError(f"{what}: expected uint8 (0..255) or float in [0, 1], got dtype {t.dtype}")
    lo, hi = (float(v) for v in torch.aminmax(t.detach()))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise LipstepError(f"{what}: input contains NaN or inf")
    if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
        hint = "; [-1, 1] input? use (x + 1) / 2" if lo < -_RANGE_TOL else "; 0..255 floats? divide by 255 or pass uint8"
        raise LipstepError(f"{what}: float input must be in [0, 1], got range [{lo:.3g}, {hi:.3g}]{hint}")
    return t.detach()


def to_unit(t: torch.Tensor) -> torch.Tensor:
    """Checked pixels (uint8 or float) -> float32 in [0, 1] (tiny float overshoot clamped)."""
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float().clamp(0.0, 1.0)


def _frames(x, what: str) -> torch.Tensor:
    return check_pixels(x, ndim=4, what=what, layout="frames [N, H, W, 3] (uint8 or float in [0, 1])")


def _clips(x, what: str, clip_length: int) -> torch.Tensor:
    t = check_pixels(x, ndim=5, what=what, layout=f"clips [N, {clip_length}, H, W, 3] (uint8 or float in [0, 1])")
    if t.shape[1] != clip_length:
        raise LipstepError(f"{what}: clips must have {clip_length} frames, got {t.shape[1]} "
                           "(cut videos with clips_from_video)")
    return t


def clips_from_video(frames, clip_length: int = 16, stride: int | None = None) -> np.ndarray:
    """Cut a video [T, H, W, 3] into clips [K, clip_length, H, W, 3] (stride defaults to clip_length)."""
    v = np.asarray(frames)
    if v.ndim != 4 or v.shape[-1] != 3:
        raise LipstepError(f"clips_from_video: expected a video [T, H, W, 3], got shape {v.shape}")
    stride = stride or clip_length
    if clip_length < 1 or stride < 1:
        raise LipstepError(f"clips_from_video: clip_length and stride must be >= 1, got {clip_length}, {stride}")
    if len(v) < clip_length:
        raise LipstepError(f"clips_from_video: a {len(v)}-frame video is shorter than one {clip_length}-frame clip")
    starts = range(0, len(v) - clip_length + 1, stride)
    return np.stack([v[s:s + clip_length] for s in starts])


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (recorded with every metric computed from its weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_sha(path: Path, actual: str, expected: str | None) -> None:
    if expected and not actual.startswith(expected.lower()):
        raise LipstepError(f"{path}: SHA-256 {actual[:16]}... does not match the expected {expected[:16]}...")


class _TorchExtractor:
    """Shared plumbing: a frozen module, batching, device from the module's parameters."""

    module: nn.Module
    batch_size: int

    def to(self, device: str | torch.device):
        """Move the network to `device`; returns self."""
        self.module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @torch.inference_mode()
    def _run(self, x: torch.Tensor, fn) -> np.ndarray:
        out = [fn(to_unit(chunk).to(self.device)).float().cpu() for chunk in x.split(self.batch_size)]
        return torch.cat(out).numpy()


class InceptionFeatures(_TorchExtractor):
    """FID features: 2048-d pool3 of pytorch-fid's InceptionV3, weights from a local file only."""

    name = "fid-inception-2015-12-05-pool3"
    dim = 2048
    size = 299

    def __init__(self, path: str | os.PathLike, *, batch_size: int = 32, sha256: str | None = None):
        self.path = find_inception_weights(path)
        self.sha256 = file_sha256(self.path)
        _check_sha(self.path, self.sha256, sha256)
        self.module = FIDInceptionV3()
        load_inception_state(self.module, self.path)
        self.module.eval().requires_grad_(False)
        self.batch_size = batch_size

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """[N, H, W, 3] in [0, 1] -> [N, 3, 299, 299] in [-1, 1] (pytorch-fid: bilinear, no antialias)."""
        x = F.interpolate(x.permute(0, 3, 1, 2), size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x * 2.0 - 1.0

    def __call__(self, frames) -> np.ndarray:
        x = _frames(frames, f"{type(self).__name__}")
        return self._run(x, lambda c: self.module(self.preprocess(c)))


# --------------------------------------------------------------------- lipstep's own frame features


class OwnFeatures(_TorchExtractor):
    """lipstep's own frame features (`FeatureEncoder`), loaded from a `train_feature_net` directory.

    An *internal* feature space: its FD/KID compare lipstep models with each other (teacher vs student,
    NFE sweeps), never with published FID numbers.
    """

    def __init__(self, path: str | os.PathLike, *, batch_size: int = 64):
        path = Path(path)
        encoder = load_feature_net(path)
        self._setup(encoder, encoder.cfg, batch_size)
        self.path, self.sha256 = path, file_sha256(path / WEIGHTS_NAME)

    @classmethod
    def from_encoder(cls, encoder: FeatureEncoder, cfg: FeatureNetConfig, *, batch_size: int = 64) -> OwnFeatures:
        """Wrap an in-memory encoder (e.g. freshly trained or randomly initialised)."""
        self = cls.__new__(cls)
        self._setup(encoder, cfg, batch_size)
        self.path, self.sha256 = None, ""
        return self

    def _setup(self, encoder: FeatureEncoder, cfg: FeatureNetConfig, batch_size: int) -> None:
        self.module, self.cfg, self.batch_size = encoder.eval().requires_grad_(False), cfg, batch_size
        self.name, self.dim = cfg.name, cfg.dim

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """[N, H, W, 3] in [0, 1] -> [N, 3, S, S] in [-1, 1] (bilinear, antialiased when shrinking)."""
        x = x.permute(0, 3, 1, 2)
        s = self.cfg.image_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return x * 2.0 - 1.0

    def __call__(self, frames) -> np.ndarray:
        x = _frames(frames, f"{type(self).__name__}")
        return self._run(x, lambda c: self.module(self.preprocess(c)))


# ------------------------------------------------------------------------------------ clip features


I3D_FILE = "i3d_torchscript.pt"


class I3DFeatures(_TorchExtractor):
    """FVD features: 400-d pre-softmax logits of StyleGAN-V's TorchScript Kinetics-400 I3D (local file only).

    Called exactly as StyleGAN-V's FVD does: uint8 clips [B, 3, T, H, W] with ``rescale=True`` (0..255 ->
    [-1, 1]) and ``resize=True`` (-> 224x224) inside the model. Float clips in [0, 1] are quantised to
    uint8 first (StyleGAN-V quantises generator output the same way).
    """

    name = "fvd-i3d-kinetics400"
    dim = 400

    def __init__(self, path: str | os.PathLike, *, clip_length: int = 16, batch_size: int = 8,
                 sha256: str | None = None):
        path = Path(path)
        if path.is_dir():
            path = path / I3D_FILE
        if not path.is_file():
            raise LipstepError(f"I3D weights {path} not found (StyleGAN-V's {I3D_FILE}; lipstep never downloads it)")
        if clip_length < 10:
            raise LipstepError(f"I3DFeatures: clip_length must be >= 10 (I3D downsamples time), got {clip_length}")
        self.sha256 = file_sha256(path)
        _check_sha(path, self.sha256, sha256)
        try:
            with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript, but the I3D only exists as one
                warnings.filterwarnings("ignore", message=".*torch.jit.load.*is deprecated", category=DeprecationWarning)
                self.module = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as e:  # noqa: BLE001 - TorchScript raises several types for a bad file
            raise LipstepError(f"{path}: not a TorchScript module ({type(e).__name__}); expected {I3D_FILE}") from None
        self.path, self.clip_length, self.batch_size = path, clip_length, batch_size

    @property
    def device(self) -> torch.device:
        p = next(iter(self.module.parameters()), None)
        return p.device if p is not None else torch.device("cpu")

    def _detect(self, clips01: torch.Tensor) -> torch.Tensor:
        x = (clips01 * 255.0).round_().to(torch.uint8).permute(0, 4, 1, 2, 3).contiguous()  # [B, 3, T, H, W]
        feats = self.module(x, rescale=True, resize=True, return_features=True)
        if feats.ndim != 2 or feats.shape != (len(x), self.dim):
            raise LipstepError(f"{self.path}: the I3D returned shape {tuple(feats.shape)}, expected [{len(x)}, {self.dim}]")
        return feats

    def __call__(self, clips) -> np.ndarray:
        return self._run(_clips(clips, type(self).__name__, self.clip_length), self._detect)


class OwnVideoFeatures:
    """Internal FVD fallback: per-clip summary of `OwnFeatures` over time plus pixel motion statistics.

    For a clip with frame features f_t [d] and frames x_t in [0, 1] the feature ([3d + 3]) is
    ``[mean_t f, std_t f, mean_t |f_{t+1} - f_t|, mean |x_{t+1} - x_t|, std_t of the per-pair mean |x_{t+1} - x_t|,
    mean |x_{t+1} - 2x_t + x_{t-1}|]``: appearance, its variation, feature-space motion, and raw flicker.
    Named ``<frame features>+motion-clip<T>``; never report it as FVD.
    """

    def __init__(self, frame_features: OwnFeatures, *, clip_length: int = 16):
        if clip_length < 3:
            raise LipstepError(f"OwnVideoFeatures: clip_length must be >= 3, got {clip_length}")
        self.frame_features, self.clip_length = frame_features, clip_length
        self.name = f"{frame_features.name}+motion-clip{clip_length}"
        self.dim = 3 * frame_features.dim + 3
        self.sha256 = frame_features.sha256

    def _motion(self, clip: torch.Tensor) -> torch.Tensor:
        """Pixel statistics of one clip [T, H, W, 3] in [0, 1]: [3]."""
        step = (clip[1:] - clip[:-1]).abs().flatten(1).mean(1)              # [T-1]
        second = (clip[2:] - 2 * clip[1:-1] + clip[:-2]).abs().mean()
        return torch.stack([step.mean(), step.std(unbiased=False), second])

    def __call__(self, clips) -> np.ndarray:
        x = _clips(clips, type(self).__name__, self.clip_length)            # [N, T, H, W, 3], uint8 or float
        n, t = x.shape[:2]
        f = torch.from_numpy(self.frame_features(x.flatten(0, 1))).view(n, t, -1)  # [N, T, d]
        motion = torch.stack([self._motion(to_unit(clip)) for clip in x])    # [N, 3]
        feats = [f.mean(1), f.std(1, unbiased=False), (f[:, 1:] - f[:, :-1]).abs().mean(1), motion]
        return torch.cat(feats, 1).numpy().astype(np.float32)


__all__ = [
    "I3D_FILE", "FrameFeatures", "I3DFeatures", "InceptionFeatures", "OwnFeatures", "OwnVideoFeatures",
    "VideoFeatures", "check_pixels", "clips_from_video", "file_sha256", "to_unit",
]
