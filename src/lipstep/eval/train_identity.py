"""Training lipstep's own identity encoder (`lipstep.nets.identity.IdentityNet`, ``lipstep-identity-v1``).

`train_identity` trains a small CNN on the whole face crop as a classifier over the train identities
of a prepared directory with a cosine-margin softmax: with unit-norm embedding x and class centres W_j,
cos θ_j = x·W_j / |W_j| and the loss is the cross-entropy of ``s * cos θ_j`` where the true class
gets ``cos θ_y - m`` (CosFace, Wang et al. 2018, eq. 4) or ``cos(θ_y + m)`` (ArcFace, Deng et al.
2019, eq. 3). Light augmentation (shift, zoom, rotation, brightness/contrast, blur, noise) keeps it
robust to generated and decoded frames, and a new backdrop outside a centred face ellipse (a random
colour field, or the old one recoloured) keeps it from identifying people by background and clothes.
Held-out verification on identities never seen in training (val split, else test) is written to
``train.json`` (`lipstep.eval.identity_verification`): over same- vs different-identity frame pairs,
on clean frames, with the second frame of each pair blurred + JPEG-compressed (``degraded``), and
the background probe (``background``: faces wearing another identity's backdrop; on the synthetic
world even raw pixels verify perfectly on clean frames, so this is the number that shows the encoder
looks at faces).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipstep.config import check, to_dict
from lipstep.data.dataset import read_manifest
from lipstep.errors import DataError
from lipstep.eval.identity_embedders import OwnIdentity
from lipstep.eval.identity_verification import (
    IdentityFrames,
    background_probe,
    degrade_frames,
    face_masks,
    verify_frames,
)
from lipstep.fit import fit
from lipstep.nets.identity import (
    IdentityNet,
    IdentityNetConfig,
    check_identity_out,
    identity_input,
    save_identity,
)

log = logging.getLogger(__name__)


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
    mask = face_masks(0.5 + 0.08 * uniform(b), 0.75 + 0.1 * uniform(b), s, s)   # [B, 1, S, S]
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
    held = IdentityFrames(root, [r for r in rows if r.get("split") in splits])
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
    cfg = cfg or IdentityTrainConfig()
    cfg.validate()
    started = time.perf_counter()
    root, out = Path(prepared_dir), Path(out_dir)
    check_identity_out(out)
    rows = [r for r in read_manifest(root) if int(r.get("frames", 0)) > 0]
    train = IdentityFrames(root, [r for r in rows if r.get("split") == "train"])
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
    rng, gen = np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed)

    def step(_: int) -> torch.Tensor:
        frames, labels = train.sample(rng, cfg.batch)
        x = augment(identity_input(frames, net_cfg.image_size), cfg.augment, gen).to(device)
        y = torch.from_numpy(labels).to(device)
        cos = model(x) @ F.normalize(centres, dim=1).T                          # [B, classes]
        return F.cross_entropy(margin_logits(cos, y, kind=cfg.loss, scale=cfg.scale, margin=cfg.margin), y)

    losses = fit([*model.parameters(), centres], step, steps=cfg.steps, lr=cfg.lr, weight_decay=cfg.weight_decay,
                 schedule="cosine", warmup_steps=cfg.warmup_steps, floor=0.05, progress=progress,
                 desc="train identity").losses
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


__all__ = ["IdentityAugmentConfig", "IdentityTrainConfig", "IdentityTrainResult", "augment", "margin_logits",
           "train_identity"]
