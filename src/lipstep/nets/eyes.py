"""`EyeNet`: a small convolutional eyelid renderer that closes a frame's eyes by a given amount.

Blinks are a control, not something the audio asks for, and a one-step student regresses to the mean
of its teacher's samples, which at a 5-frame blink is half-shut eyes (experiments/streaming/README.md).
So a blink is drawn where the frame is already made: `EyeNet` takes a generated frame's codec latents
and each frame's eyelid closure (0 = open, 1 = shut; a `lipstep.data.blinks.BlinkSchedule` at inference)
and returns the latents with the lids brought down that far::

    z' = z + c · Δ(z, c, y, x)

Δ is a few dilated 3×3 convolutions (receptive field of the whole eye region) over the latent, the
closure as a constant channel and two coordinate channels (the eyes are at a fixed height in an
aligned face crop, so the net does not have to find them from texture alone); its last convolution
starts at zero. At c = 0 the frame comes back unchanged, exactly, so a frame outside a blink costs
nothing and cannot be damaged. The net works on latents of one codec: it is trained on that codec's
encodings of real frames (`lipstep.train.eyes`) and kept in the model directory it serves
(``MODEL/eyes/``, `lipstep.modeldir`), so the same model blinks in offline generation, streaming,
previews, hybrid latents and evaluation (`lipstep.samplers.chunks.ChunkSampler` applies it).

An eye-net directory holds ``config.json`` (`EyeConfig`), ``model.safetensors``, ``checksums.json`` and,
from training, ``train.json`` (`lipstep.netdir`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from lipstep.config import check
from lipstep.netdir import check_net_out, load_net_dir, save_net_dir

NAME = "lipstep-eye-net-v1"
_WHAT = "eye net"   # names its directory in errors


@dataclass
class EyeConfig:
    latent_channels: int = 12       # the codec's latent channels (set from the codec it is trained for)
    latent_size: int = 32           # the latent grid's side (set from the codec and the data)
    hidden: int = 48                # channels of every hidden convolution
    dilations: tuple[int, ...] = (1, 2, 4, 2, 1)  # one 3x3 convolution per entry, residual between them

    def validate(self) -> None:
        check(self.latent_channels >= 1, f"latent_channels must be >= 1, got {self.latent_channels}")
        check(self.latent_size >= 4, f"latent_size must be >= 4, got {self.latent_size}")
        check(self.hidden >= 4, f"hidden must be >= 4, got {self.hidden}")
        check(len(self.dilations) >= 1 and all(int(d) >= 1 for d in self.dilations),
              f"dilations must be one or more integers >= 1, got {self.dilations}")


class EyeNet(nn.Module):
    """Latents [N, C, h, w] and eyelid closure [N] in [0, 1] -> latents [N, C, h, w] with the eyes that far shut."""

    def __init__(self, cfg: EyeConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        c, w = cfg.latent_channels, cfg.hidden
        self.inp = nn.Conv2d(c + 3, w, 3, padding=1)          # + closure, row and column coordinates
        self.convs = nn.ModuleList(nn.Conv2d(w, w, 3, padding=int(d), dilation=int(d)) for d in cfg.dilations)
        self.out = nn.Conv2d(w, c, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.act = nn.SiLU()

    def delta(self, z: Tensor, closure: Tensor) -> Tensor:
        n, _, h, w = z.shape
        ys = torch.linspace(-1, 1, h, device=z.device, dtype=z.dtype)[:, None].expand(h, w)
        xs = torch.linspace(-1, 1, w, device=z.device, dtype=z.dtype)[None, :].expand(h, w)
        extra = torch.stack([ys, xs])[None].expand(n, 2, h, w)
        c = closure.to(z.dtype)[:, None, None, None].expand(n, 1, h, w)
        x = self.act(self.inp(torch.cat([z, c, extra], dim=1)))
        for conv in self.convs:
            x = x + self.act(conv(x))
        return self.out(x)

    def forward(self, z: Tensor, closure: Tensor) -> Tensor:
        if z.dim() != 4 or z.shape[1] != self.cfg.latent_channels:
            raise ValueError(f"the eye net expects latents [N, {self.cfg.latent_channels}, h, w], got {tuple(z.shape)}")
        if closure.shape != (z.shape[0],):
            raise ValueError(f"the eye net expects one closure per frame [{z.shape[0]}], got {tuple(closure.shape)}")
        return z + closure.to(z.dtype)[:, None, None, None] * self.delta(z, closure)

    @torch.no_grad()
    def close_eyes(self, z: Tensor, closure: Tensor) -> Tensor:
        """`forward` on the frames whose closure is above 0 only (the others are returned as they are)."""
        on = closure > 0
        if not bool(on.any()):
            return z
        out = z.clone()
        out[on] = self(z[on], closure[on].to(z.device))
        return out

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def check_eye_net_out(directory: str | os.PathLike) -> None:
    """Refuse to write an eye net over anything but an empty folder or another eye-net directory."""
    check_net_out(directory, EyeConfig, what=_WHAT)


def save_eye_net(net: EyeNet, directory: str | os.PathLike, train: dict | None = None) -> Path:
    return save_net_dir(net, directory, what=_WHAT, metadata={"name": NAME}, train=train)


def load_eye_net(directory: str | os.PathLike) -> EyeNet:
    """An eye net from its directory (a one-line `LipstepError` for anything wrong with it), eval mode, frozen."""
    return load_net_dir(directory, EyeConfig, EyeNet, what=_WHAT)


__all__ = ["NAME", "EyeConfig", "EyeNet", "check_eye_net_out", "load_eye_net", "save_eye_net"]
