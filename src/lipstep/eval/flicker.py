"""Flicker: mean absolute difference of consecutive frames and its std over time, plus the second
difference |x_{t+1} - 2x_t + x_{t-1}|, which is ~0 for smooth (linear) motion and large for frame-to-frame
jitter. A static video scores 0. Natural motion is not 0: compare with the same statistic on ground truth.
Frames as `lipstep.eval.frames.as_video` takes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lipstep.eval.frames import as_video, need_frames


@dataclass(frozen=True)
class FlickerStats:
    mean_abs_diff: float    # mean over consecutive pairs of the mean |x_{t+1} - x_t| ([0, 1] units)
    std_abs_diff: float     # std over pairs of that per-pair value (bursty vs steady change)
    second_diff: float      # mean |x_{t+1} - 2 x_t + x_{t-1}| (0 for static or linear change); nan if T < 3


def frame_differences(frames) -> np.ndarray:
    """Mean absolute difference of each consecutive frame pair: [T - 1], [0, 1] units."""
    v = as_video(frames, "frame_differences")
    need_frames(v, 2, "frame_differences")
    return np.abs(np.diff(v, axis=0)).reshape(len(v) - 1, -1).mean(axis=1)


def flicker(frames) -> FlickerStats:
    """Frame-difference flicker statistics of a video (see the module docstring)."""
    v = as_video(frames, "flicker")
    need_frames(v, 2, "flicker")
    steps = np.abs(np.diff(v, axis=0)).reshape(len(v) - 1, -1).mean(axis=1)
    second = float(np.abs(v[2:] - 2 * v[1:-1] + v[:-2]).mean()) if len(v) >= 3 else float("nan")
    return FlickerStats(float(steps.mean()), float(steps.std()), second)


__all__ = ["FlickerStats", "flicker", "frame_differences"]
