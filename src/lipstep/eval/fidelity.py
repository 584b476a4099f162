"""Distribution distances between sets of frames or clips: FD (FID/FVD), KID, and their feature nets.

**Fréchet distance** (Heusel et al. 2017, eq. 6; Dowson & Landau 1982) between Gaussians fitted to
two feature sets::

    d² = ||μ₁ - μ₂||² + Tr(Σ₁) + Tr(Σ₂) - 2 Tr((Σ₁ Σ₂)^{1/2})

with Σ the unbiased sample covariance, everything in float64. The matrix square root is taken by
the *symmetric route* (TF-GAN, VideoGPT, cd-fvd): with A = Σ₁^{1/2} (eigendecomposition of a
symmetric PSD matrix, negative rounding eigenvalues clamped to 0), Σ₁Σ₂ = A·(AΣ₂) has the same
eigenvalues as A Σ₂ A, which is symmetric PSD; so Tr((Σ₁Σ₂)^{1/2}) = Σᵢ sqrt(λᵢ(A Σ₂ A)) from
``eigvalsh``. Unlike ``scipy.linalg.sqrtm(Σ₁Σ₂)`` (pytorch-fid) this never produces an imaginary part
and needs no ε·I retry on singular covariances (n < d). The analogue of pytorch-fid's "imaginary
component" check is a check on negative eigenvalues of A Σ₂ A: beyond rounding (1e-6 of the largest)
they mean the inputs are not covariance matrices, and `frechet_distance` raises.

**KID** (Bińkowski et al. 2018, eq. 3): the unbiased MMD² estimate with the cubic polynomial kernel
k(x, y) = (xᵀy / d + 1)³, averaged over random subsets; mean and (population) std over subsets.
Unlike FD it is unbiased in the sample size, so prefer it below a few thousand samples.

**Feature extractors** share one small interface (`FrameFeatures`, `VideoFeatures`): a ``name``, a
``dim`` and ``__call__(frames) -> float32 [N, dim]``. Frames are channels-last RGB, uint8
[N, H, W, 3] (0..255) or float in [0, 1]; clips are [N, T, H, W, 3]. Anything else (channels
first, [-1, 1] floats, 0..255 floats, a single frame) is a `LipstepError` naming the fix.

- `InceptionFeatures(path)`: pytorch-fid's FID InceptionV3 (TF "inception-2015-12-05" port with
  the FID-specific A/C/E blocks), 2048-d pool3 features, weights only from a local
  ``pt_inception-2015-12-05-*.pth`` (never downloaded). Preprocessing as pytorch-fid: [0, 1] ->
  bilinear resize to 299 (``align_corners=False``, no antialias) -> [-1, 1]. Its FD is **FID**.
- `OwnFeatures(dir)`: lipstep's own small CNN, trained by `train_feature_net` on prepared frames
  (autoencoder + identity classifier). Reported under its own name (``lipstep-frames-v1``), an
  *internal* distance that is never to be compared with published FID.
- `I3DFeatures(path)`: the TorchScript Kinetics-400 I3D of StyleGAN-V/DIGAN (``i3d_torchscript.pt``),
  400-d pre-softmax features of 16-frame clips, called as StyleGAN-V does (uint8 [B, 3, T, H, W],
  ``rescale=True, resize=True, return_features=True``). Its FD is **FVD**.
- `OwnVideoFeatures(own)`: the fallback when no I3D file exists: temporal mean/std/mean-|Δ| of
  `OwnFeatures` over a 16-frame clip plus pixel frame-difference statistics; named
  ``<own name>+motion-clip16``, again internal only.

FD is biased by the sample count (it falls as n grows): compare FD values only at equal n, and
record n, extractor name and weight SHA-256 (each extractor has ``sha256``) in every report.

**Portrait fidelity** (no weights): is a generated frame still the reference portrait's person, in its
colours? Measured against the reference (the frame the video is driven from) on the *identity region*:
the whole face crop except `MOUTH_BOX`, a fixed box in crop fractions (x 0.28-0.72, y 0.50-0.84) that
holds the mouth at any opening and head pose of the synthetic world and of prepare's face crops of real
video (speech is supposed to change the mouth, so the mouth is left out).

- `identity_psnr`: PSNR over the identity region, MSE pooled over frames (`identity_psnr_frames`: per frame).
- `identity_ssim`: SSIM (11x11 Gaussian, as `temporal.ssim`) averaged over the windows centred outside
  the box, after the box is filled with the reference's pixels; mean over frames.
- `colour_shift`: Euclidean distance, 0..255 RGB units, between the mean colour of the frames and that
  of the reference, both over the identity region (`mean_colour`).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipstep.config import check, load_config, save_config, to_dict
from lipstep.errors import ConfigError, DataError, LipstepError

# ------------------------------------------------------------------------------ Gaussian statistics


@dataclass
class FeatureStats:
    """Mean and unbiased covariance of a feature set, with its size and the extractor's name."""

    mu: np.ndarray              # float64 [d]
    sigma: np.ndarray           # float64 [d, d]
    n: int                      # number of feature vectors
    extractor: str = ""         # name of the feature space (FD across different spaces is meaningless)

    def save(self, path: str | os.PathLike) -> Path:
        """Write to an ``.npz`` (atomically); reference-set stats are worth caching."""
        from lipstep.fsutil import atomic_path

        path = Path(path)
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, mu=self.mu, sigma=self.sigma, n=np.int64(self.n), extractor=np.str_(self.extractor))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        """Read stats written by `save`."""
        try:
            with np.load(Path(path), allow_pickle=False) as z:
                return cls(z["mu"].astype(np.float64), z["sigma"].astype(np.float64), int(z["n"]),
                           str(z["extractor"]))
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"cannot read feature stats {path} ({e})") from None


