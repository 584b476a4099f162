"""The inputs every frame metric takes: a video ``[T, H, W, 3]`` (uint8 0..255, or float in [0, 1]), or two
images or videos of one shape for the paired ones (PSNR, SSIM). Each metric lives in a file of its own
(`flicker`, `warping`, `drift`, `psnr`, `ssim`); none needs learned weights.

Data range for PSNR/SSIM: 255 for uint8, 1 for floats (which must then lie in [0, 1]); pass
``data_range`` for anything else (e.g. 2 for [-1, 1] tensors).
"""

from __future__ import annotations

import numpy as np
import torch

from lipstep.errors import LipstepError

RANGE_TOL = 1e-3


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
    if v.size and (v.min() < -RANGE_TOL or v.max() > 1 + RANGE_TOL):
        raise LipstepError(f"{what}: float frames must be in [0, 1], got range [{v.min():.3g}, {v.max():.3g}]")
    return np.clip(v, 0.0, 1.0)


def need_frames(v: np.ndarray, n: int, what: str) -> None:
    if len(v) < n:
        raise LipstepError(f"{what}: needs at least {n} frames, got {len(v)}")


def paired(x, y, data_range: float | None, what: str) -> tuple[np.ndarray, np.ndarray, float]:
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
            if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
                raise LipstepError(f"{what}: float inputs must be in [0, 1] unless data_range is given, "
                                   f"got range [{lo:.3g}, {hi:.3g}]")
            data_range = 1.0
    if not data_range > 0:
        raise LipstepError(f"{what}: data_range must be > 0, got {data_range}")
    return a64, b64, float(data_range)


__all__ = ["RANGE_TOL", "as_video", "need_frames", "paired"]
