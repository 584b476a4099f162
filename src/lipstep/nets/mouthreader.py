"""`MouthReaderNet`: the small CNN behind MouthErr that reads the mouth state from a face crop.

It sees the lower part of the crop only (rows and columns `CROP` of the face-centred square crop; the
mouth moves within it under the synthetic world's head motion), so eyes, blinks and hair cannot leak
into the reading, and outputs the three mouth-state numbers (openness, width, roundness) through a
sigmoid. `lipstep.eval.mouthreader.MouthReader` scores frames with a trained one and
`lipstep.eval.train_mouthreader` trains it. A mouth-reader directory holds ``config.json``
(`MouthReaderConfig`), ``model.safetensors`` and, from training, ``train.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipstep.config import check
from lipstep.errors import DataError
from lipstep.netdir import WEIGHTS_NAME, check_net_out, load_net_dir, save_net_dir

NAME = "lipstep-mouth-reader-v1"
_WHAT = "mouth reader"   # names its directory in errors
CROP = (0.42, 0.98, 0.12, 0.88)  # rows (top, bottom), columns (left, right) as fractions of the crop side


@dataclass
class MouthReaderConfig:
    image_size: int = 64            # side of the square face crops it reads (set from the data)
    width: int = 16                 # channels of the first (stride-2) conv; doubled twice after it

    def validate(self) -> None:
        check(self.image_size >= 16, f"image_size must be >= 16, got {self.image_size}")
        check(self.width >= 4, f"width must be >= 4, got {self.width}")


def crop_box(size: int) -> tuple[int, int, int, int]:
    """`CROP` in pixels of a size x size crop: (top, bottom, left, right)."""
    r0, r1, c0, c1 = (round(f * size) for f in CROP)
    return r0, r1, c0, c1


class MouthReaderNet(nn.Module):
    """Face crops [B, 3, S, S] in [-1, 1] -> mouth state [B, 3] in (0, 1)."""

    def __init__(self, cfg: MouthReaderConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        w = cfg.width
        chans = [w, 2 * w, 2 * w, 4 * w, 4 * w]   # the first conv already halves the resolution
        strides = [2, 1, 2, 1, 2]
        layers, c_in = [], 3
        for c, s in zip(chans, strides):
            layers += [nn.Conv2d(c_in, c, 3, stride=s, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(2 * c_in, 64), nn.ReLU(inplace=True), nn.Linear(64, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r0, r1, c0, c1 = crop_box(self.cfg.image_size)
        h = self.features(x[:, :, r0:r1, c0:c1])
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return torch.sigmoid(self.head(pooled))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def mouth_reader_input(frames, size: int) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, size, size] in [-1, 1] (area down-, bilinear up-sampling)."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise DataError(f"the mouth reader expects uint8 RGB frames [N, H, W, 3], got {frames.dtype} {frames.shape}")
    if frames.shape[1] != frames.shape[2]:
        raise DataError(f"the mouth reader expects square face crops, got {frames.shape[1]}x{frames.shape[2]}")
    x = torch.from_numpy(np.array(frames)).float().div_(127.5).sub_(1.0).permute(0, 3, 1, 2)
    if x.shape[-1] > size:  # area averaging: exact block means for integer factors
        x = F.interpolate(x, size=(size, size), mode="area")
    elif x.shape[-1] < size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


# ------------------------------------------------------------------------------------ weight directory


def read_json(path: Path) -> dict:
    """A JSON object from `path`; {} if it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def check_mouth_reader_out(directory: str | os.PathLike) -> None:
    """Refuse to write a mouth reader over anything but a mouth-reader directory or an empty one."""
    check_net_out(directory, MouthReaderConfig, what=_WHAT)


def save_mouth_reader(net: MouthReaderNet, directory: str | os.PathLike, *, train: dict | None = None) -> Path:
    """Write ``model.safetensors``, ``config.json`` (and ``train.json`` if given) as one atomic directory."""
    return save_net_dir(net, directory, what=_WHAT, metadata={"kind": "MouthReader"}, train=train)


def load_mouth_reader(path: str | os.PathLike) -> MouthReaderNet:
    """A `MouthReaderNet` saved by `save_mouth_reader` (or `train_mouth_reader`), in eval mode and frozen."""
    return load_net_dir(path, MouthReaderConfig, MouthReaderNet, what=_WHAT)


__all__ = ["CROP", "NAME", "WEIGHTS_NAME", "MouthReaderConfig", "MouthReaderNet", "check_mouth_reader_out", "crop_box",
           "load_mouth_reader", "mouth_reader_input", "save_mouth_reader"]
