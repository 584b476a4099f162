"""Temporal stability (flicker, warping error, drift) and paired reconstruction metrics (PSNR, SSIM).

All functions take channels-last RGB video ``[T, H, W, 3]`` (uint8 0..255, or float in [0, 1]) and
work in [0, 1] units unless a ``data_range`` says otherwise. None needs learned weights.

- **Flicker** (`flicker`): mean absolute difference of consecutive frames and its std over time,
  plus the second difference |x_{t+1} - 2x_t + x_{t-1}|, which is ~0 for smooth (linear) motion and
  large for frame-to-frame jitter. A static video scores 0. Natural motion is not 0: compare with the
  same statistic on ground truth.
- **Warping error** (`warping_error`; Lai et al., ECCV 2018, eq. 7): frame t+1 is warped back onto
  frame t with the forward optical flow, and the squared RGB difference is averaged over pixels that
  are not occluded. Flow is OpenCV Farneback on grayscale with TecoGAN's settings (pyramid 0.5,
  3 levels, window 15, 3 iterations, poly_n 5, sigma 1.2) instead of FlowNet2; occlusions by the
  forward-backward consistency test of Sundaram et al. 2010 (as in Lai et al.), plus pixels whose
  flow leaves the frame.
- **Drift** (`drift`): per one-second window, the colour mean and std and the SSIM of the window's
  mean frame to the first window's mean frame (slow identity/colour drift in long generations).
- **PSNR** (`psnr`, `psnr_frames`): 10 log10(R² / MSE); ``inf`` for identical inputs.
- **SSIM** (`ssim`, `ssim_frames`; Wang et al. 2004, eq. 13): 11x11 Gaussian window (sigma 1.5),
  K1 = 0.01, K2 = 0.03, window-weighted (population) statistics, only fully covered windows
  ("valid"), computed per colour channel and averaged. Matches ``skimage.metrics.structural_similarity``
  with ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``.

Data range for PSNR/SSIM: 255 for uint8, 1 for floats (which must then lie in [0, 1]); pass
``data_range`` for anything else (e.g. 2 for [-1, 1] tensors).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from lipstep.errors import LipstepError

_RANGE_TOL = 1e-3


def as_video(frames, what: str = "video") -> np.ndarray:
    """Check a video [T, H, W, 3] (uint8, or float in [0, 1]); float32 copy in [0, 1]."""
    v = np.asarray(frames.detach().cpu() if isinstance(frames, torch.Tensor) else frames)
    if v.ndim != 4 or v.shape[-1] != 3:
        hint = " (channels-first? move channels last)" if v.ndim == 4 and v.shape[1] == 3 else ""
        raise LipstepError(f"{what}: expected a video [T, H, W, 3], got shape {v.shape}{hint}")
    if v.dtype == np.uint8:
        return v.astype(np.float32) / 255.0
    if not np.issubdtype(v.dtype, np.floating):
        raise LipstepError(f"{what}: expected uint8 (0..255) or float in [0, 1], got dtype {v.dtype}")
    v = v.astype(np.float32)
    if v.size and not np.isfinite(v).all():
        raise LipstepError(f"{what}: video contains NaN or inf")
    if v.size and (v.min() < -_RANGE_TOL or v.max() > 1 + _RANGE_TOL):
        raise LipstepError(f"{what}: float frames must be in [0, 1], got range [{v.min():.3g}, {v.max():.3g}]")
    return np.clip(v, 0.0, 1.0)


def _need_frames(v: np.ndarray, n: int, what: str) -> None:
    if len(v) < n:
        raise LipstepError(f"{what}: needs at least {n} frames, got {len(v)}")


# ------------------------------------------------------------------------------------------ flicker


@dataclass(frozen=True)
class FlickerStats:
    mean_abs_diff: float    # mean over consecutive pairs of the mean |x_{t+1} - x_t| ([0, 1] units)
    std_abs_diff: float     # std over pairs of that per-pair value (bursty vs steady change)
    second_diff: float      # mean |x_{t+1} - 2 x_t + x_{t-1}| (0 for static or linear change); nan if T < 3


def frame_differences(frames) -> np.ndarray:
    """Mean absolute difference of each consecutive frame pair: [T - 1], [0, 1] units."""
    v = as_video(frames, "frame_differences")
    _need_frames(v, 2, "frame_differences")
    return np.abs(np.diff(v, axis=0)).reshape(len(v) - 1, -1).mean(axis=1)


def flicker(frames) -> FlickerStats:
    """Frame-difference flicker statistics of a video (see the module docstring)."""
    v = as_video(frames, "flicker")
    _need_frames(v, 2, "flicker")
    steps = np.abs(np.diff(v, axis=0)).reshape(len(v) - 1, -1).mean(axis=1)
    second = float(np.abs(v[2:] - 2 * v[1:-1] + v[:-2]).mean()) if len(v) >= 3 else float("nan")
    return FlickerStats(float(steps.mean()), float(steps.std()), second)


# ------------------------------------------------------------------------------------ warping error


def _gray_u8(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor((frame * 255.0 + 0.5).astype(np.uint8), cv2.COLOR_RGB2GRAY)


def farneback_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense flow [H, W, 2] (x, y in pixels) from frame `a` to frame `b` ([H, W, 3] in [0, 1]): a(p) ~ b(p + flow(p))."""
    return cv2.calcOpticalFlowFarneback(_gray_u8(a), _gray_u8(b), None, pyr_scale=0.5, levels=3, winsize=15,
                                        iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


def _sample(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """image(p + flow(p)), bilinear; out-of-frame samples repeat the border (they are masked anyway)."""
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _valid_mask(fw: np.ndarray, bw: np.ndarray) -> np.ndarray:
    """Non-occluded pixels: forward-backward consistent (Sundaram et al.) and flowing inside the frame."""
    h, w = fw.shape[:2]
    bw_at = _sample(bw, fw)
    mismatch = np.square(fw + bw_at).sum(-1)
    consistent = mismatch <= 0.01 * (np.square(fw).sum(-1) + np.square(bw_at).sum(-1)) + 0.5
    gx, gy = np.meshgrid(np.arange(w), np.arange(h))
    x, y = gx + fw[..., 0], gy + fw[..., 1]
    inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    return consistent & inside


def warping_errors(frames, *, use_occlusion_mask: bool = True) -> np.ndarray:
    """Per consecutive pair: mean over valid pixels of ||x_t - warp(x_{t+1})||² (RGB summed), [T - 1].

    A pair with no valid pixel gives nan.
    """
    v = as_video(frames, "warping_errors")
    _need_frames(v, 2, "warping_errors")
    out = np.empty(len(v) - 1)
    for t in range(len(v) - 1):
        fw = farneback_flow(v[t], v[t + 1])
        err = np.square(v[t] - _sample(v[t + 1], fw)).sum(-1)
        mask = _valid_mask(fw, farneback_flow(v[t + 1], v[t])) if use_occlusion_mask else np.ones(err.shape, bool)
        out[t] = err[mask].mean() if mask.any() else np.nan
    return out


def warping_error(frames, *, use_occlusion_mask: bool = True) -> float:
    """Warping error of a video (Lai et al. 2018): mean of `warping_errors` over pairs ([0, 1]² units)."""
    errors = warping_errors(frames, use_occlusion_mask=use_occlusion_mask)
    return float(np.nanmean(errors)) if np.isfinite(errors).any() else float("nan")


# -------------------------------------------------------------------------------------------- drift


@dataclass(frozen=True)
class DriftStats:
    starts: np.ndarray          # [S] first frame of each one-second window
    colour_mean: np.ndarray     # [S, 3] mean RGB of each window ([0, 1] units)
    colour_std: np.ndarray      # [S, 3] std of RGB values within each window (over time and space)
    colour_shift: np.ndarray    # [S] L2 distance of colour_mean to the first window's
    ssim_to_first: np.ndarray   # [S] SSIM of each window's mean frame to the first window's mean frame

    @property
    def max_colour_shift(self) -> float:
        return float(self.colour_shift.max())

    @property
    def min_ssim_to_first(self) -> float:
        return float(self.ssim_to_first.min())


def drift(frames, fps: float) -> DriftStats:
    """Per-second colour statistics and similarity to the first second.

    Windows are whole seconds, frames ``round(s * fps) .. round((s + 1) * fps) - 1``; a trailing partial
    second is dropped, and a video shorter than one second is a single window.
    """
    v = as_video(frames, "drift")
    _need_frames(v, 1, "drift")
    if not fps > 0:
        raise LipstepError(f"drift: fps must be > 0, got {fps}")
    seconds = max(1, int(len(v) / fps + 1e-9))
    bounds = [min(len(v), round(s * fps)) for s in range(seconds + 1)] if len(v) >= fps else [0, len(v)]
    windows = [v[a:b] for a, b in itertools.pairwise(bounds)]
    mean = np.stack([w.reshape(-1, 3).mean(0) for w in windows])
    std = np.stack([w.reshape(-1, 3).std(0) for w in windows])
    mean_frames = np.stack([w.mean(0) for w in windows])
    sims = ssim_frames(mean_frames, np.broadcast_to(mean_frames[:1], mean_frames.shape), data_range=1.0)
    return DriftStats(np.asarray(bounds[:-1]), mean, std, np.linalg.norm(mean - mean[0], axis=1), sims)


# ---------------------------------------------------------------------------------- PSNR and SSIM


def _pair(x, y, data_range: float | None, what: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Validate two images/videos of one shape; float64 copies and the data range."""
    a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
    b = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y)
    if a.shape != b.shape:
        raise LipstepError(f"{what}: shapes differ ({a.shape} vs {b.shape})")
    if a.ndim not in (2, 3, 4) or a.size == 0:
        raise LipstepError(f"{what}: expected [H, W], [H, W, C] or [N, H, W, C], got shape {a.shape}")
    for arr in (a, b):
        if not (arr.dtype == np.uint8 or np.issubdtype(arr.dtype, np.floating)):
            raise LipstepError(f"{what}: expected uint8 or float arrays, got dtype {arr.dtype}")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if not (np.isfinite(a64).all() and np.isfinite(b64).all()):
        raise LipstepError(f"{what}: inputs contain NaN or inf")
    if data_range is None:
        if a.dtype == np.uint8 and b.dtype == np.uint8:
            data_range = 255.0
        elif a.dtype == np.uint8 or b.dtype == np.uint8:
            raise LipstepError(f"{what}: one input is uint8 and the other float; convert both to one scale")
        else:
            lo, hi = min(a64.min(), b64.min()), max(a64.max(), b64.max())
            if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
                raise LipstepError(f"{what}: float inputs must be in [0, 1] unless data_range is given, "
                                   f"got range [{lo:.3g}, {hi:.3g}]")
            data_range = 1.0
    if not data_range > 0:
        raise LipstepError(f"{what}: data_range must be > 0, got {data_range}")
    return a64, b64, float(data_range)


def _psnr_from_mse(mse: np.ndarray, data_range: float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(mse > 0, 10.0 * np.log10(data_range**2 / np.maximum(mse, 1e-300)), np.inf)


def psnr(x, y, *, data_range: float | None = None) -> float:
    """PSNR (dB) of the MSE over all elements of two images or videos; ``inf`` when they are identical."""
    a, b, r = _pair(x, y, data_range, "psnr")
    return float(_psnr_from_mse(np.mean(np.square(a - b)), r))


def psnr_frames(x, y, *, data_range: float | None = None) -> np.ndarray:
    """PSNR (dB) of each frame of two videos [N, H, W, C]: [N] (``inf`` for identical frames)."""
    a, b, r = _pair(x, y, data_range, "psnr_frames")
    if a.ndim != 4:
        raise LipstepError(f"psnr_frames: expected videos [N, H, W, C], got shape {a.shape}")
    return _psnr_from_mse(np.square(a - b).reshape(len(a), -1).mean(1), r)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, 'valid' region only: [B, 1, H, W] -> [B, 1, H - k + 1, W - k + 1]."""
    x = F.conv2d(x, g.view(1, 1, -1, 1))
    return F.conv2d(x, g.view(1, 1, 1, -1))


def ssim_maps(x, y, *, data_range: float | None = None, win_size: int = 11, sigma: float = 1.5,
              k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """Local SSIM of two stacks [N, H, W, C] (or one image [H, W] / [H, W, C]): [N, C, H - k + 1, W - k + 1].

    Entry (i, j) belongs to the window centred on pixel (i + k // 2, j + k // 2) ("valid" windows only).
    """
    a, b, r = _pair(x, y, data_range, "ssim")
    if a.ndim == 2:
        a, b = a[None, ..., None], b[None, ..., None]
    elif a.ndim == 3:
        a, b = a[None], b[None]
    n, h, w, c = a.shape
    if h < win_size or w < win_size:
        raise LipstepError(f"ssim: images of {h}x{w} are smaller than the {win_size}x{win_size} window")
    if win_size < 3 or win_size % 2 == 0:
        raise LipstepError(f"ssim: win_size must be odd and >= 3, got {win_size}")
    # [N, H, W, C] -> [N * C, 1, H, W]: every channel is filtered on its own.
    ta = torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).reshape(n * c, 1, h, w)
    tb = torch.from_numpy(np.ascontiguousarray(b.transpose(0, 3, 1, 2))).reshape(n * c, 1, h, w)
    g = _gaussian_window(win_size, sigma)
    mu_a, mu_b = _blur(ta, g), _blur(tb, g)
    var_a = _blur(ta * ta, g) - mu_a**2
    var_b = _blur(tb * tb, g) - mu_b**2
    cov = _blur(ta * tb, g) - mu_a * mu_b
    c1, c2 = (k1 * r) ** 2, (k2 * r) ** 2
    smap = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return smap.reshape(n, c, *smap.shape[-2:]).numpy()


def ssim_frames(x, y, *, data_range: float | None = None, win_size: int = 11, sigma: float = 1.5,
                k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """SSIM of each image of two stacks [N, H, W, C] (or one image [H, W] / [H, W, C] -> [1]); mean over channels."""
    maps = ssim_maps(x, y, data_range=data_range, win_size=win_size, sigma=sigma, k1=k1, k2=k2)
    return maps.reshape(len(maps), -1).mean(axis=1)


def ssim(x, y, *, data_range: float | None = None, win_size: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM over frames (and channels) of two images or videos; 1 for identical inputs."""
    return float(ssim_frames(x, y, data_range=data_range, win_size=win_size, sigma=sigma).mean())


__all__ = [
    "DriftStats", "FlickerStats", "as_video", "drift", "farneback_flow", "flicker", "frame_differences", "psnr",
    "psnr_frames", "ssim", "ssim_frames", "ssim_maps", "warping_error", "warping_errors",
]
