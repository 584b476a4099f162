"""Face verification with an identity embedder: the ground-truth calibration of the identity metric.

`verification_metrics` summarises similarity scores of same- and different-identity pairs (ROC AUC,
accuracy at the best threshold, EER, mean cosines); `verify_frames` scores all frame pairs of labelled
frames (optionally with the second frame of each pair transformed, e.g. `degrade_frames`: blur + JPEG,
as CSIM compares a clean portrait with generated frames); `verify_identities` runs it on the identities
of a split of a prepared directory (the ceiling to print next to a model's CSIM). `background_probe`
checks that an embedder looks at faces, not backdrops: on the synthetic world, where every identity
has its own backdrop, even raw pixels verify perfectly on clean frames.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lipstep.data.dataset import open_shard, read_manifest
from lipstep.errors import DataError
from lipstep.eval.identity import IdentityEmbedder, check_frames, embed, to_uint8, unit_rows


def face_masks(rx: torch.Tensor, ry: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Soft centred ellipses [B, 1, H, W]: ~1 inside half-axes (rx, ry) [B] (fractions of the half-width and
    half-height), 0 outside."""
    u, v = torch.linspace(-1, 1, width), torch.linspace(-1, 1, height)
    r = torch.sqrt((u[None, None, :] / rx[:, None, None]) ** 2 + (v[None, :, None] / ry[:, None, None]) ** 2)
    return torch.sigmoid((1.0 - r) * 12.0)[:, None]



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
    mask = face_masks(torch.tensor([0.5]), torch.tensor([0.75]), *x.shape[1:3])[0, 0].numpy()[None, :, :, None]
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
    e = unit_rows(embed(embedder, frames), embedder.name)
    f = e if transform is None else unit_rows(
        embed(embedder, transform(to_uint8(check_frames(frames, "frames")))), embedder.name)
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
    x = to_uint8(check_frames(frames, "frames"))
    swapped = swap_background(x, x[[first[(y + 1) % k] for y in labels]])
    sims = unit_rows(embed(embedder, x), embedder.name) @ unit_rows(embed(embedder, swapped), embedder.name).T
    same = (labels[:, None] == labels[None, :]) & ~np.eye(len(labels), dtype=bool)
    diff = labels[:, None] == (labels[None, :] + 1) % k
    return verification_metrics(*_balanced(sims[same].astype(np.float64), sims[diff].astype(np.float64),
                                           np.random.default_rng(seed)))


class IdentityFrames:
    """Frames (memory-mapped) of some clips of a prepared directory, grouped by identity."""

    def __init__(self, root: Path, rows: list[dict]):
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
    root = Path(prepared_dir)
    rows = [r for r in read_manifest(root) if r.get("split") in splits and int(r.get("frames", 0)) > 0]
    data = IdentityFrames(root, rows)
    if len(data.names) < 2:
        raise DataError(f"{root}: verification needs at least 2 identities in split(s) {'+'.join(splits)}, "
                        f"found {len(data.names)}")
    frames, labels = data.evenly(frames_per_identity)
    result = verify_frames(embedder, frames, labels, transform=transform, seed=seed)
    return {"split": "+".join(splits), "identities": len(data.names), "frames": len(frames), **result}


__all__ = ["IdentityFrames", "background_probe", "degrade_frames", "face_masks", "swap_background",
           "verification_metrics", "verify_frames", "verify_identities"]