def _as_features(feats, what: str) -> np.ndarray:
    a = np.asarray(feats.detach().cpu() if isinstance(feats, torch.Tensor) else feats, dtype=np.float64)
    if a.ndim != 2:
        raise LipstepError(f"{what}: expected a 2-D feature array [N, dim], got shape {a.shape}")
    if not np.isfinite(a).all():
        raise LipstepError(f"{what}: features contain NaN or inf")
    return a


def feature_stats(feats, extractor: str = "") -> FeatureStats:
    """Mean and unbiased covariance (float64) of features [N, dim], N >= 2."""
    a = _as_features(feats, "feature_stats")
    if len(a) < 2:
        raise LipstepError(f"feature_stats: need at least 2 feature vectors, got {len(a)}")
    return FeatureStats(a.mean(axis=0), np.atleast_2d(np.cov(a, rowvar=False)), len(a), extractor)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (eigenvalues below 0 are rounding: clamped)."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _check_gaussian(mu, sigma, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise LipstepError(f"frechet_distance: {name} needs mu [d] and sigma [d, d], got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise LipstepError(f"frechet_distance: {name} contains NaN or inf")
    scale = max(float(np.abs(sigma).max()), 1e-300)
    if float(np.abs(sigma - sigma.T).max()) > 1e-6 * scale:
        raise LipstepError(f"frechet_distance: {name} covariance is not symmetric")
    return mu, (sigma + sigma.T) / 2


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr((Σ₁Σ₂)^{1/2}) via the symmetric matrix A Σ₂ A, A = Σ₁^{1/2} (see the module docstring)."""
    a = _sqrt_psd(s1)
    m = a @ s2 @ a
    w = np.linalg.eigvalsh((m + m.T) / 2)
    top = max(float(np.abs(w).max()), 1e-300)
    if w.min() < -1e-6 * top:   # sqrtm would return an imaginary part here
        raise LipstepError(f"frechet_distance: Σ₁Σ₂ has a negative eigenvalue ({w.min():.3g}, largest {top:.3g}); "
                           "the inputs are not positive semi-definite covariance matrices")
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1, s1, mu2, s2) -> float:
    """Squared Fréchet distance between N(mu1, s1) and N(mu2, s2) (the FID/FVD formula), float64."""
    mu1, s1 = _check_gaussian(mu1, s1, "first Gaussian")
    mu2, s2 = _check_gaussian(mu2, s2, "second Gaussian")
    if len(mu1) != len(mu2):
        raise LipstepError(f"frechet_distance: feature dims differ ({len(mu1)} vs {len(mu2)})")
    diff = mu1 - mu2
    d2 = float(diff @ diff) + float(np.trace(s1) + np.trace(s2)) - 2.0 * trace_sqrt_product(s1, s2)
    return max(d2, 0.0)  # only rounding can make it negative


def fd_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """`frechet_distance` of two `FeatureStats`; refuses stats from different feature spaces."""
    if a.extractor and b.extractor and a.extractor != b.extractor:
        raise LipstepError(f"feature stats come from different extractors ({a.extractor!r} vs {b.extractor!r})")
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def fd_from_features(a, b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, dim] and [M, dim]."""
    return fd_from_stats(feature_stats(a), feature_stats(b))


# ---------------------------------------------------------------------------------------------- KID


