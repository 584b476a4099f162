"""Identity preservation: CSIM-style similarity of generated frames to the reference portrait.

**Metric** (metrics.md §3.2): the cosine similarity between the identity embedding of the reference
portrait and that of each generated frame, averaged over frames (`identity_similarity`); per whole
second for drift over long videos (`identity_per_second`). Published CSIM uses ArcFace embeddings
of faces aligned to 112 x 112 by a 5-point similarity transform; numbers are comparable only
between runs that use the same embedder (its ``name`` and ``sha256`` go into every report).

**Embedders** share one interface (`IdentityEmbedder`): ``name``, ``sha256`` and
``__call__(frames) -> float32 [N, D]`` with unit-norm rows. Frames are face-centred RGB crops,
channels last: uint8 ``[N, H, W, 3]`` (or float in [0, 1]), or one image ``[H, W, 3]``; anything
else is a `DataError` naming the problem (`check_frames`). Non-square crops are centre-cropped to a
square first. The embedders themselves (lipstep's own, ArcFace ONNX, dlib) are in
`lipstep.eval.identity_embedders`; face verification, which calibrates them on ground truth, in
`lipstep.eval.identity_verification`; training lipstep's own in `lipstep.eval.train_identity`.
"""

from __future__ import annotations

import math
import warnings
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from lipstep.errors import DataError, LipstepError

_CHUNK = 256                        # frames per embedder call in the metrics (bounded memory on long videos)

# ------------------------------------------------------------------------------------ input checks


def check_frames(frames, what: str) -> torch.Tensor:
    """Face crops as a tensor [N, H, W, 3], uint8 or float in [0, 1]; one image [H, W, 3] gets a batch axis.

    Not copied (read-only memory maps are fine); `DataError` naming the problem otherwise.
    """
    if isinstance(frames, torch.Tensor):
        t = frames.detach().cpu()
    else:
        a = np.asarray(frames)
        if not (a.dtype == np.uint8 or np.issubdtype(a.dtype, np.floating)):
            raise DataError(f"{what}: expected uint8 (0..255) or float (0..1) pixels, got dtype {a.dtype}")
        with warnings.catch_warnings():  # read-only arrays (memory-mapped shards) are fine: nothing writes to them
            warnings.filterwarnings("ignore", message=".*not writable.*", category=UserWarning)
            t = torch.from_numpy(np.ascontiguousarray(a))
    shape = tuple(t.shape)
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[-1] != 3:
        hint = " (channels first? move channels last)" if t.ndim == 4 and t.shape[1] == 3 else ""
        raise DataError(f"{what}: expected RGB frames [N, H, W, 3] or one image [H, W, 3], got shape {shape}{hint}")
    if t.shape[0] == 0 or min(t.shape[1:3]) < 8:
        raise DataError(f"{what}: need at least one frame of at least 8 x 8 pixels, got shape {shape}")
    if t.dtype == torch.uint8:
        return t
    if not t.is_floating_point():
        raise DataError(f"{what}: expected uint8 (0..255) or float (0..1) pixels, got dtype {t.dtype}")
    lo, hi = (float(v) for v in torch.aminmax(t))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise DataError(f"{what}: frames contain NaN or inf")
    if lo < -1e-3 or hi > 1 + 1e-3:
        hint = "; [-1, 1] input? use (x + 1) / 2" if lo < -1e-3 else "; 0..255 floats? pass uint8 or divide by 255"
        raise DataError(f"{what}: float frames must be in [0, 1], got range [{lo:.3g}, {hi:.3g}]{hint}")
    return t


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """Checked frames -> uint8 numpy [N, H, W, 3] (floats rounded)."""
    if t.dtype == torch.uint8:
        return t.numpy()
    return (t.float().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()


def centre_square(x, fraction: float = 1.0):
    """The centred square of side ``fraction * min(H, W)`` of frames [N, H, W, 3] (array or tensor; a view)."""
    h, w = x.shape[1:3]
    side = max(1, round(fraction * min(h, w)))
    top, left = (h - side) // 2, (w - side) // 2
    return x[:, top:top + side, left:left + side]


def unit_rows(e: np.ndarray, what: str) -> np.ndarray:
    """L2-normalise embeddings [N, D] to float32; a zero or non-finite row is an error."""
    e = np.asarray(e, np.float64)
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    if not np.isfinite(e).all() or (norms == 0).any():
        raise LipstepError(f"{what}: the model returned a zero or non-finite embedding")
    return (e / norms).astype(np.float32)


# ---------------------------------------------------------------------------------------- protocol


@runtime_checkable
class IdentityEmbedder(Protocol):
    """Face crops [N, H, W, 3] (uint8 RGB, or float in [0, 1]) or one [H, W, 3] -> unit-norm float32 [N, D]."""

    name: str       # recorded in reports, e.g. "lipstep-identity-v1", "arcface-onnx:w600k_r50.onnx"
    sha256: str     # of the weights file(s); "" for in-memory models

    def __call__(self, frames) -> np.ndarray: ...


def embed(embedder: IdentityEmbedder, frames) -> np.ndarray:
    """Embed in chunks of `_CHUNK` frames; checks what the embedder returns."""
    out = []
    for first in range(0, len(frames), _CHUNK):
        chunk = frames[first:first + _CHUNK]
        e = np.asarray(embedder(chunk), np.float32)
        if e.ndim != 2 or len(e) != len(chunk):
            raise LipstepError(f"{embedder.name}: expected embeddings [{len(chunk)}, D], got shape {e.shape}")
        out.append(e)
    return np.concatenate(out)


# ----------------------------------------------------------------------------------------- metrics


def identity_cosines(embedder: IdentityEmbedder, reference, frames) -> np.ndarray:
    """Cosine similarity of each frame to the reference portrait: float64 [N]."""
    ref = check_frames(reference, "identity reference")
    if len(ref) != 1:
        raise DataError(f"identity reference: expected one portrait [H, W, 3], got {len(ref)} images")
    video = check_frames(frames, "identity frames")
    r = unit_rows(embed(embedder, ref), embedder.name)[0].astype(np.float64)
    e = unit_rows(embed(embedder, video), embedder.name).astype(np.float64)
    return e @ r


def identity_similarity(embedder: IdentityEmbedder, reference, frames) -> float:
    """CSIM: the mean cosine similarity of the frames' identity embeddings to the reference's (metrics.md §3.2)."""
    return float(identity_cosines(embedder, reference, frames).mean())


def identity_per_second(embedder: IdentityEmbedder, reference, frames, fps: float) -> np.ndarray:
    """Mean cosine to the reference per whole second of video: float64 [floor(N / fps)] (identity drift).

    Second k averages frames i with ``floor(i / fps) == k``; a trailing partial second is left out, so
    a video shorter than one second gives an empty array.
    """
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"identity_per_second needs a positive frame rate, got {fps}")
    video = check_frames(frames, "identity frames")
    second = np.floor(np.arange(len(video)) / fps + 1e-9).astype(np.int64)   # whole second of each frame
    seconds = int(np.floor(len(video) / fps + 1e-9))
    if seconds < 1:
        return np.zeros(0)
    keep = int((second < seconds).sum())                                     # a prefix: second is non-decreasing
    cos = identity_cosines(embedder, reference, video[:keep])
    return np.bincount(second[:keep], weights=cos, minlength=seconds) / np.bincount(second[:keep], minlength=seconds)


__all__ = ["IdentityEmbedder", "centre_square", "check_frames", "embed", "identity_cosines", "identity_per_second",
           "identity_similarity", "to_uint8", "unit_rows"]
