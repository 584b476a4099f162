"""Identity preservation: CSIM-style similarity of generated frames to the reference portrait.

**Metric** (metrics.md §3.2): the cosine similarity between the identity embedding of the reference
portrait and that of each generated frame, averaged over frames (`identity_similarity`); per whole
second for drift over long videos (`identity_per_second`). Published CSIM uses ArcFace embeddings
of faces aligned to 112 x 112 by a 5-point similarity transform; numbers are comparable only
between runs that use the same embedder (its ``name`` and ``sha256`` go into every report).

**Embedders** share one interface (`IdentityEmbedder`): ``name``, ``sha256`` and
``__call__(frames) -> float32 [N, D]`` with unit-norm rows. Frames are face-centred RGB crops,
channels last: uint8 ``[N, H, W, 3]`` (or float in [0, 1]), or one image ``[H, W, 3]``; anything
else is a `DataError` naming the problem. Non-square crops are centre-cropped to a square first.

- `OwnIdentity(dir)`: lipstep's own `IdentityNet`, trained by `train_identity` on the train-split
  identities of a prepared directory (``lipstep-identity-v1``; internal: compare runs with it, never
  with published CSIM).
- `ArcFaceONNX(path)`: an insightface recognition model (e.g. ``w600k_r50.onnx``) on onnxruntime,
  from a local file only (Tier 1, metrics.md §5.1).
- `DlibDescriptor()`: dlib's 128-d face descriptor (``dlib_face_recognition_resnet_model_v1.dat``).

`resolve_identity_embedders` builds the ones that are available and says why the others were skipped.

**Training** (`train_identity`): a small CNN on the whole face crop, trained as a classifier over
the train identities with a cosine-margin softmax: with unit-norm embedding x and class centres W_j,
cos θ_j = x·W_j / |W_j| and the loss is the cross-entropy of ``s * cos θ_j`` where the true class
gets ``cos θ_y - m`` (CosFace, Wang et al. 2018, eq. 4) or ``cos(θ_y + m)`` (ArcFace, Deng et al.
2019, eq. 3). Light augmentation (shift, zoom, rotation, brightness/contrast, blur, noise) keeps it
robust to generated and decoded frames, and a new backdrop outside a centred face ellipse (a random
colour field, or the old one recoloured) keeps it from identifying people by background and clothes. Held-out verification on
identities never seen in training (val split, else test) is written to ``train.json``:
`verification_metrics` over same- vs different-identity frame pairs (ROC AUC, accuracy at the best
threshold, EER, mean cosines), on clean frames, with the second frame of each pair blurred +
JPEG-compressed (``degraded``), and `background_probe` (``background``: faces wearing another
identity's backdrop; on the synthetic world, where every identity has its own backdrop, even raw
pixels verify perfectly on clean frames, so this is the number that shows the encoder looks at faces).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipstep.config import check, load_config, save_config, to_dict
from lipstep.errors import ConfigError, DataError, LipstepError, MissingDependency

log = logging.getLogger(__name__)

OWN_NAME = "lipstep-identity-v1"
ARCFACE_FILE = "w600k_r50.onnx"     # insightface buffalo_l recognition model
DLIB_NAME = "dlib-resnet-v1"
WEIGHTS_NAME = "model.safetensors"
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


def _to_uint8(t: torch.Tensor) -> np.ndarray:
    """Checked frames -> uint8 numpy [N, H, W, 3] (floats rounded)."""
    if t.dtype == torch.uint8:
        return t.numpy()
    return (t.float().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()


def _centre_square(x, fraction: float = 1.0):
    """The centred square of side ``fraction * min(H, W)`` of frames [N, H, W, 3] (array or tensor; a view)."""
    h, w = x.shape[1:3]
    side = max(1, round(fraction * min(h, w)))
    top, left = (h - side) // 2, (w - side) // 2
    return x[:, top:top + side, left:left + side]


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, S, S, 3] -> [N, size, size, 3]: OpenCV area filter when shrinking, bilinear when enlarging."""
    import cv2

    if x.shape[1] == size:
        return x
    interp = cv2.INTER_AREA if x.shape[1] > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(np.ascontiguousarray(f), (size, size), interpolation=interp) for f in x])


def _unit_rows(e: np.ndarray, what: str) -> np.ndarray:
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


def _embed(embedder: IdentityEmbedder, frames) -> np.ndarray:
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
    r = _unit_rows(_embed(embedder, ref), embedder.name)[0].astype(np.float64)
    e = _unit_rows(_embed(embedder, video), embedder.name).astype(np.float64)
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


# ------------------------------------------------------------------------------------ verification