@dataclass(frozen=True)
class KIDResult:
    mean: float                 # mean of the unbiased MMD² over subsets
    std: float                  # population std over subsets (torch-fidelity's convention)
    subsets: int
    subset_size: int            # after clipping to the smaller set


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3) -> np.ndarray:
    """k(x, y) = (xᵀy / d + 1)^degree for all row pairs: [m, d] x [n, d] -> [m, n]."""
    return (x @ y.T / x.shape[1] + 1.0) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int = 3) -> float:
    """Unbiased MMD² (Gretton et al. 2012, eq. 3) with the polynomial kernel; diagonals of K_xx, K_yy excluded."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = polynomial_kernel(x, x, degree), polynomial_kernel(y, y, degree), polynomial_kernel(x, y, degree)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())


def kid(a, b, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        seed: int | np.random.Generator = 0) -> KIDResult:
    """Kernel Inception Distance between feature sets [N, dim] and [M, dim] (see the module docstring).

    Each subset draws ``min(subset_size, N, M)`` rows of each set without replacement, from
    ``np.random.default_rng(seed)`` (or the given generator).
    """
    x, y = _as_features(a, "kid (first set)"), _as_features(b, "kid (second set)")
    if x.shape[1] != y.shape[1]:
        raise LipstepError(f"kid: feature dims differ ({x.shape[1]} vs {y.shape[1]})")
    if subsets < 1 or degree < 1:
        raise LipstepError(f"kid: subsets and degree must be >= 1, got {subsets} and {degree}")
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise LipstepError(f"kid: need at least 2 samples per set and subset_size >= 2, got {len(x)}, {len(y)}, "
                           f"{subset_size}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    values = [mmd2_unbiased(x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)], degree)
              for _ in range(subsets)]
    return KIDResult(float(np.mean(values)), float(np.std(values)), subsets, m)


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


# ------------------------------------------------------------------------- FID InceptionV3 (2048-d)
# Attribute names mirror torchvision's Inception3 as patched by pytorch-fid (`fid_inception_v3`), so
# the released state dict loads key for key. Shapes: 299 -> 149 -> 147 -> 147 -> 73 -> 73 -> 71 -> 35
# (Mixed_5*) -> 17 (Mixed_6*) -> 8 (Mixed_7*) -> pool3 [2048].

INCEPTION_GLOB = "pt_inception-2015-12-05-*.pth"
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"  # the name pytorch-fid's release uses


class _Conv(nn.Module):
    """Conv (no bias) + BatchNorm (eps 1e-3, as TF) + ReLU: torchvision's ``BasicConv2d``."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3/1 average pool that, like TF, ignores the zero padding (the FID blocks' patch)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):
    """35x35 block (Mixed_5b/c/d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | TF avg pool-1x1."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1 = _Conv(cin, 48, 1)
        self.branch5x5_2 = _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        five = self.branch5x5_2(self.branch5x5_1(x))
        double = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), five, double, self.branch_pool(_tf_avg_pool(x))], 1)


class _BlockB(nn.Module):
    """35 -> 17 reduction (Mixed_6a): 3x3/2 | 1x1-3x3-3x3/2 | max pool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), double, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockC(nn.Module):
    """17x17 block (Mixed_6b..e): 1x1 | factorised 7x7 | double factorised 7x7 | TF avg pool-1x1."""

    def __init__(self, cin: int, channels_7x7: int):
        super().__init__()
        c = channels_7x7
        row, col = {"kernel": (1, 7), "padding": (0, 3)}, {"kernel": (7, 1), "padding": (3, 0)}
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1 = _Conv(cin, c, 1)
        self.branch7x7_2 = _Conv(c, c, **row)
        self.branch7x7_3 = _Conv(c, 192, **col)
        self.branch7x7dbl_1 = _Conv(cin, c, 1)
        self.branch7x7dbl_2 = _Conv(c, c, **col)
        self.branch7x7dbl_3 = _Conv(c, c, **row)
        self.branch7x7dbl_4 = _Conv(c, c, **col)
        self.branch7x7dbl_5 = _Conv(c, 192, **row)
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = layer(double)
        return torch.cat([self.branch1x1(x), single, double, self.branch_pool(_tf_avg_pool(x))], 1)


