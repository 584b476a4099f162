"""`IdentityNet`: lipstep's own face-identity encoder (``lipstep-identity-v1``), and its weight directory.

A small CNN that maps a face crop to a unit-norm identity embedding; the identity metric
(`lipstep.eval.identity`) compares embeddings by cosine similarity through `OwnIdentity`
(`lipstep.eval.identity_embedders`), and `lipstep.eval.train_identity` trains it. An identity-encoder
directory holds ``config.json`` (`IdentityNetConfig`, ``"_type": "IdentityNetConfig"``),
``model.safetensors`` and, from training, ``train.json`` (`save_identity`, `load_identity`).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipstep.config import check
from lipstep.netdir import WEIGHTS_NAME, check_net_out, load_net_dir, save_net_dir

OWN_NAME = "lipstep-identity-v1"
_WHAT = "identity-encoder"   # names its directory in errors


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


def identity_input(frames: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (or [0, 1] float) [N, S', S', 3] -> float [N, 3, size, size] in [-1, 1] (bilinear, antialiased)."""
    t = torch.as_tensor(frames)
    x = (t.float() / 255.0 if t.dtype == torch.uint8 else t.float().clamp(0, 1)).permute(0, 3, 1, 2)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x * 2.0 - 1.0


# ------------------------------------------------------------------------------------ weight directory


def check_identity_out(out: str | os.PathLike) -> None:
    """Refuse to write an identity encoder over anything but an identity-encoder directory or an empty one."""
    check_net_out(out, IdentityNetConfig, what=_WHAT)


def save_identity(model: IdentityNet, directory: str | os.PathLike, *, train: dict | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` (and ``train.json`` if given) as one atomic directory."""
    return save_net_dir(model, directory, what=_WHAT, metadata={"name": model.cfg.name}, train=train)


def load_identity(directory: str | os.PathLike) -> IdentityNet:
    """An `IdentityNet` saved by `save_identity` / `train_identity`, in eval mode and frozen."""
    return load_net_dir(directory, IdentityNetConfig, IdentityNet, what=_WHAT)


__all__ = ["OWN_NAME", "WEIGHTS_NAME", "IdentityNet", "IdentityNetConfig", "check_identity_out", "identity_input",
           "load_identity", "save_identity"]
