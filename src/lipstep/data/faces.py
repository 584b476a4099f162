"""Face detection and cropping for real videos and portraits, fully offline.

Detectors (``detector=``):

- ``"haar"``: OpenCV's bundled frontal-face Haar cascade, run on a grey copy downscaled to at most
  `HAAR_MAX_SIDE` pixels (milliseconds per frame). Score = number of merged neighbour detections.
- ``"dlib"``: dlib's HOG frontal-face detector (the optional ``faces`` extra); score = its SVM score.
- ``"none"``: no detection; the face is assumed to fill the frame (the synthetic world), so the crop
  is the centred square of side ``min(H, W)``.
- ``"auto"``: dlib when it imports, else haar.

A clip gets ONE square crop box (`clip_crop_box`): per-frame boxes jitter, and a moving crop would
teach the model camera shake. Boxes may extend past the frame; `crop_frames` fills the outside by
edge replication.
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import cv2
import numpy as np

from lipstep.errors import DataError

DETECTORS = ("auto", "haar", "dlib", "none")
HAAR_WINDOW = 24  # the frontal-face cascade's window side in pixels: the smallest face it can find
HAAR_MAX_SIDE = 320  # Haar runs on a grey image downscaled to this longest side


class Box(NamedTuple):
    """A detected face in source pixels (x, y = top-left corner)."""

    x: float
    y: float
    w: float
    h: float
    score: float


class CropBox(NamedTuple):
    """A square crop in source pixels; may extend outside the frame (negative x/y allowed)."""

    x: int
    y: int
    w: int
    h: int


@functools.lru_cache(maxsize=1)
def dlib_available() -> bool:
    """True when the optional dlib package imports."""
    try:
        import dlib  # noqa: F401  (optional extra lipstep[faces]: imported only where it is used)
    except ImportError:
        return False
    return True


def resolve_detector(detector: str) -> str:
    """Map ``"auto"`` to the best available detector; check the name."""
    if detector not in DETECTORS:
        raise DataError(f"unknown face detector '{detector}' (choose one of {', '.join(DETECTORS)})")
    if detector == "auto":
        return "dlib" if dlib_available() else "haar"
    if detector == "dlib" and not dlib_available():
        raise DataError("detector 'dlib' needs the optional dlib package: pip install 'lipstep[faces]'"
                        " (or use detector=haar)")
    return detector


@functools.lru_cache(maxsize=1)
def _haar():
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise DataError(f"could not load OpenCV's Haar cascade from {path}")
    return cascade


@functools.lru_cache(maxsize=1)
def _dlib_hog():
    import dlib  # optional extra lipstep[faces]

    return dlib.get_frontal_face_detector()


def _detect_haar(image: np.ndarray) -> list[Box]:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    scale = min(1.0, HAAR_MAX_SIDE / max(gray.shape))
    if min(gray.shape) * scale < HAAR_WINDOW:  # a sliver (e.g. 3000 x 2): no face fits the cascade's window
        return []
    if scale < 1.0:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    rects, neighbours = _haar().detectMultiScale2(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    return [Box(float(x / scale), float(y / scale), float(w / scale), float(h / scale), float(n))
            for (x, y, w, h), n in zip(np.asarray(rects).reshape(-1, 4), np.asarray(neighbours).ravel())]


def _detect_dlib(image: np.ndarray) -> list[Box]:
    rects, scores, _ = _dlib_hog().run(np.ascontiguousarray(image), 0, 0.0)
    return [Box(float(r.left()), float(r.top()), float(r.width()), float(r.height()), float(s)) for r, s in zip(rects, scores)]


def detect_faces(image: np.ndarray, detector: str = "haar") -> list[Box]:
    """Faces in one RGB uint8 image ``[H, W, 3]``, in source pixels; empty for ``"none"``."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"detect_faces expects an RGB image [H, W, 3], got shape {image.shape}")
    name = resolve_detector(detector)
    if name == "none":
        return []
    return _detect_dlib(image) if name == "dlib" else _detect_haar(image)


