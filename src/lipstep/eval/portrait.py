"""Portrait fidelity (no weights): is a generated frame still the reference portrait's person, in its colours?

Measured against the reference (the frame the video is driven from) on the *identity region*: the
whole face crop except `MOUTH_BOX`, a fixed box in crop fractions (x 0.28-0.72, y 0.50-0.84) that holds
the mouth at any opening and head pose of the synthetic world and of prepare's face crops of real video
(speech is supposed to change the mouth, so the mouth is left out).

- `identity_psnr`: PSNR over the identity region, MSE pooled over frames (`identity_psnr_frames`: per frame).
- `identity_ssim`: SSIM (11x11 Gaussian, as `temporal.ssim`) averaged over the windows centred outside
  the box, after the box is filled with the reference's pixels; mean over frames.
- `colour_shift`: Euclidean distance, 0..255 RGB units, between the mean colour of the frames and that
  of the reference, both over the identity region (`mean_colour`).

Frames are [N, H, W, 3] (or one image [H, W, 3]), uint8 or float in [0, 1], of the reference's type.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lipstep.errors import LipstepError
from lipstep.eval.ssim import ssim_maps

_RANGE_TOL = 1e-3  # float frames may overshoot [0, 1] by this much (resampling ringing)

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


__all__ = ["MOUTH_BOX", "colour_shift", "identity_mask", "identity_psnr", "identity_psnr_frames", "identity_ssim",
           "identity_ssim_frames", "mean_colour", "mouth_box_pixels"]
