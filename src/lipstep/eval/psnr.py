"""PSNR: 10 log10(R² / MSE); ``inf`` for identical inputs (inputs and data range: `lipstep.eval.frames.paired`)."""

from __future__ import annotations

import numpy as np

from lipstep.errors import LipstepError
from lipstep.eval.frames import paired


def _psnr_from_mse(mse: np.ndarray, data_range: float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(mse > 0, 10.0 * np.log10(data_range**2 / np.maximum(mse, 1e-300)), np.inf)


def psnr(x, y, *, data_range: float | None = None) -> float:
    """PSNR (dB) of the MSE over all elements of two images or videos; ``inf`` when they are identical."""
    a, b, r = paired(x, y, data_range, "psnr")
    return float(_psnr_from_mse(np.mean(np.square(a - b)), r))


def psnr_frames(x, y, *, data_range: float | None = None) -> np.ndarray:
    """PSNR (dB) of each frame of two videos [N, H, W, C]: [N] (``inf`` for identical frames)."""
    a, b, r = paired(x, y, data_range, "psnr_frames")
    if a.ndim != 4:
        raise LipstepError(f"psnr_frames: expected videos [N, H, W, C], got shape {a.shape}")
    return _psnr_from_mse(np.square(a - b).reshape(len(a), -1).mean(1), r)


__all__ = ["psnr", "psnr_frames"]
