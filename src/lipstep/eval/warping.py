"""Warping error (Lai et al., ECCV 2018, eq. 7): frame t+1 is warped back onto frame t with the forward optical
flow, and the squared RGB difference is averaged over pixels that are not occluded. Flow is OpenCV Farneback
on grayscale with TecoGAN's settings (pyramid 0.5, 3 levels, window 15, 3 iterations, poly_n 5, sigma 1.2)
instead of FlowNet2; occlusions by the forward-backward consistency test of Sundaram et al. 2010 (as in Lai
et al.), plus pixels whose flow leaves the frame. Frames as `lipstep.eval.frames.as_video` takes them.
"""

from __future__ import annotations

import cv2
import numpy as np

from lipstep.eval.frames import as_video, need_frames


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
    need_frames(v, 2, "warping_errors")
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


__all__ = ["farneback_flow", "warping_error", "warping_errors"]
