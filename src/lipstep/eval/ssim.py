"""SSIM (Wang et al. 2004, eq. 13): 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, window-weighted
(population) statistics, only fully covered windows ("valid"), computed per colour channel and averaged.
Matches ``skimage.metrics.structural_similarity`` with ``gaussian_weights=True, sigma=1.5,
use_sample_covariance=False``. Inputs and data range: `lipstep.eval.frames.paired`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lipstep.errors import LipstepError
from lipstep.eval.frames import paired


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
    a, b, r = paired(x, y, data_range, "ssim")
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


__all__ = ["ssim", "ssim_frames", "ssim_maps"]