class _BlockD(nn.Module):
    """17 -> 8 reduction (Mixed_7a): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max pool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = _Conv(cin, 192, 1)
        self.branch3x3_2 = _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(cin, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        three = self.branch3x3_2(self.branch3x3_1(x))
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([three, seven, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockE(nn.Module):
    """8x8 block (Mixed_7b/c) with split 1x3/3x1 heads. `max_pool`: the TF graph's last block pools
    with a 3x3/1 *max* pool instead of an average (pytorch-fid's FIDInceptionE_2)."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1 = _Conv(cin, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _Conv(cin, 448, 1)
        self.branch3x3dbl_2 = _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(s), self.branch3x3_2b(s),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """pytorch-fid's FID InceptionV3 without the aux head: [N, 3, 299, 299] in [-1, 1] -> pool3 [N, 2048].

    ``fc`` (1008 TF classes) is unused but kept so the state dict matches the released file exactly.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b = _BlockA(192, pool_features=32)
        self.Mixed_5c = _BlockA(256, pool_features=64)
        self.Mixed_5d = _BlockA(288, pool_features=64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b = _BlockC(768, channels_7x7=128)
        self.Mixed_6c = _BlockC(768, channels_7x7=160)
        self.Mixed_6d = _BlockC(768, channels_7x7=160)
        self.Mixed_6e = _BlockC(768, channels_7x7=192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b = _BlockE(1280, max_pool=False)
        self.Mixed_7c = _BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))  # pool3: global average pool, [N, 2048]


def find_inception_weights(path: str | os.PathLike) -> Path:
    """The FID Inception weights file: `path` itself, or the one ``pt_inception-2015-12-05-*.pth`` in it."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob(INCEPTION_GLOB))
        if len(found) != 1:
            what = "no" if not found else f"{len(found)}"
            raise LipstepError(f"{path}: {what} files matching {INCEPTION_GLOB} (pytorch-fid's {INCEPTION_FILE}; "
                               "lipstep never downloads it, place it there yourself)")
        return found[0]
    if not path.is_file():
        raise LipstepError(f"FID Inception weights {path} not found (expected pytorch-fid's {INCEPTION_FILE}; "
                           "lipstep never downloads it)")
    return path


def load_inception_state(model: FIDInceptionV3, path: Path) -> None:
    """Load a pytorch-fid-format state dict into `model`; any key or shape mismatch is a `LipstepError`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise LipstepError(f"{path}: not a readable PyTorch state dict ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LipstepError(f"{path}: expected a plain state dict of tensors (pytorch-fid's format)")
    # Files saved by old torch lack BatchNorm's `num_batches_tracked`; it is unused at eval time.
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    missing = sorted(expected - set(state))
    unexpected = sorted(k for k in set(state) - set(model.state_dict()))
    if missing or unexpected:
        raise LipstepError(f"{path} is not a FID Inception state dict: {len(missing)} missing keys {missing[:3]}, "
                           f"{len(unexpected)} unexpected {unexpected[:3]}")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise LipstepError(f"{path}: tensor shapes do not match the FID Inception ({str(e).splitlines()[-1].strip()})") \
            from None


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


@dataclass
class FeatureNetConfig:
    name: str = "lipstep-frames-v1"                 # reported feature-space name; bump on any change
    image_size: int = 64                            # frames are resized to this (set from the data by training)
    channels: tuple[int, ...] = (32, 64, 128, 128)  # encoder widths; each level halves the resolution
    identities: int = 0                             # classes of the training-only identity head (0 = none)

    def validate(self) -> None:
        check(len(self.channels) >= 2 and all(c >= 8 and c % 8 == 0 for c in self.channels),
              f"channels needs >= 2 levels, each a multiple of 8, got {self.channels}")
        check(self.image_size >= 2 ** len(self.channels) and self.image_size % 2 ** len(self.channels) == 0,
              f"image_size {self.image_size} must be a multiple of {2 ** len(self.channels)}")
        check(self.identities >= 0, f"identities must be >= 0, got {self.identities}")

    @property
    def dim(self) -> int:
        return self.channels[-2] + self.channels[-1]


def _conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


class FeatureEncoder(nn.Module):
    """[N, 3, S, S] in [-1, 1] -> [N, dim]: strided conv levels; the feature is the global average of the
    last two levels' activations (a mid-level texture part and a coarse content part)."""

    def __init__(self, cfg: FeatureNetConfig):
        super().__init__()
        widths = (3,) + tuple(cfg.channels)
        self.levels = nn.ModuleList(_conv_block(a, b, 2) for a, b in itertools.pairwise(widths))

    def forward_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activations of every level, [N, C_l, S / 2^(l+1), S / 2^(l+1)]."""
        maps = []
        for level in self.levels:
            x = level(x)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.forward_maps(x)
        return torch.cat([maps[-2].mean(dim=(2, 3)), maps[-1].mean(dim=(2, 3))], 1)


class _Decoder(nn.Module):
    """Training-only: the last encoder map back to an image in [-1, 1] (nearest upsampling + convs)."""

    def __init__(self, cfg: FeatureNetConfig):
        super().__init__()
        widths = tuple(reversed(cfg.channels))
        self.ups = nn.ModuleList(nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"), _conv_block(a, b, 1))
                                 for a, b in zip(widths, widths[1:] + (widths[-1],)))
        self.out = nn.Conv2d(widths[-1], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for up in self.ups:
            z = up(z)
        return torch.tanh(self.out(z))


WEIGHTS_NAME = "model.safetensors"


class OwnFeatures(_TorchExtractor):
    """lipstep's own frame features (`FeatureEncoder`), loaded from a `train_feature_net` directory.

    An *internal* feature space: its FD/KID compare lipstep models with each other (teacher vs student,
    NFE sweeps), never with published FID numbers.
    """

    def __init__(self, path: str | os.PathLike, *, batch_size: int = 64):
        from safetensors.torch import load_file

        path = Path(path)
        weights = path / WEIGHTS_NAME
        if not (path / "config.json").is_file() or not weights.is_file():
            raise LipstepError(f"{path} is not a lipstep feature-net directory (needs config.json and {WEIGHTS_NAME}; "
                               "see train_feature_net)")
        try:
            cfg = load_config(FeatureNetConfig, path / "config.json")
        except ConfigError as e:
            raise LipstepError(f"{path / 'config.json'}: {e}") from None
        encoder = FeatureEncoder(cfg)
        missing, unexpected = encoder.load_state_dict(load_file(str(weights)), strict=False)
        if missing or unexpected:
            raise LipstepError(f"{weights} does not match {path / 'config.json'}: {len(missing)} missing keys "
                               f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}")
        self._setup(encoder, cfg, batch_size)
        self.path, self.sha256 = path, file_sha256(weights)

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


@dataclass
class FeatureTrainConfig:
    net: FeatureNetConfig = field(default_factory=FeatureNetConfig)  # image_size/identities come from the data
    steps: int = 2000               # optimizer steps
    batch: int = 64                 # frames per step, uniform over all train frames
    lr: float = 1e-3                # AdamW peak learning rate (cosine decay to lr / 10)
    identity_weight: float = 0.1    # weight of identity cross-entropy (only with >= 2 train identities)
    eval_frames: int = 256          # val (else test) frames for the reported reconstruction error
    seed: int = 0                   # initial weights and frame draws

    def validate(self) -> None:
        check(self.steps >= 1 and self.batch >= 1, f"steps and batch must be >= 1, got {self.steps}, {self.batch}")
        check(self.lr > 0 and self.identity_weight >= 0, "lr must be > 0 and identity_weight >= 0")
        check(self.eval_frames >= 1, f"eval_frames must be >= 1, got {self.eval_frames}")


@dataclass
class FeatureTrainResult:
    out: Path                       # the saved feature-net directory
    losses: list[float]             # total loss per step
    eval_l1: float                  # mean |recon - frame| on held-out frames, [-1, 1] units (nan: no held-out split)
    eval_split: str                 # split eval_l1 was measured on ("" if none)
    identities: list[str]           # identity classes of the head (empty: head off)
    seconds: float


class _SplitFrames:
    """Random access to one split's frames and per-frame identity labels (memory-mapped shards)."""

    def __init__(self, root: Path, rows: list[dict], classes: dict[str, int]):
        from lipstep.data.dataset import open_shard

        self.arrays, labels = [], []
        for row in rows:
            a = open_shard(root / row["shard"], ("frames",)).get("frames")
            if a is None or a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8 or a.shape[1] != a.shape[2]:
                raise DataError(f"shard {root / row['shard']} has no square uint8 frames [T, S, S, 3]")
            self.arrays.append(a)
            labels.append(np.full(len(a), classes.get(str(row.get("identity")), -1), np.int64))
        sizes = {a.shape[1] for a in self.arrays}
        if len(sizes) != 1:
            raise DataError(f"{root}: frames must all have one size, found {sorted(sizes)}")
        self.size, self.labels = sizes.pop(), np.concatenate(labels)
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def get(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Global indices -> (frames float [N, 3, S, S] in [-1, 1], identity labels [N], -1 = unknown)."""
        clips = np.searchsorted(self.offsets, indices, side="right") - 1
        pixels = np.stack([self.arrays[c][i - self.offsets[c]] for c, i in zip(clips, indices)])
        x = torch.from_numpy(pixels).float().div_(127.5).sub_(1.0).permute(0, 3, 1, 2).contiguous()
        return x, torch.from_numpy(self.labels[indices])


def _train_step_loss(encoder, decoder, head, x, labels, identity_weight: float) -> torch.Tensor:
    """L1 reconstruction from the last encoder map (+ identity cross-entropy on the feature vector)."""
    maps = encoder.forward_maps(x)
    loss = (decoder(maps[-1]) - x).abs().mean()
    known = labels >= 0
    if head is not None and identity_weight > 0 and bool(known.any()):
        feat = torch.cat([maps[-2].mean(dim=(2, 3)), maps[-1].mean(dim=(2, 3))], 1)
        loss = loss + identity_weight * F.cross_entropy(head(feat[known]), labels[known])
    return loss


def train_feature_net(prepared_dir: str | os.PathLike, out_dir: str | os.PathLike,
                      cfg: FeatureTrainConfig | None = None, *, steps: int | None = None,
                      progress: bool = False, device: str | torch.device | None = None) -> FeatureTrainResult:
    """Train lipstep's own frame feature net on the train frames of a prepared directory; save it to `out_dir`.

    Args:
        prepared_dir: output of ``lipstep prepare`` (manifest.jsonl with ``split``/``identity`` + shards
            with ``frames`` uint8 [T, S, S, 3]).
        out_dir: directory to write ``config.json`` (`FeatureNetConfig`), ``model.safetensors`` (the
            encoder only) and ``train.json`` (summary); files are written atomically.
        cfg: training settings; ``cfg.net.image_size`` and ``identities`` are taken from the data.
        steps: overrides ``cfg.steps``.
        progress: show a tqdm bar.
        device: where to train; None = CPU (fp32).

    Returns:
        A `FeatureTrainResult`; load the features with ``OwnFeatures(out_dir)``.
    """
    import dataclasses

    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from lipstep.data.dataset import read_manifest
    from lipstep.fsutil import atomic_path, write_json_atomic

    cfg = dataclasses.replace(cfg or FeatureTrainConfig(), **({"steps": steps} if steps is not None else {}))
    cfg.validate()
    started = time.perf_counter()
    root, out = Path(prepared_dir), Path(out_dir)
    rows = [r for r in read_manifest(root) if int(r.get("frames", 0)) > 0]
    train_rows = [r for r in rows if r.get("split") == "train"]
    if not train_rows:
        raise DataError(f"{root / 'manifest.jsonl'} has no train clips with frames")
    names = sorted({str(r["identity"]) for r in train_rows if "identity" in r})
    use_head = len(names) >= 2 and cfg.identity_weight > 0
    classes = {n: i for i, n in enumerate(names)} if use_head else {}
    train = _SplitFrames(root, train_rows, classes)
    net_cfg = dataclasses.replace(cfg.net, image_size=train.size, identities=len(classes))
    net_cfg.validate()

    device = torch.device(device or "cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        encoder, decoder = FeatureEncoder(net_cfg), _Decoder(net_cfg)
        head = nn.Linear(net_cfg.dim, len(classes)) if use_head else None
    parts = nn.ModuleList([m for m in (encoder, decoder, head) if m is not None]).to(device).train()
    opt = torch.optim.AdamW(parts.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 + 0.45 * (1 + math.cos(math.pi * s / cfg.steps)))
    rng = np.random.default_rng(cfg.seed)

    losses = []
    bar = tqdm(range(cfg.steps), desc=f"train {net_cfg.name}", disable=not progress, dynamic_ncols=True)
    for _ in bar:
        x, labels = train.get(rng.integers(0, len(train), cfg.batch))
        loss = _train_step_loss(encoder, decoder, head, x.to(device), labels.to(device), cfg.identity_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach().item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    bar.close()
    parts.eval().requires_grad_(False)

    # Report the reconstruction error on held-out frames (val, else test).
    split, eval_l1 = "", float("nan")
    held = next((s for s in ("val", "test") if any(r.get("split") == s for r in rows)), None)
    if held is not None:
        frames = _SplitFrames(root, [r for r in rows if r.get("split") == held], {})
        if frames.size == train.size:
            idx = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), cfg.eval_frames)).round().astype(np.int64))
            x = frames.get(idx)[0].to(device)
            with torch.inference_mode():
                eval_l1 = float((decoder(encoder.forward_maps(x)[-1]) - x).abs().mean())
            split = held

    result = FeatureTrainResult(out=out, losses=losses, eval_l1=eval_l1, eval_split=split, identities=names
                                if use_head else [], seconds=time.perf_counter() - started)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "name": net_cfg.name})
    save_config(net_cfg, out)
    write_json_atomic(out / "train.json", {
        "name": net_cfg.name, "dim": net_cfg.dim, "final_loss": losses[-1], "eval_l1": eval_l1,
        "eval_split": split, "identities": result.identities, "seconds": round(result.seconds, 2),
        "prepared_dir": str(root.resolve()), "train": to_dict(cfg)})
    return result


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


# ------------------------------------------------------------- portrait fidelity: identity region, colour

# The mouth box, as fractions (x0, y0, x1, y1) of the face crop's width and height. Synthetic world:
# the lips of 3000 sampled identities at the extreme head poses of the world's labels span x 0.32-0.68,
# y 0.53-0.80 (any opening, width, rounding), and every pixel a mouth state changes lies in the box
# (tests/eval/test_portrait_fidelity.py). Real video: checked on Haar crops as `prepare` makes them
# (1.8x the face, shifted down 0.1 face), where the mouth sits at about y 0.55-0.70. One box for both.
MOUTH_BOX = (0.28, 0.50, 0.72, 0.84)
_CHUNK = 64  # frames per step of the identity-region metrics (bounded memory on minute-long videos)


def mouth_box_pixels(height: int, width: int, box=MOUTH_BOX) -> tuple[int, int, int, int]:
    """`box` (fractions of the crop) -> pixel box (x0, y0, x1, y1), rounded outward."""
    if box is None:
        return 0, 0, 0, 0
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise LipstepError(f"mouth box must be fractions x0 < x1, y0 < y1 in [0, 1], got {tuple(box)}")
    return math.floor(x0 * width), math.floor(y0 * height), math.ceil(x1 * width), math.ceil(y1 * height)


def identity_mask(height: int, width: int, box=MOUTH_BOX) -> np.ndarray:
    """bool [H, W]: True on the identity region, i.e. outside the mouth box (``box=None``: everywhere)."""
    mask = np.ones((height, width), bool)
    x0, y0, x1, y1 = mouth_box_pixels(height, width, box)
    mask[y0:y1, x0:x1] = False
    if not mask.any():
        raise LipstepError(f"the mouth box {tuple(box)} covers the whole {height}x{width} frame")
    return mask


def _pixel_frames(frames, what: str) -> tuple[np.ndarray, float]:
    """Frames [N, H, W, 3] (one image [H, W, 3] becomes N = 1), uint8 or float in [0, 1]; and their data range."""
    f = np.asarray(frames.detach().cpu() if isinstance(frames, torch.Tensor) else frames)
    f = f[None] if f.ndim == 3 else f
    if f.ndim != 4 or f.shape[-1] != 3 or 0 in f.shape:
        raise LipstepError(f"{what}: expected frames [N, H, W, 3] or an image [H, W, 3], got shape {np.shape(frames)}")
    if f.dtype == np.uint8:
        return f, 255.0
    if not np.issubdtype(f.dtype, np.floating):
        raise LipstepError(f"{what}: expected uint8 (0..255) or float in [0, 1] pixels, got dtype {f.dtype}")
    if not np.isfinite(f).all() or f.min() < -_RANGE_TOL or f.max() > 1 + _RANGE_TOL:
        raise LipstepError(f"{what}: float pixels must be finite and in [0, 1] (0..255 floats? pass uint8)")
    return f, 1.0


def _against_reference(frames, reference, what: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Frames [N, H, W, 3] and a reference image [H, W, 3] of one pixel type: (frames, reference, data range)."""
    f, peak = _pixel_frames(frames, what)
    r, ref_peak = _pixel_frames(reference, what)
    if np.ndim(reference) != 3 or r.shape[1:] != f.shape[1:]:
        raise LipstepError(f"{what}: the reference must be one image of the frames' size {f.shape[1:]}, "
                           f"got shape {np.shape(reference)}")
    if peak != ref_peak:
        raise LipstepError(f"{what}: frames and reference must both be uint8 or both float, "
                           f"got {f.dtype} and {r.dtype}")
    return f, r[0], peak


def _chunks(f: np.ndarray):
    return np.array_split(f, max(1, math.ceil(len(f) / _CHUNK)))


def _identity_sq_errors(frames, reference, box, what: str) -> tuple[np.ndarray, int, float]:
    """Per frame, the summed squared error over the identity region's values [N]; the value count; data range."""
    f, r, peak = _against_reference(frames, reference, what)
    mask = identity_mask(*r.shape[:2], box)
    ref = r[mask].astype(np.float64)                                   # [P, 3]
    sse = np.concatenate([np.square(c[:, mask].astype(np.float64) - ref).sum(axis=(1, 2)) for c in _chunks(f)])
    return sse, int(mask.sum()) * 3, peak


def identity_psnr_frames(frames, reference, *, box=MOUTH_BOX) -> np.ndarray:
    """PSNR (dB) of each frame against the reference over the identity region: [N] (``inf`` where identical)."""
    sse, count, peak = _identity_sq_errors(frames, reference, box, "identity_psnr_frames")
    with np.errstate(divide="ignore"):                                  # sse = 0 -> log10 = -inf -> inf dB
        return 10.0 * np.log10(peak**2 * count) - 10.0 * np.log10(sse)


def identity_psnr(frames, reference, *, box=MOUTH_BOX) -> float:
    """PSNR (dB) of the frames against the reference over the identity region, from the MSE pooled over all
    frames (one identical frame does not make it infinite); ``inf`` only when every frame is identical."""
    sse, count, peak = _identity_sq_errors(frames, reference, box, "identity_psnr")
    mse = float(sse.sum()) / (count * len(sse))
    return float(10.0 * math.log10(peak**2 / mse)) if mse > 0 else float("inf")


def identity_ssim_frames(frames, reference, *, box=MOUTH_BOX, win_size: int = 11) -> np.ndarray:
    """SSIM of each frame against the reference over the identity region: [N].

    The frame's mouth box is first replaced by the reference's pixels (nothing inside it can change the
    result), then the SSIM map (`temporal.ssim_maps`) is averaged over channels and the windows centred
    outside the box.
    """
    from lipstep.eval.temporal import ssim_maps

    f, r, peak = _against_reference(frames, reference, "identity_ssim_frames")
    h, w = r.shape[:2]
    x0, y0, x1, y1 = mouth_box_pixels(h, w, box)
    k = win_size // 2
    centres = identity_mask(h, w, box)[k:h - k, k:w - k]               # window centres of the "valid" map
    if not centres.any():
        raise LipstepError(f"identity_ssim: every {win_size}x{win_size} window of a {h}x{w} frame is centred in "
                           "the mouth box; the frames are too small")
    out = []
    for chunk in _chunks(f):
        chunk = chunk.copy()
        chunk[:, y0:y1, x0:x1] = r[y0:y1, x0:x1]
        maps = ssim_maps(chunk, np.broadcast_to(r, chunk.shape), data_range=peak, win_size=win_size)
        out.append(maps[:, :, centres].mean(axis=(1, 2)))             # [n, C, P] -> [n]
    return np.concatenate(out)


def identity_ssim(frames, reference, *, box=MOUTH_BOX, win_size: int = 11) -> float:
    """Mean over frames of `identity_ssim_frames`; 1 when the frames equal the reference outside the mouth."""
    return float(identity_ssim_frames(frames, reference, box=box, win_size=win_size).mean())


def mean_colour(frames, *, box=MOUTH_BOX) -> np.ndarray:
    """Mean RGB of frames [N, H, W, 3] (or one image) over the identity region, in 0..255 units: float64 [3]."""
    f, peak = _pixel_frames(frames, "mean_colour")
    mask = identity_mask(*f.shape[1:3], box)
    total = sum(c[:, mask].astype(np.float64).sum(axis=(0, 1)) for c in _chunks(f))
    return total / (len(f) * int(mask.sum())) * (255.0 / peak)


def colour_shift(frames, reference, *, box=MOUTH_BOX) -> float:
    """Euclidean RGB distance (0..255 units) between the mean colour of the frames and that of the reference,
    both over the identity region."""
    f, r, _ = _against_reference(frames, reference, "colour_shift")
    return float(np.linalg.norm(mean_colour(f, box=box) - mean_colour(r, box=box)))

__all__ = [
    "MOUTH_BOX", "FIDInceptionV3", "FeatureEncoder", "FeatureNetConfig", "FeatureStats", "FeatureTrainConfig",
    "FeatureTrainResult", "FrameFeatures", "I3DFeatures", "InceptionFeatures", "KIDResult", "OwnFeatures",
    "OwnVideoFeatures", "VideoFeatures", "check_pixels", "clips_from_video", "colour_shift", "fd_from_features",
    "fd_from_stats", "feature_stats", "file_sha256", "find_inception_weights", "frechet_distance", "identity_mask",
    "identity_psnr", "identity_psnr_frames", "identity_ssim", "identity_ssim_frames", "kid", "load_inception_state",
    "mean_colour", "mmd2_unbiased", "mouth_box_pixels", "polynomial_kernel", "to_unit", "trace_sqrt_product",
    "train_feature_net",
]