def centre_box(height: int, width: int) -> CropBox:
    """The centred square of side ``min(height, width)``."""
    side = min(height, width)
    return CropBox((width - side) // 2, (height - side) // 2, side, side)


def _consensus(boxes: list[Box]) -> tuple[float, float, float] | None:
    """Median centre and size of per-frame boxes after dropping outliers (None if none agree)."""
    arr = np.array([(b.x + b.w / 2, b.y + b.h / 2, max(b.w, b.h)) for b in boxes], dtype=np.float64)
    med = np.median(arr, axis=0)
    # an outlier sits more than half a face away from the median centre or differs 1.5x in size
    near = np.hypot(arr[:, 0] - med[0], arr[:, 1] - med[1]) <= 0.5 * med[2]
    similar = (arr[:, 2] <= 1.5 * med[2]) & (arr[:, 2] >= med[2] / 1.5)
    kept = arr[near & similar]
    if len(kept) == 0:
        return None
    cx, cy, side = np.median(kept, axis=0)
    return float(cx), float(cy), float(side)


def clip_crop_box(frames: np.ndarray, detector: str = "auto", sample_every: int = 5, scale: float = 1.8,
                  shift_down: float = 0.1, min_hit_fraction: float = 0.2) -> CropBox | None:
    """One square crop box for a whole clip ``[T, H, W, 3]``, or None when no face is found.

    Detects on every `sample_every`-th frame, keeps the largest face per frame, drops outliers
    (median-based), and takes the median centre and size of the rest. The box side is
    ``scale * face size`` around the face centre moved down by ``shift_down * face size`` (to
    include the chin; the enlargement adds some hair). None when faces were found in fewer than
    `min_hit_fraction` of the sampled frames. ``detector="none"`` gives `centre_box`.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or len(frames) == 0:
        raise ValueError(f"clip_crop_box expects frames [T, H, W, 3] with T >= 1, got {frames.shape}")
    name = resolve_detector(detector)
    if name == "none":
        return centre_box(frames.shape[1], frames.shape[2])
    sampled = range(0, len(frames), max(1, sample_every))
    largest = []
    for t in sampled:
        found = detect_faces(frames[t], name)
        if found:
            # the largest face among the confident ones (weak hits are often background texture)
            best = max(b.score for b in found)
            largest.append(max((b for b in found if b.score >= 0.5 * best), key=lambda b: b.w * b.h))
    if not largest or len(largest) < min_hit_fraction * len(sampled):
        return None
    consensus = _consensus(largest)
    if consensus is None:
        return None
    cx, cy, face = consensus
    side = max(2, round(scale * face))
    cy += shift_down * face
    return CropBox(round(cx - side / 2), round(cy - side / 2), side, side)


def _crop_one(frame: np.ndarray, box: CropBox) -> np.ndarray:
    """The box's pixels of one frame; parts outside the frame repeat the nearest edge pixel."""
    h, w = frame.shape[:2]
    if box.x >= 0 and box.y >= 0 and box.x + box.w <= w and box.y + box.h <= h:
        return frame[box.y:box.y + box.h, box.x:box.x + box.w]
    rows = np.clip(np.arange(box.y, box.y + box.h), 0, h - 1)
    cols = np.clip(np.arange(box.x, box.x + box.w), 0, w - 1)
    return frame[rows[:, None], cols[None, :]]


def crop_frames(frames: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """Crop every frame of ``[T, H, W, 3]`` to `box` and resize: uint8 ``[T, size, size, 3]``.

    Out-of-frame parts are edge-replicated. Resizing uses area averaging when shrinking and
    bicubic interpolation when growing.
    """
    frames = np.asarray(frames)
    if box.w < 1 or box.h < 1:
        raise ValueError(f"crop box must be non-empty, got {box}")
    interp = cv2.INTER_AREA if size < max(box.w, box.h) else cv2.INTER_CUBIC
    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    for t, frame in enumerate(frames):
        crop = _crop_one(frame, box)
        if crop.shape[:2] == (size, size):
            out[t] = crop
        else:
            out[t] = cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=interp)
    return out


def portrait_box(image: np.ndarray, detector: str = "auto", scale: float = 1.8,
                 shift_down: float = 0.1) -> tuple[CropBox, bool]:
    """Crop box for a single portrait and whether a face was found (else the centre square)."""
    image = np.asarray(image)
    name = resolve_detector(detector)
    box = None if name == "none" else clip_crop_box(image[None], name, 1, scale, shift_down)
    if box is None:
        return centre_box(image.shape[0], image.shape[1]), name == "none"
    return box, True


def crop_portrait(image: np.ndarray, size: int, detector: str = "auto", *, strict: bool = False,
                  scale: float = 1.8, shift_down: float = 0.1, source: str = "the portrait") -> np.ndarray:
    """Face-centred square crop of one RGB image, resized: uint8 ``[size, size, 3]``.

    With no face found it falls back to the centred square and warns; with ``strict=True`` it
    raises `DataError` instead. Use `portrait_box` to get the found flag without a warning.
    ``source`` names the image in those messages (e.g. its file).
    """
    box, found = portrait_box(image, detector, scale, shift_down)
    if not found:
        if strict:
            raise DataError(f"no face found in {source} (use detector=none to crop the centre)")
        warnings.warn(f"no face found in {source}; using the centre square crop", stacklevel=2)
    return crop_frames(np.asarray(image)[None], box, size)[0]


def box_iou(a: CropBox | Box, b: CropBox | Box) -> float:
    """Intersection over union of two boxes."""
    ix = max(0.0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0.0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0


__all__ = [
    "DETECTORS",
    "Box",
    "CropBox",
    "box_iou",
    "centre_box",
    "clip_crop_box",
    "crop_frames",
    "crop_portrait",
    "detect_faces",
    "dlib_available",
    "portrait_box",
    "resolve_detector",
]