def _roc(same: np.ndarray, diff: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds descending, TPR, FPR) for "accept if score >= threshold"; first point is (+inf, 0, 0)."""
    scores = np.concatenate([same, diff])
    positive = np.concatenate([np.ones(len(same)), np.zeros(len(diff))])
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]   # last index of each distinct score
    tpr = np.r_[0.0, np.cumsum(positive)[last] / len(same)]
    fpr = np.r_[0.0, np.cumsum(1 - positive)[last] / len(diff)]
    return np.r_[np.inf, scores[last]], tpr, fpr


def verification_metrics(same, diff) -> dict:
    """Face-verification summary of similarity scores of same-identity and different-identity pairs.

    ``auc``: ROC AUC = P(same > diff) + P(same == diff) / 2 (Mann-Whitney). ``accuracy``: the best
    (TP + TN) / pairs over thresholds ("same" if score >= ``threshold``), LFW-style when the two sets
    have equal size. ``eer``: the equal error rate, where the false-accept rate equals the false-reject
    rate (linear interpolation on the ROC). ``same_mean`` / ``diff_mean``: mean scores.
    """
    from scipy.stats import rankdata

    same, diff = np.asarray(same, np.float64).ravel(), np.asarray(diff, np.float64).ravel()
    if len(same) == 0 or len(diff) == 0:
        raise DataError(f"verification needs same- and different-identity pairs, got {len(same)} and {len(diff)}")
    ranks = rankdata(np.concatenate([same, diff]))
    auc = (ranks[:len(same)].sum() - len(same) * (len(same) + 1) / 2) / (len(same) * len(diff))
    thresholds, tpr, fpr = _roc(same, diff)
    correct = tpr * len(same) + (1 - fpr) * len(diff)
    best = int(np.argmax(correct))
    gap = (1 - tpr) - fpr                          # FRR - FAR: from 1 down to -1
    k = int(np.argmax(gap <= 0))
    t = gap[k - 1] / (gap[k - 1] - gap[k]) if k > 0 else 0.0
    eer = fpr[k - 1] + t * (fpr[k] - fpr[k - 1]) if k > 0 else 0.0
    return {"auc": float(auc), "accuracy": float(correct[best] / (len(same) + len(diff))),
            "threshold": float(thresholds[best]), "eer": float(eer), "same_mean": float(same.mean()),
            "diff_mean": float(diff.mean()), "pairs": len(same) + len(diff)}


def degrade_frames(frames: np.ndarray, *, sigma: float = 0.015, jpeg_quality: int = 40) -> np.ndarray:
    """A fixed "generated and decoded" degradation: Gaussian blur (sigma = `sigma` x side) + JPEG, uint8 RGB."""
    import cv2

    out = []
    for f in frames:
        f = cv2.GaussianBlur(np.ascontiguousarray(f), (0, 0), sigma * f.shape[1])
        _, buf = cv2.imencode(".jpg", f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])  # OpenCV wants BGR
        out.append(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return np.stack(out)


def swap_background(frames: np.ndarray, donors: np.ndarray) -> np.ndarray:
    """Frames [N, H, W, 3] with everything outside a centred face ellipse (half-axes 0.5 x 0.75 of the
    half-side, soft edge) taken from `donors` (same shape): the face of one, the backdrop of the other."""
    x, d = np.asarray(frames, np.float32), np.asarray(donors, np.float32)
    if x.ndim != 4 or x.shape != d.shape:
        raise DataError(f"swap_background: frames and donors must both be [N, H, W, 3], got {x.shape}, {d.shape}")
    mask = _face_masks(torch.tensor([0.5]), torch.tensor([0.75]), *x.shape[1:3])[0, 0].numpy()[None, :, :, None]
    return (mask * x + (1 - mask) * d).round().clip(0, 255).astype(np.uint8)


def _balanced(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Equal-size random subsets of two score sets (the larger one is subsampled)."""
    k = min(len(a), len(b))
    return (a if len(a) == k else rng.choice(a, k, replace=False)), (b if len(b) == k else rng.choice(b, k, replace=False))


def verify_frames(embedder: IdentityEmbedder, frames: np.ndarray, labels: np.ndarray, *,
                  transform: Callable[[np.ndarray], np.ndarray] | None = None, seed: int = 0) -> dict:
    """`verification_metrics` over all frame pairs (i < j) of labelled frames [N, H, W, 3], balanced.

    With a `transform` (uint8 frames -> uint8 frames, e.g. `degrade_frames`), pair (i, j) compares
    frame i with the transformed frame j, as CSIM compares a clean portrait with generated frames.
    The larger of the same / different pair sets is subsampled (``seed``) to the size of the other.
    """
    labels = np.asarray(labels)
    e = _unit_rows(_embed(embedder, frames), embedder.name)
    f = e if transform is None else _unit_rows(
        _embed(embedder, transform(_to_uint8(check_frames(frames, "frames")))), embedder.name)
    i, j = np.triu_indices(len(e), 1)
    sims = np.einsum("nd,nd->n", e[i], f[j]).astype(np.float64)
    same = labels[i] == labels[j]
    return verification_metrics(*_balanced(sims[same], sims[~same], np.random.default_rng(seed)))


