"""Blinks: the synthetic world's blink process, and the same process drawn frame by frame at inference.

A blink is a fixed 5-frame eyelid-closure profile (0 = open, 1 = shut) started at random times: the gaps
between onsets are exponential with mean ``1 / per_second`` seconds and at least `MIN_GAP` frames. The
world renders its clips' eyes from `blink_track`. At inference a `BlinkSchedule` of the rate the training
labels showed (`blink_rate`) tells every frame its eyelid closure, and a model draws it with its eye net
(`lipstep.nets.eyes`, on the generated latents) and/or a denoiser conditioned on it (`DiTConfig.blink`), so
an avatar blinks in speech and in silence without anything in the audio asking for it. `eye_brightness`
reads the eye band of frames, to check that it did.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

PROFILE = np.array([0.35, 0.85, 1.0, 0.7, 0.3], np.float32)   # eyelid closure over one blink's frames
MIN_GAP = 8.0                                                 # frames between two onsets, at least


def blink_onsets(rng: np.random.Generator, per_second: float, fps: float) -> Iterator[float]:
    """Onset times in frames, increasing, without end (nothing when ``per_second`` is 0). Lazy: a consumer
    that stops early has drawn only the numbers it used, so a track of N frames draws the same numbers
    whether it is made at once or frame range by frame range."""
    if per_second <= 0:
        return
    t = rng.exponential(1.0 / per_second) * fps
    while True:
        yield t
        t += max(MIN_GAP, rng.exponential(1.0 / per_second) * fps)


def blink_track(rng: np.random.Generator, n_frames: int, per_second: float, fps: float) -> np.ndarray:
    """Eyelid closure [n_frames] in [0, 1]: whole blinks at random times (none that would be cut by the end)."""
    blink = np.zeros(n_frames, np.float32)
    for t in blink_onsets(rng, per_second, fps):
        if t >= n_frames - len(PROFILE):
            break
        i = int(t)
        blink[i:i + len(PROFILE)] = np.maximum(blink[i:i + len(PROFILE)], PROFILE)
    return blink


class BlinkSchedule:
    """Eyelid closure for any frame range of an unbounded video, drawn from the blink process once.

    `frames(start, n)` is a function of (seed, start, n) alone, however often and in whatever order it is
    asked; what it keeps is the onsets that can still touch a frame at or after the earliest start asked
    so far, so its memory is constant over a stream of any length (ranges are asked in increasing order
    there; an earlier range than the earliest kept raises).
    """

    def __init__(self, per_second: float, fps: float, seed: int = 0):
        if per_second < 0 or fps <= 0:
            raise ValueError(f"blinks need per_second >= 0 and fps > 0, got {per_second}, {fps}")
        self._onsets = blink_onsets(np.random.default_rng([int(seed), 0xB11C]), per_second, fps)
        self._kept: list[int] = []          # onset frames that may still touch frames >= self._floor
        self._drawn_to = -1.0               # every onset up to this frame is in _kept (or was dropped)
        self._floor = 0

    def frames(self, start: int, n: int) -> np.ndarray:
        """Eyelid closure of frames start .. start + n − 1 -> float32 [n]."""
        if start < self._floor:
            raise ValueError(f"blink frames from {start} asked after frames from {self._floor} were dropped")
        end = start + n
        while self._drawn_to < end:
            t = next(self._onsets, None)
            if t is None:                    # no blinks at all (per_second = 0)
                self._drawn_to = float("inf")
                break
            self._kept.append(int(t))
            self._drawn_to = t
        self._floor = start
        self._kept = [i for i in self._kept if i + len(PROFILE) > start]
        out = np.zeros(n, np.float32)
        for i in self._kept:
            lo, hi = max(i, start), min(i + len(PROFILE), end)
            if lo < hi:
                out[lo - start:hi - start] = np.maximum(out[lo - start:hi - start], PROFILE[lo - i:hi - i])
        return out


def blink_rate(tracks: list[np.ndarray], fps: float) -> float:
    """Blinks per second in labelled eyelid-closure tracks (an onset: closure rising from below 0.5 to 0.5
    or more); 0 for no frames."""
    frames = sum(len(b) for b in tracks)
    if frames == 0:
        return 0.0
    onsets = sum(int(np.sum((b[1:] >= 0.5) & (b[:-1] < 0.5)) + (len(b) > 0 and b[0] >= 0.5)) for b in tracks)
    return float(onsets * fps / frames)


EYE_BAND = (0.20, 0.30, 0.80, 0.46)  # x0, y0, x1, y1 (fractions of the crop): both eyes of a world face crop


def eye_brightness(frames, band=EYE_BAND) -> np.ndarray:
    """Per frame, the 99th percentile of the darkest channel over the eye band (0..255): the whites of open eyes,
    gone while the lids are shut. float32 [N]. `soak` counts a frame as blinking when it dips below the video's
    own median by half the depth of the identity's real blinks (open minus shut eyes, the world's ``blink``
    labels), so eyes drawn dimmer overall are not read as shut."""
    f = np.asarray(frames)
    h, w = f.shape[1:3]
    x0, y0, x1, y1 = band
    eye = f[:, int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)].min(axis=3).reshape(len(f), -1)
    return np.percentile(eye, 99, axis=1).astype(np.float32)


__all__ = ["EYE_BAND", "MIN_GAP", "PROFILE", "BlinkSchedule", "blink_onsets", "blink_rate", "blink_track",
           "eye_brightness"]
