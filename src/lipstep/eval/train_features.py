"""Training lipstep's own frame feature net (`lipstep.nets.features`), the internal FD/KID/FVD features.

`train_feature_net` trains a `FeatureEncoder` on the train frames of a prepared directory as an
autoencoder (L1 reconstruction of the frame from the last encoder map by a training-only
`FeatureDecoder`) plus, with at least two train identities, an identity cross-entropy on the feature
vector (``identity_weight``), so the features see both appearance and who is in the frame. It reports
the reconstruction L1 on held-out frames (val, else test) and saves the encoder for
`lipstep.eval.features.OwnFeatures`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipstep.config import check, to_dict
from lipstep.data.dataset import open_shard, read_manifest
from lipstep.errors import DataError
from lipstep.fit import fit
from lipstep.nets.features import (
    FeatureDecoder,
    FeatureEncoder,
    FeatureNetConfig,
    check_feature_out,
    save_feature_net,
)


@dataclass
class FeatureTrainConfig:
    net: FeatureNetConfig = field(default_factory=FeatureNetConfig)  # image_size/identities come from the data
    steps: int = 2000               # optimizer steps
    batch: int = 64                 # frames per step, uniform over all train frames
    lr: float = 1e-3                # AdamW peak learning rate (cosine decay towards lr / 10), weight decay 0.01
    identity_weight: float = 0.1    # weight of identity cross-entropy (only with >= 2 train identities)
    eval_frames: int = 256          # val (else test) frames for the reported reconstruction error
    seed: int = 0                   # initial weights and frame draws

    def validate(self) -> None:
        check(self.steps >= 1 and self.batch >= 1, f"steps and batch must be >= 1, got {self.steps}, {self.batch}")
        check(self.lr > 0 and self.identity_weight >= 0, "lr must be > 0 and identity_weight >= 0")
        check(self.eval_frames >= 1, f"eval_frames must be >= 1, got {self.eval_frames}")


@dataclass
class FeatureTrainResult:
    out: Path                       # the saved feature-net directory
    losses: list[float]             # total loss per step
    eval_l1: float                  # mean |recon - frame| on held-out frames, [-1, 1] units (nan: no held-out split)
    eval_split: str                 # split eval_l1 was measured on ("" if none)
    identities: list[str]           # identity classes of the head (empty: head off)
    seconds: float


class _SplitFrames:
    """Random access to one split's frames and per-frame identity labels (memory-mapped shards)."""

    def __init__(self, root: Path, rows: list[dict], classes: dict[str, int]):
        self.arrays, labels = [], []
        for row in rows:
            a = open_shard(root / row["shard"], ("frames",)).get("frames")
            if a is None or a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8 or a.shape[1] != a.shape[2]:
                raise DataError(f"shard {root / row['shard']} has no square uint8 frames [T, S, S, 3]")
            self.arrays.append(a)
            labels.append(np.full(len(a), classes.get(str(row.get("identity")), -1), np.int64))
        sizes = {a.shape[1] for a in self.arrays}
        if len(sizes) != 1:
            raise DataError(f"{root}: frames must all have one size, found {sorted(sizes)}")
        self.size, self.labels = sizes.pop(), np.concatenate(labels)
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def get(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Global indices -> (frames float [N, 3, S, S] in [-1, 1], identity labels [N], -1 = unknown)."""
        clips = np.searchsorted(self.offsets, indices, side="right") - 1
        pixels = np.stack([self.arrays[c][i - self.offsets[c]] for c, i in zip(clips, indices)])
        x = torch.from_numpy(pixels).float().div_(127.5).sub_(1.0).permute(0, 3, 1, 2).contiguous()
        return x, torch.from_numpy(self.labels[indices])


def _train_step_loss(encoder, decoder, head, x, labels, identity_weight: float) -> torch.Tensor:
    """L1 reconstruction from the last encoder map (+ identity cross-entropy on the feature vector)."""
    maps = encoder.forward_maps(x)
    loss = (decoder(maps[-1]) - x).abs().mean()
    known = labels >= 0
    if head is not None and identity_weight > 0 and bool(known.any()):
        feat = torch.cat([maps[-2].mean(dim=(2, 3)), maps[-1].mean(dim=(2, 3))], 1)
        loss = loss + identity_weight * F.cross_entropy(head(feat[known]), labels[known])
    return loss


def train_feature_net(prepared_dir: str | os.PathLike, out_dir: str | os.PathLike,
                      cfg: FeatureTrainConfig | None = None, *, steps: int | None = None,
                      progress: bool = False, device: str | torch.device | None = None) -> FeatureTrainResult:
    """Train lipstep's own frame feature net on the train frames of a prepared directory; save it to `out_dir`.

    Args:
        prepared_dir: output of ``lipstep prepare`` (manifest.jsonl with ``split``/``identity`` + shards
            with ``frames`` uint8 [T, S, S, 3]).
        out_dir: written as one atomic directory: ``config.json`` (`FeatureNetConfig`), ``model.safetensors``
            (the encoder only), ``checksums.json`` and ``train.json`` (summary). An existing directory is
            replaced only if it is a feature-net directory or empty.
        cfg: training settings; ``cfg.net.image_size`` and ``identities`` are taken from the data.
        steps: overrides ``cfg.steps``.
        progress: show a tqdm bar.
        device: where to train; None = CPU (fp32).

    Returns:
        A `FeatureTrainResult`; load the features with ``OwnFeatures(out_dir)``.
    """
    cfg = dataclasses.replace(cfg or FeatureTrainConfig(), **({"steps": steps} if steps is not None else {}))
    cfg.validate()
    started = time.perf_counter()
    root, out = Path(prepared_dir), Path(out_dir)
    check_feature_out(out)
    rows = [r for r in read_manifest(root) if int(r.get("frames", 0)) > 0]
    train_rows = [r for r in rows if r.get("split") == "train"]
    if not train_rows:
        raise DataError(f"{root / 'manifest.jsonl'} has no train clips with frames")
    names = sorted({str(r["identity"]) for r in train_rows if "identity" in r})
    use_head = len(names) >= 2 and cfg.identity_weight > 0
    classes = {n: i for i, n in enumerate(names)} if use_head else {}
    train = _SplitFrames(root, train_rows, classes)
    net_cfg = dataclasses.replace(cfg.net, image_size=train.size, identities=len(classes))
    net_cfg.validate()

    device = torch.device(device or "cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        encoder, decoder = FeatureEncoder(net_cfg), FeatureDecoder(net_cfg)
        head = nn.Linear(net_cfg.dim, len(classes)) if use_head else None
    parts = nn.ModuleList([m for m in (encoder, decoder, head) if m is not None]).to(device).train()
    rng = np.random.default_rng(cfg.seed)

    def step(_: int) -> torch.Tensor:
        x, labels = train.get(rng.integers(0, len(train), cfg.batch))
        return _train_step_loss(encoder, decoder, head, x.to(device), labels.to(device), cfg.identity_weight)

    # weight decay 0.01: AdamW's default, which this trainer has always used
    losses = fit(parts.parameters(), step, steps=cfg.steps, lr=cfg.lr, weight_decay=0.01, schedule="cosine",
                 floor=0.1, progress=progress, desc=f"train {net_cfg.name}").losses
    parts.eval().requires_grad_(False)

    # Report the reconstruction error on held-out frames (val, else test).
    split, eval_l1 = "", float("nan")
    held = next((s for s in ("val", "test") if any(r.get("split") == s for r in rows)), None)
    if held is not None:
        frames = _SplitFrames(root, [r for r in rows if r.get("split") == held], {})
        if frames.size == train.size:
            idx = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), cfg.eval_frames)).round().astype(np.int64))
            x = frames.get(idx)[0].to(device)
            with torch.inference_mode():
                eval_l1 = float((decoder(encoder.forward_maps(x)[-1]) - x).abs().mean())
            split = held

    result = FeatureTrainResult(out=out, losses=losses, eval_l1=eval_l1, eval_split=split, identities=names
                                if use_head else [], seconds=time.perf_counter() - started)
    save_feature_net(encoder, out, train={
        "name": net_cfg.name, "dim": net_cfg.dim, "final_loss": losses[-1], "eval_l1": eval_l1,
        "eval_split": split, "identities": result.identities, "seconds": round(result.seconds, 2),
        "prepared_dir": str(root.resolve()), "train": to_dict(cfg)})
    return result


__all__ = ["FeatureTrainConfig", "FeatureTrainResult", "train_feature_net"]