def background_probe(embedder: IdentityEmbedder, frames: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> dict:
    """Verification where the background misleads: `verification_metrics` of cos(frame i, frame j') with j'
    frame j wearing the backdrop of identity ``(label_j + 1) mod K`` (`swap_background`; labels 0..K-1).

    Same-identity pairs (i != j) then differ in backdrop, and the different-identity pairs kept are the
    ones where j' wears i's own backdrop: an embedder that identifies people by background and clothes
    scores below 0.5 AUC (raw pixels on the synthetic world: ~0.2), one that looks at faces near 1.
    """
    labels = np.asarray(labels)
    k = int(labels.max()) + 1
    if k < 2 or set(labels.tolist()) != set(range(k)):
        raise DataError(f"background_probe needs labels 0..K-1 with K >= 2, got {sorted(set(labels.tolist()))}")
    first = {y: int(np.flatnonzero(labels == y)[0]) for y in range(k)}
    x = _to_uint8(check_frames(frames, "frames"))
    swapped = swap_background(x, x[[first[(y + 1) % k] for y in labels]])
    sims = _unit_rows(_embed(embedder, x), embedder.name) @ _unit_rows(_embed(embedder, swapped), embedder.name).T
    same = (labels[:, None] == labels[None, :]) & ~np.eye(len(labels), dtype=bool)
    diff = labels[:, None] == (labels[None, :] + 1) % k
    return verification_metrics(*_balanced(sims[same].astype(np.float64), sims[diff].astype(np.float64),
                                           np.random.default_rng(seed)))


class _IdentityFrames:
    """Frames (memory-mapped) of some clips of a prepared directory, grouped by identity."""

    def __init__(self, root: Path, rows: list[dict]):
        from lipstep.data.dataset import open_shard

        self.clips, ids = [], []
        for row in rows:
            if "identity" not in row:
                raise DataError(f"{root / 'manifest.jsonl'}: clip {row.get('id', row['shard'])} has no identity")
            path = root / row["shard"]
            frames = open_shard(path, ("frames",)).get("frames")
            if frames is None or frames.ndim != 4 or frames.shape[-1] != 3:
                raise DataError(f"shard {path} has no frames [T, S, S, 3]")
            if len(frames):
                self.clips.append(frames)
                ids.append(str(row["identity"]))
        self.names = sorted(set(ids))
        self.clips_of = [[c for c, n in enumerate(ids) if n == name] for name in self.names]
        sizes = {c.shape[1:3] for c in self.clips}
        if len(sizes) > 1:
            raise DataError(f"{root}: frames must all have one size, found {sorted(sizes)}")
        self.size = sizes.pop()[0] if sizes else 0

    def sample(self, rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Identities uniformly, then a random clip and frame of each: uint8 [B, S, S, 3], labels [B]."""
        labels = rng.integers(len(self.names), size=batch)
        frames = []
        for y in labels:
            clip = self.clips[self.clips_of[y][rng.integers(len(self.clips_of[y]))]]
            frames.append(clip[rng.integers(len(clip))])
        return np.stack(frames), labels

    def evenly(self, per_identity: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to `per_identity` evenly spaced frames of each identity (over its clips in order), with labels."""
        frames, labels = [], []
        for y, clips in enumerate(self.clips_of):
            index = [(c, t) for c in clips for t in range(len(self.clips[c]))]
            keep = np.unique(np.linspace(0, len(index) - 1, min(per_identity, len(index))).round().astype(np.int64))
            frames += [self.clips[index[k][0]][index[k][1]] for k in keep]
            labels += [y] * len(keep)
        return np.stack(frames), np.array(labels)


def verify_identities(embedder: IdentityEmbedder, prepared_dir: str | os.PathLike,
                      splits: tuple[str, ...] = ("val",), *, frames_per_identity: int = 32,
                      transform: Callable[[np.ndarray], np.ndarray] | None = None, seed: int = 0) -> dict:
    """Verification (`verify_frames`) on evenly spaced frames of the identities in `splits` of a prepared dir.

    Calibrates any embedder on ground truth (the ceiling to print next to model CSIM); adds ``split``,
    ``identities`` and ``frames`` to the result.
    """
    from lipstep.data.dataset import read_manifest

    root = Path(prepared_dir)
    rows = [r for r in read_manifest(root) if r.get("split") in splits and int(r.get("frames", 0)) > 0]
    data = _IdentityFrames(root, rows)
    if len(data.names) < 2:
        raise DataError(f"{root}: verification needs at least 2 identities in split(s) {'+'.join(splits)}, "
                        f"found {len(data.names)}")
    frames, labels = data.evenly(frames_per_identity)
    result = verify_frames(embedder, frames, labels, transform=transform, seed=seed)
    return {"split": "+".join(splits), "identities": len(data.names), "frames": len(frames), **result}


# ------------------------------------------------------------------------------------- IdentityNet


@dataclass
class IdentityNetConfig:
    name: str = OWN_NAME            # reported embedder name; bump on any change to the recipe
    image_size: int = 64            # S: input side (set from the data by training); other sizes are resized
    width: int = 32                 # channels of the stem; doubled at each level, capped at 8 x width
    levels: int = 4                 # stride-2 convs (stem + stages); the last map is S / 2^levels wide
    embed_dim: int = 128            # size of the L2-normalised embeddings

    def validate(self) -> None:
        check(self.levels >= 1, f"levels must be >= 1, got {self.levels}")
        unit = 2 ** self.levels
        check(self.image_size >= unit and self.image_size % unit == 0,
              f"image_size must be a positive multiple of 2**levels = {unit}, got {self.image_size}")
        check(self.width >= 1 and self.embed_dim >= 2, f"width must be >= 1 and embed_dim >= 2, got "
              f"{self.width}, {self.embed_dim}")


def _conv_bn(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class IdentityNet(nn.Module):
    """Face crops [B, 3, S, S] in [-1, 1] -> unit-norm identity embeddings [B, E].

    A stride-2 stem conv, then ``levels - 1`` stages of two 3x3 conv-BN-ReLU (the first with stride
    2), then the flattened last map -> Linear -> BatchNorm1d (ArcFace's output block: the spatial
    layout of the face is kept). BatchNorm: run in eval mode, so a frame embeds the same alone or in
    a batch.
    """

    def __init__(self, cfg: IdentityNetConfig | None = None):
        super().__init__()
        cfg = cfg or IdentityNetConfig()
        cfg.validate()
        self.cfg = cfg
        chans = [cfg.width * 2 ** min(i, 3) for i in range(cfg.levels)]
        layers = [_conv_bn(3, chans[0], 2)]                                  # stem: S -> S/2
        for c_in, c_out in itertools.pairwise(chans):
            layers += [_conv_bn(c_in, c_out, 2), _conv_bn(c_out, c_out, 1)]
        self.features = nn.Sequential(*layers)
        side = cfg.image_size >> cfg.levels
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(chans[-1] * side * side, cfg.embed_dim),
                                  nn.BatchNorm1d(cfg.embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.cfg.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, s, s):
            raise ValueError(f"IdentityNet expects [B, 3, {s}, {s}], got {list(x.shape)}")
        return F.normalize(self.head(self.features(x)), dim=-1)    # [B, C, S/2^L, S/2^L] -> [B, E]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _is_identity_dir(path: Path) -> bool:
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8")).get("_type") == "IdentityNetConfig"
    except (OSError, ValueError, AttributeError):
        return False


def _check_replaceable(out: Path) -> None:
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or _is_identity_dir(out))):
        raise LipstepError(f"{out} exists and is not a lipstep identity-encoder directory; refusing to overwrite it")


def save_identity(model: IdentityNet, directory: str | os.PathLike, *, train: dict | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` (and ``train.json`` if given) as one atomic directory."""
    from safetensors.torch import save_file

    from lipstep.fsutil import atomic_dir, write_json_atomic

    directory = Path(directory)
    _check_replaceable(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_dir(directory) as tmp:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "name": model.cfg.name})
        save_config(model.cfg, tmp)
        if train is not None:
            write_json_atomic(tmp / "train.json", train)
    return directory


def load_identity(directory: str | os.PathLike) -> IdentityNet:
    """An `IdentityNet` saved by `save_identity` / `train_identity`, in eval mode and frozen."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not directory.is_dir():
        raise LipstepError(f"{directory}: identity-encoder directory not found (train one with train_identity)")
    config = directory / "config.json"
    if not config.is_file():
        raise LipstepError(f"{directory} is not an identity-encoder directory (no config.json)")
    if not _is_identity_dir(directory):
        raise LipstepError(f"{config} is not an IdentityNetConfig; {directory} is not an identity-encoder directory")
    try:
        cfg = load_config(IdentityNetConfig, config)
    except ConfigError as e:
        raise LipstepError(f"{config}: {e}") from None
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise LipstepError(f"{directory} has an identity-encoder config.json but no {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own types for a bad file
        raise LipstepError(f"{weights}: cannot read ({' '.join(str(e).split())[:160]})") from None
    model = IdentityNet(cfg)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches raise even when strict=False
        raise LipstepError(f"{weights} does not match {config} ({' '.join(str(e).split())[:200]})") from None
    if missing or unexpected:
        raise LipstepError(f"{weights} does not match {config}: {len(missing)} missing keys {missing[:3]}, "
                           f"{len(unexpected)} unexpected {unexpected[:3]}")
    return model.eval().requires_grad_(False)


# -------------------------------------------------------------------------------------- embedders


def _file_sha256(path: Path) -> str:
    from lipstep.eval.fidelity import file_sha256

    return file_sha256(path)


def _net_input(frames: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (or [0, 1] float) [N, S', S', 3] -> float [N, 3, size, size] in [-1, 1] (bilinear, antialiased)."""
    t = torch.as_tensor(frames)
    x = (t.float() / 255.0 if t.dtype == torch.uint8 else t.float().clamp(0, 1)).permute(0, 3, 1, 2)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x * 2.0 - 1.0


class OwnIdentity:
    """lipstep's own identity embeddings (`IdentityNet`), from a `train_identity` directory.

    Crops are centre-squared and resized to the net's ``image_size`` (bilinear, antialiased).
    An internal embedding space: compare lipstep runs with it, not with published CSIM.
    """

    def __init__(self, path: str | os.PathLike, *, batch_size: int = 128,
                 device: str | torch.device | None = None):
        self.path = Path(path)
        self._setup(load_identity(self.path), batch_size, device)
        self.sha256 = _file_sha256(self.path / WEIGHTS_NAME)

    @classmethod
    def from_model(cls, model: IdentityNet, *, batch_size: int = 128) -> OwnIdentity:
        """Wrap an in-memory net (e.g. during training); put in eval mode, ``sha256`` empty."""
        self = cls.__new__(cls)
        self.path, self.sha256 = None, ""
        self._setup(model, batch_size, None)
        return self

    def _setup(self, model: IdentityNet, batch_size: int, device) -> None:
        self.model = model.eval()
        if device is not None:
            self.model.to(device)
        self.name, self.batch_size = model.cfg.name, batch_size

    @torch.inference_mode()
    def __call__(self, frames) -> np.ndarray:
        t = check_frames(frames, type(self).__name__)
        device = next(self.model.parameters()).device
        t = _centre_square(t)
        out = [self.model(_net_input(c, self.model.cfg.image_size).to(device)).float().cpu()
               for c in t.split(self.batch_size)]
        return F.normalize(torch.cat(out), dim=-1).numpy()


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependency("ArcFaceONNX needs onnxruntime: pip install 'lipstep[arcface]'") from None
    return onnxruntime


def _arcface_normalisation(path: Path) -> tuple[float, float]:
    """(mean, std) as insightface chooses them: MXNet-converted models that start with Sub and Mul nodes
    normalise inside the graph (0, 1); all others expect (x - 127.5) / 127.5. Without the onnx package
    the graph cannot be read and the common (127.5, 127.5) is assumed."""
    try:
        import onnx
    except ImportError:
        log.info("identity: onnx not installed; assuming %s expects (x - 127.5) / 127.5", path.name)
        return 127.5, 127.5
    try:
        names = [node.name for node in onnx.load(str(path), load_external_data=False).graph.node[:8]]
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for a bad file
        raise LipstepError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return (0.0, 1.0) if has_sub and has_mul else (127.5, 127.5)


def _find_arcface(path: Path) -> Path:
    if path.is_dir():
        if (path / ARCFACE_FILE).is_file():
            return path / ARCFACE_FILE
        found = sorted(p.name for p in path.glob("*.onnx"))
        raise LipstepError(f"{path}: no {ARCFACE_FILE} in this directory (found {found or 'no .onnx files'}); "
                           "pass the recognition model file itself")
    if not path.is_file():
        raise LipstepError(f"ArcFace ONNX model {path} not found (e.g. insightface's {ARCFACE_FILE}; "
                           "lipstep never downloads it)")
    return path


class ArcFaceONNX:
    """ArcFace embeddings from an insightface recognition model (e.g. ``w600k_r50.onnx``) on onnxruntime.

    Preprocessing as insightface's ``ArcFaceONNX.get_feat``: RGB (insightface reads BGR with OpenCV
    and swaps to RGB in ``blobFromImages``), NCHW float32, ``(x - 127.5) / 127.5`` (MXNet-converted
    models whose graph starts with Sub/Mul nodes get raw 0..255, as insightface decides), at the
    model's input size (112 x 112).

    **Alignment approximation:** insightface first warps each face onto a 112 x 112 template by a
    5-point similarity transform (eyes, nose, mouth corners). lipstep's crops are already
    face-centred and no landmark detector is assumed, so instead the centred square of side
    ``crop x min(H, W)`` is taken and resized to 112 (OpenCV area filter when shrinking, bilinear
    when enlarging). The template frames the face more tightly than lipstep's crops (prepare's
    ``crop_scale`` is 1.8 face sizes), so ``crop`` around 0.6-0.7 is closer to ArcFace's framing;
    scores depend on it, so it is part of ``name`` when not 1. Expect lower absolute similarities
    than published CSIM; compare runs at the same setting only. Float frames are quantised to uint8.

    ``sha256``: the expected SHA-256 of the file (full hex digest, or a prefix of >= 8 characters).
    ``threads``: onnxruntime intra-op threads (default: torch's thread count).
    """

    def __init__(self, path: str | os.PathLike, sha256: str | None = None, *, crop: float = 1.0,
                 batch_size: int = 32, threads: int | None = None, providers: list[str] | None = None):
        ort = _import_onnxruntime()
        if not 0.1 <= crop <= 1.0:
            raise ValueError(f"ArcFaceONNX: crop must be in [0.1, 1], got {crop}")
        if sha256 is not None and len(sha256) < 8:
            raise ValueError(f"ArcFaceONNX: give at least 8 hex digits of the expected SHA-256, got {sha256!r}")
        self.path = _find_arcface(Path(path))
        self.sha256 = _file_sha256(self.path)
        if sha256 is not None and not self.sha256.startswith(sha256.lower()):
            raise LipstepError(f"{self.path}: SHA-256 {self.sha256[:16]}... does not match the expected "
                               f"{sha256[:16]}... (wrong or corrupted model file)")
        self.input_mean, self.input_std = _arcface_normalisation(self.path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for a bad file
            raise LipstepError(f"{self.path}: onnxruntime cannot load it ({' '.join(str(e).split())[:160]})") from None
        self.input_name, self.size = self._input_spec()
        self.crop, self.batch_size = crop, batch_size
        self.name = f"arcface-onnx:{self.path.name}" + (f"@crop{crop:g}" if crop != 1.0 else "")

    def _input_spec(self) -> tuple[str, int]:
        inputs = self.session.get_inputs()
        shape = inputs[0].shape if len(inputs) == 1 else []
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise LipstepError(f"{self.path}: expected one input [N, 3, H, W] (an ArcFace recognition model), got "
                               f"{[(i.name, i.shape) for i in inputs]}")
        h, w = inputs[0].shape[2:4]
        if isinstance(h, int) and isinstance(w, int) and h != w:
            raise LipstepError(f"{self.path}: expected a square input, got {h} x {w}")
        return inputs[0].name, h if isinstance(h, int) else 112

    def preprocess(self, frames) -> np.ndarray:
        """Checked frames -> the model input float32 [N, 3, size, size] (see the class docstring)."""
        x = _resize(_centre_square(_to_uint8(check_frames(frames, type(self).__name__)), self.crop), self.size)
        x = x.astype(np.float32).transpose(0, 3, 1, 2)                       # [N, 3, size, size], RGB
        return np.ascontiguousarray((x - self.input_mean) / self.input_std, dtype=np.float32)

    def __call__(self, frames) -> np.ndarray:
        x = self.preprocess(frames)
        out = []
        for first in range(0, len(x), self.batch_size):
            e = self.session.run(None, {self.input_name: x[first:first + self.batch_size]})[0]
            e = np.asarray(e).reshape(len(x[first:first + self.batch_size]), -1)
            out.append(e)
        return _unit_rows(np.concatenate(out), self.name)


class DlibDescriptor:
    """dlib's 128-d face descriptor (``dlib_face_recognition_resnet_model_v1.dat``), normalised to unit length.

    Model files come from the ``face_recognition_models`` package (``pip install 'lipstep[faces]'``)
    unless given. For each crop, the 5-point shape predictor runs with the crop's centred square of
    side ``box_fraction x min(H, W)`` as the face box (the whole crop by default; no detector is
    run), then ``compute_face_descriptor`` aligns the 150 x 150 chip and embeds it.
    """

    name = DLIB_NAME

    def __init__(self, *, shape_predictor: str | os.PathLike | None = None,
                 recognition_model: str | os.PathLike | None = None, box_fraction: float = 1.0, jitters: int = 0):
        try:
            import dlib
        except ImportError:
            raise MissingDependency("DlibDescriptor needs dlib: pip install 'lipstep[faces]'") from None
        if shape_predictor is None or recognition_model is None:
            try:
                import face_recognition_models as frm
            except ImportError:
                raise MissingDependency("DlibDescriptor needs the dlib model files of face_recognition_models: "
                                        "pip install 'lipstep[faces]' (or pass both model paths)") from None
            shape_predictor = shape_predictor or frm.pose_predictor_five_point_model_location()
            recognition_model = recognition_model or frm.face_recognition_model_location()
        paths = [Path(shape_predictor), Path(recognition_model)]
        for p in paths:
            if not p.is_file():
                raise LipstepError(f"dlib model file {p} not found")
        if not 0.1 <= box_fraction <= 1.0:
            raise ValueError(f"DlibDescriptor: box_fraction must be in [0.1, 1], got {box_fraction}")
        self._dlib = dlib
        self.predictor = dlib.shape_predictor(str(paths[0]))
        self.model = dlib.face_recognition_model_v1(str(paths[1]))
        self.sha256 = _file_sha256(paths[1])
        self.box_fraction, self.jitters = box_fraction, jitters

    def __call__(self, frames) -> np.ndarray:
        x = _centre_square(_to_uint8(check_frames(frames, type(self).__name__)))
        side = x.shape[1]
        inner = round(self.box_fraction * side)
        lo = (side - inner) // 2
        box = self._dlib.rectangle(lo, lo, lo + inner - 1, lo + inner - 1)
        out = []
        for f in x:
            f = np.ascontiguousarray(f)
            shape = self.predictor(f, box)
            out.append(np.asarray(self.model.compute_face_descriptor(f, shape, self.jitters), np.float64))
        return _unit_rows(np.stack(out), self.name)


def resolve_identity_embedders(own_dir: str | os.PathLike | None = None, arcface: str | os.PathLike | None = None,
                               dlib: bool = False, *, arcface_sha256: str | None = None,
                               ) -> tuple[list[IdentityEmbedder], list[tuple[str, str]]]:
    """The identity embedders that can run, and ``(name, reason)`` for each one skipped.

    Missing files, missing optional packages and bad weights skip an embedder (never fail the
    run, metrics.md §5.2); nothing is downloaded.
    """
    found: list[IdentityEmbedder] = []
    skipped: list[tuple[str, str]] = []
    choices = [
        (OWN_NAME, own_dir, lambda: OwnIdentity(own_dir),
         "no identity-encoder directory given (train one with train_identity)"),
        ("arcface-onnx", arcface, lambda: ArcFaceONNX(arcface, arcface_sha256),
         f"no ArcFace ONNX file given (e.g. insightface's {ARCFACE_FILE})"),
        (DLIB_NAME, dlib or None, DlibDescriptor, "not requested"),
    ]
    for name, wanted, build, reason in choices:
        if wanted is None:
            skipped.append((name, reason))
            continue
        try:
            found.append(build())
        except LipstepError as e:
            log.warning("identity: skipping %s: %s", name, e)
            skipped.append((name, str(e)))
    return found, skipped


# ---------------------------------------------------------------------------------------- training


@dataclass
class IdentityAugmentConfig:
    shift: float = 0.05             # max translation, fraction of the side
    scale: float = 0.06             # max relative zoom in or out
    rotate: float = 4.0             # max rotation, degrees
    brightness: float = 0.08        # max brightness offset, fraction of the full range
    contrast: float = 0.15          # max relative contrast change
    blur_prob: float = 0.3          # chance of a Gaussian blur ...
    blur_sigma: float = 1.2         # ... with sigma up to this many pixels (at the net's resolution)
    noise_prob: float = 0.3         # chance of Gaussian noise ...
    noise_std: float = 0.03         # ... with std up to this fraction of the full range
    background_prob: float = 0.7    # chance of a new background outside a centred face ellipse

    def validate(self) -> None:
        for name in ("shift", "scale", "brightness", "contrast", "blur_prob", "noise_prob", "background_prob"):
            check(0.0 <= getattr(self, name) <= 1.0, f"augment.{name} must be in [0, 1], got {getattr(self, name)}")
        check(0.0 <= self.rotate <= 45.0, f"augment.rotate must be in 0..45 degrees, got {self.rotate}")
        check(self.blur_sigma >= 0 and self.noise_std >= 0, "augment.blur_sigma and noise_std must be >= 0")


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of [B, C, H, W] with one sigma per image [B] (~0 leaves it unchanged)."""
    b, c, h, w = x.shape
    r = 3
    d = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-d ** 2 / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)              # [B*C, 2r+1]
    y = F.pad(x.reshape(1, b * c, h, w), (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)                      # rows
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)                      # columns
    return y.reshape(b, c, h, w)


def _face_masks(rx: torch.Tensor, ry: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Soft centred ellipses [B, 1, H, W]: ~1 inside half-axes (rx, ry) [B] (fractions of the half-width and
    half-height), 0 outside."""
    u, v = torch.linspace(-1, 1, width), torch.linspace(-1, 1, height)
    r = torch.sqrt((u[None, None, :] / rx[:, None, None]) ** 2 + (v[None, :, None] / ry[:, None, None]) ** 2)
    return torch.sigmoid((1.0 - r) * 12.0)[:, None]


def _new_background(x: torch.Tensor, uniform, replace: torch.Tensor) -> torch.Tensor:
    """Another background for faces [B, 3, S, S]: a smooth random colour field where `replace` [B, 1, 1, 1]
    is 1, else the image with a random per-channel gain and offset."""
    b, s = len(x), x.shape[-1]
    field = 0.7 * uniform(b, 3, 1, 1) + 0.4 * F.interpolate(uniform(b, 3, 4, 4), size=(s, s), mode="bilinear",
                                                            align_corners=False)
    recoloured = x * (1 + 0.4 * uniform(b, 3, 1, 1)) + 0.4 * uniform(b, 3, 1, 1)
    return replace * field + (1 - replace) * recoloured


def augment(x: torch.Tensor, cfg: IdentityAugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random training augmentation of faces [B, 3, S, S] in [-1, 1] (see `IdentityAugmentConfig`)."""
    b, s = len(x), x.shape[-1]

    def uniform(*shape) -> torch.Tensor:
        return torch.rand(*shape, generator=generator) * 2 - 1

    def chance(p: float) -> torch.Tensor:
        return (torch.rand(b, generator=generator) < p).float()

    # Background: outside a face ellipse of random size, a new background (a smooth random field, or
    # the old one recoloured), so that people are not identified by their backdrop and clothes.
    mask = _face_masks(0.5 + 0.08 * uniform(b), 0.75 + 0.1 * uniform(b), s, s)   # [B, 1, S, S]
    mask = 1 - (1 - mask) * chance(cfg.background_prob)[:, None, None, None]
    x = mask * x + (1 - mask) * _new_background(x, uniform, chance(0.5)[:, None, None, None])
    # Geometry: zoom, rotation and shift in one affine resampling (border pixels repeated).
    zoom = 1 + cfg.scale * uniform(b)
    angle = math.radians(cfg.rotate) * uniform(b)
    a, c = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    shift = 2 * cfg.shift * uniform(b, 2)                                    # affine_grid spans [-1, 1]
    theta = torch.stack([torch.stack([a, -c, shift[:, 0]], 1), torch.stack([c, a, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Photometric: contrast around each image's mean, brightness offset, blur, noise.
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (1 + cfg.contrast * uniform(b, 1, 1, 1)) + mean + 2 * cfg.brightness * uniform(b, 1, 1, 1)
    x = _blur(x, cfg.blur_sigma * torch.rand(b, generator=generator) * chance(cfg.blur_prob))
    std = 2 * cfg.noise_std * torch.rand(b, generator=generator) * chance(cfg.noise_prob)
    x = x + std[:, None, None, None] * torch.randn(x.shape, generator=generator)
    return x.clamp(-1, 1)


def margin_logits(cos: torch.Tensor, labels: torch.Tensor, *, kind: Literal["cosface", "arcface"] = "cosface",
                  scale: float = 16.0, margin: float = 0.25) -> torch.Tensor:
    """Cosine-margin softmax logits [B, C] from cosines [B, C] (see the module docstring).

    CosFace: the true class's cosine becomes ``cos θ - m``. ArcFace: ``cos(θ + m)``; past ``θ = π - m``
    (where cos(θ + m) would turn back up) it continues as ``cos θ - m sin(π - m)``, keeping it decreasing.
    """
    target = cos.gather(1, labels[:, None])                                  # [B, 1]
    if kind == "cosface":
        adjusted = target - margin
    else:
        sin = torch.sqrt((1.0 - target ** 2).clamp_min(0.0))
        rotated = target * math.cos(margin) - sin * math.sin(margin)           # cos(θ + m)
        adjusted = torch.where(target > math.cos(math.pi - margin), rotated,
                               target - margin * math.sin(math.pi - margin))
    return scale * cos.scatter(1, labels[:, None], adjusted)


@dataclass
class IdentityTrainConfig:
    net: IdentityNetConfig = field(default_factory=IdentityNetConfig)  # architecture; image_size from the data
    augment: IdentityAugmentConfig = field(default_factory=IdentityAugmentConfig)
    steps: int = 400                # optimizer steps
    batch: int = 64                 # frames per step: identities drawn uniformly, then a random frame
    lr: float = 2e-3                # AdamW peak learning rate (linear warm-up, cosine decay to lr / 20)
    warmup_steps: int = 30          # linear warm-up length
    weight_decay: float = 5e-4      # AdamW weight decay
    loss: Literal["cosface", "arcface"] = "cosface"  # cosine-margin softmax variant
    scale: float = 16.0             # s: logit scale of the margin softmax
    margin: float = 0.25            # m: additive cosine (cosface) or angular (arcface, radians) margin
    eval_frames: int = 32           # evenly spaced held-out frames per identity for verification
    seed: int = 0                   # initial weights, frame draws, augmentation

    def validate(self) -> None:
        self.net.validate()
        self.augment.validate()
        check(self.steps >= 1 and self.batch >= 2, f"steps must be >= 1 and batch >= 2, got {self.steps}, {self.batch}")
        check(self.lr > 0 and self.warmup_steps >= 0 and self.weight_decay >= 0,
              "lr must be > 0, warmup_steps and weight_decay >= 0")
        check(self.loss in ("cosface", "arcface"), f"loss must be 'cosface' or 'arcface', got {self.loss!r}")
        check(self.scale > 0 and 0 <= self.margin < 1, f"need scale > 0 and 0 <= margin < 1, got "
              f"{self.scale}, {self.margin}")
        check(self.eval_frames >= 2, f"eval_frames must be >= 2, got {self.eval_frames}")


@dataclass
class IdentityTrainResult:
    out: Path                       # directory with model.safetensors, config.json, train.json
    losses: list[float]             # margin-softmax loss per step
    eval: dict                      # held-out verification (train.json "eval"); {} without 2 held-out identities
    identities: list[str]           # train identities (the classes)
    parameters: int
    seconds: float


def _lr_factor(step: int, cfg: IdentityTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _held_out_splits(rows: list[dict]) -> tuple[str, ...] | None:
    """val if it has >= 2 identities, else test, else both together; None if even that has < 2."""
    for splits in (("val",), ("test",), ("val", "test")):
        if len({str(r.get("identity")) for r in rows if r.get("split") in splits}) >= 2:
            return splits
    return None


def _held_out_eval(model: IdentityNet, root: Path, rows: list[dict], cfg: IdentityTrainConfig) -> dict:
    """Verification on held-out identities: clean, with the second frame of each pair degraded
    (`degrade_frames`), and the `background_probe`; {} if impossible."""
    splits = _held_out_splits(rows)
    if splits is None:
        log.warning("identity: %s has fewer than 2 val/test identities; no held-out verification", root)
        return {}
    embedder = OwnIdentity.from_model(model)
    held = _IdentityFrames(root, [r for r in rows if r.get("split") in splits])
    frames, labels = held.evenly(cfg.eval_frames)
    clean = verify_frames(embedder, frames, labels, seed=cfg.seed)
    degraded = verify_frames(embedder, frames, labels, transform=degrade_frames, seed=cfg.seed)
    background = background_probe(embedder, frames, labels, seed=cfg.seed)
    keys = ("auc", "accuracy", "eer", "same_mean", "diff_mean")
    return {"split": "+".join(splits), "identities": len(held.names), "frames": len(frames), **clean,
            "degraded": {k: degraded[k] for k in keys}, "background": {k: background[k] for k in keys}}


def train_identity(prepared_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   cfg: IdentityTrainConfig | None = None, *, progress: bool = True,
                   device: str | torch.device | None = None) -> IdentityTrainResult:
    """Train an `IdentityNet` on the train-split identities of a prepared directory; save it to `out_dir`.

    Args:
        prepared_dir: output of ``lipstep prepare`` (manifest.jsonl with ``split``/``identity`` + shards
            with ``frames`` uint8 [T, S, S, 3]); needs >= 2 train identities.
        out_dir: written as one atomic directory: ``config.json`` (`IdentityNetConfig`),
            ``model.safetensors`` and ``train.json`` (summary with the held-out verification). An
            existing directory is replaced only if it is an identity-encoder directory or empty.
        cfg: training settings; ``cfg.net.image_size`` is set from the data.
        progress: show a tqdm bar with the loss.
        device: where to train; None = CPU (augmentation runs on the CPU either way).

    Returns:
        An `IdentityTrainResult`; embed with ``OwnIdentity(out_dir)``.
    """
    from tqdm.auto import tqdm

    from lipstep.data.dataset import read_manifest

    cfg = cfg or IdentityTrainConfig()
    cfg.validate()
    started = time.perf_counter()
    root, out = Path(prepared_dir), Path(out_dir)
    _check_replaceable(out)
    rows = [r for r in read_manifest(root) if int(r.get("frames", 0)) > 0]
    train = _IdentityFrames(root, [r for r in rows if r.get("split") == "train"])
    if len(train.names) < 2:
        raise DataError(f"{root / 'manifest.jsonl'}: identity training needs at least 2 train identities with "
                        f"frames, found {len(train.names)}")
    net_cfg = dataclasses.replace(cfg.net, image_size=train.size)
    net_cfg.validate()
    device = torch.device(device or "cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = IdentityNet(net_cfg).to(device).train()
        centres = nn.Parameter(torch.randn(len(train.names), net_cfg.embed_dim).to(device))  # W_j of the softmax
    opt = torch.optim.AdamW([*model.parameters(), centres], lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    rng, gen = np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed)

    losses = []
    bar = tqdm(range(cfg.steps), desc="train identity", disable=not progress, dynamic_ncols=True)
    for _ in bar:
        frames, labels = train.sample(rng, cfg.batch)
        x = augment(_net_input(frames, net_cfg.image_size), cfg.augment, gen).to(device)
        y = torch.from_numpy(labels).to(device)
        cos = model(x) @ F.normalize(centres, dim=1).T                          # [B, classes]
        loss = F.cross_entropy(margin_logits(cos, y, kind=cfg.loss, scale=cfg.scale, margin=cfg.margin), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach().item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    bar.close()
    model.eval().requires_grad_(False)
    train_seconds = time.perf_counter() - started

    evaluation = _held_out_eval(model, root, rows, cfg)
    seconds = time.perf_counter() - started
    summary = {
        "name": net_cfg.name, "embed_dim": net_cfg.embed_dim, "image_size": net_cfg.image_size,
        "parameters": model.num_parameters(), "steps": cfg.steps, "final_loss": losses[-1],
        "seconds": round(seconds, 2), "train_seconds": round(train_seconds, 2),
        "train_identities": len(train.names), "eval": evaluation, "prepared_dir": str(root.resolve()),
        "train": to_dict(dataclasses.replace(cfg, net=net_cfg)),
    }
    save_identity(model.cpu(), out, train=summary)
    return IdentityTrainResult(out=out, losses=losses, eval=evaluation, identities=train.names,
                               parameters=model.num_parameters(), seconds=seconds)


__all__ = [
    "ArcFaceONNX", "DlibDescriptor", "IdentityAugmentConfig", "IdentityEmbedder", "IdentityNet", "IdentityNetConfig",
    "IdentityTrainConfig", "IdentityTrainResult", "OwnIdentity", "augment", "background_probe", "check_frames",
    "degrade_frames", "identity_cosines", "identity_per_second", "identity_similarity", "load_identity",
    "margin_logits", "resolve_identity_embedders", "save_identity", "swap_background", "train_identity",
    "verification_metrics", "verify_frames", "verify_identities",
]
