"""Drift: per one-second window, the colour mean and std and the SSIM of the window's mean frame to the first
window's mean frame (slow identity/colour drift in long generations). Frames as
`lipstep.eval.frames.as_video` takes them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from lipstep.errors import LipstepError
from lipstep.eval.frames import as_video, need_frames
from lipstep.eval.ssim import ssim_frames


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
    need_frames(v, 1, "drift")
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


__all__ = ["DriftStats", "drift"]
