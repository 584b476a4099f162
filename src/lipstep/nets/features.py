"""`FeatureEncoder`: lipstep's own frame-feature network (``lipstep-frames-v1``), and its weight directory.

A small strided CNN whose feature is the global average of its last two levels' activations (a
mid-level texture part and a coarse content part). `lipstep.eval.features.OwnFeatures` computes
internal FD/KID/FVD features with a trained one (never comparable with published FID), and
`lipstep.eval.train_features` trains it as an autoencoder (`FeatureDecoder`, training only) with an
identity classifier. A feature-net directory holds ``config.json`` (`FeatureNetConfig`),
``model.safetensors`` (the encoder only), ``checksums.json`` and, from training, ``train.json``
(`lipstep.netdir`).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lipstep.config import check
from lipstep.netdir import WEIGHTS_NAME, check_net_out, load_net_dir, save_net_dir

_WHAT = "feature-net"   # names its directory in errors


@dataclass
class FeatureNetConfig:
    name: str = "lipstep-frames-v1"                 # reported feature-space name; bump on any change
    image_size: int = 64                            # frames are resized to this (set from the data by training)
    channels: tuple[int, ...] = (32, 64, 128, 128)  # encoder widths; each level halves the resolution
    identities: int = 0                             # classes of the training-only identity head (0 = none)

    def validate(self) -> None:
        check(len(self.channels) >= 2 and all(c >= 8 and c % 8 == 0 for c in self.channels),
              f"channels needs >= 2 levels, each a multiple of 8, got {self.channels}")
        check(self.image_size >= 2 ** len(self.channels) and self.image_size % 2 ** len(self.channels) == 0,
              f"image_size {self.image_size} must be a multiple of {2 ** len(self.channels)}")
        check(self.identities >= 0, f"identities must be >= 0, got {self.identities}")

    @property
    def dim(self) -> int:
        return self.channels[-2] + self.channels[-1]


def _conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


class FeatureEncoder(nn.Module):
    """[N, 3, S, S] in [-1, 1] -> [N, dim]: strided conv levels; the feature is the global average of the
    last two levels' activations (a mid-level texture part and a coarse content part)."""

    def __init__(self, cfg: FeatureNetConfig):
        super().__init__()
        self.cfg = cfg
        widths = (3,) + tuple(cfg.channels)
        self.levels = nn.ModuleList(_conv_block(a, b, 2) for a, b in itertools.pairwise(widths))

    def forward_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activations of every level, [N, C_l, S / 2^(l+1), S / 2^(l+1)]."""
        maps = []
        for level in self.levels:
            x = level(x)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.forward_maps(x)
        return torch.cat([maps[-2].mean(dim=(2, 3)), maps[-1].mean(dim=(2, 3))], 1)


class FeatureDecoder(nn.Module):
    """Training-only: the last encoder map back to an image in [-1, 1] (nearest upsampling + convs)."""

    def __init__(self, cfg: FeatureNetConfig):
        super().__init__()
        widths = tuple(reversed(cfg.channels))
        self.ups = nn.ModuleList(nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"), _conv_block(a, b, 1))
                                 for a, b in zip(widths, widths[1:] + (widths[-1],)))
        self.out = nn.Conv2d(widths[-1], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for up in self.ups:
            z = up(z)
        return torch.tanh(self.out(z))


# ------------------------------------------------------------------------------------ weight directory


def check_feature_out(directory: str | os.PathLike) -> None:
    """Refuse to write a feature net over anything but a feature-net directory or an empty one."""
    check_net_out(directory, FeatureNetConfig, what=_WHAT)


def save_feature_net(encoder: FeatureEncoder, directory: str | os.PathLike, *, train: dict | None = None) -> Path:
    """Write the encoder's ``config.json``, ``model.safetensors`` (and ``train.json`` if given) as one atomic
    directory."""
    return save_net_dir(encoder, directory, what=_WHAT, metadata={"name": encoder.cfg.name}, train=train)


def load_feature_net(path: str | os.PathLike) -> FeatureEncoder:
    """A `FeatureEncoder` saved by `save_feature_net` (or `train_feature_net`), in eval mode and frozen."""
    return load_net_dir(path, FeatureNetConfig, FeatureEncoder, what=_WHAT)


__all__ = ["WEIGHTS_NAME", "FeatureDecoder", "FeatureEncoder", "FeatureNetConfig", "check_feature_out",
           "load_feature_net", "save_feature_net"]
