"""A discriminator of light heads on the token features of a frozen diffusion net (LADD; DMD2's head).

The features come from `AvatarDiT.features`: the video tokens [B, T, N, W] after a few blocks of a
frozen teacher copy (or a fake score), run on a sample re-noised to a discriminator noise level t̂, so
the heads judge at every noise level what the teacher sees there (LADD, algorithms.md §2.6, §3.4). Each
head reshapes its block's tokens to a [W, T, h, w] volume and runs::

    conv 3×3×3 (stride 1, 2, 2) -> GroupNorm -> SiLU -> conv 1×1×1 -> logit per location

Conditioning enters as in a projection discriminator (Miyato & Koyama 2018): the logit of a head is
the mean of its location logits plus ⟨h̄, P·c⟩ for a global vector c (the noise level's time embedding,
the pooled reference tokens, and, for the conditional form, the start point's time embedding) and,
per frame, ⟨h̄_f, P_a·a_f⟩ for that frame's pooled audio tokens, so a head can tell a mouth that does not
fit its frame's audio from one that does. The discriminator's logit is the mean over heads.

Two forms (SDXL-Lightning): *unconditional* D(x_end) sees the end point only; *conditional* D(x_start,
x_end) concatenates the start point's tokens channel-wise, so it judges whether the end point follows
from that start (preserving the flow) rather than whether it looks plausible on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lipstep.config import check
from lipstep.nets.dit import AvatarDiT, BlockFeatures


@dataclass
class DiscriminatorConfig:
    """Heads of a `FeatureDiscriminator`: which blocks, how wide, which form."""

    blocks: tuple[int, ...] = ()        # feature blocks of the frozen net (() = three spread over its depth)
    width: int = 64                      # channels of each head
    conditional: bool = True             # D(start, end) instead of D(end)

    def validate(self) -> None:
        check(self.width >= 8, f"discriminator width must be >= 8, got {self.width}")
        check(all(b >= 0 for b in self.blocks), f"discriminator blocks must be >= 0, got {list(self.blocks)}")


def default_blocks(depth: int) -> list[int]:
    """Three blocks spread over a depth (the last one included): 6 -> [1, 3, 5], 40 -> [12, 25, 39]."""
    return sorted({max(0, round(depth * k / 3) - 1) for k in (1, 2, 3)})


def _groups(channels: int) -> int:
    return math.gcd(channels, 32)


class DiscriminatorHead(nn.Module):
    """One block's head: tokens [B, T, N, W'] -> logits [B] (see the module docstring)."""

    def __init__(self, in_width: int, width: int, cond_width: int, audio_width: int, grid: int):
        super().__init__()
        self.grid = grid
        self.conv = nn.Conv3d(in_width, width, 3, stride=(1, 2, 2), padding=1)
        self.norm = nn.GroupNorm(_groups(width), width)
        self.out = nn.Conv3d(width, 1, 1)
        self.proj = nn.Linear(cond_width, width, bias=False)
        self.proj_audio = nn.Linear(audio_width, width, bias=False)
        self.scale = 1.0 / math.sqrt(width)

    def forward(self, tokens: Tensor, c: Tensor, audio: Tensor) -> Tensor:
        """tokens [B, T, N, W'], c [B, D] global conditioning, audio [B, T, A] per frame -> logits [B]."""
        b, t, _, w = tokens.shape
        vol = tokens.reshape(b, t, self.grid, self.grid, w).permute(0, 4, 1, 2, 3)   # [B, W', T, g, g]
        h = nn.functional.silu(self.norm(self.conv(vol)))                            # [B, H, T, g/2, g/2]
        logit = self.out(h).mean(dim=(1, 2, 3, 4))                                   # [B]
        per_frame = h.mean(dim=(3, 4)).transpose(1, 2)                               # [B, T, H]
        logit = logit + self.scale * (per_frame.mean(1) * self.proj(c)).sum(-1)
        return logit + self.scale * (per_frame * self.proj_audio(audio)).sum(-1).mean(1)


class FeatureDiscriminator(nn.Module):
    """Heads on `BlockFeatures` of a frozen net of width ``net_width`` and ``grid``×``grid`` tokens per frame.

    Only the heads are parameters: the feature net is a separate (frozen) role of the method that owns it,
    so the discriminator's optimizer never reaches it and the loop never checkpoints it twice.
    """

    def __init__(self, cfg: DiscriminatorConfig, *, net_width: int, grid: int, depth: int, seed: int = 0):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.blocks = list(cfg.blocks) if cfg.blocks else default_blocks(depth)
        check(max(self.blocks) < depth, f"discriminator blocks {self.blocks} exceed the feature net's depth {depth}")
        k = 2 if cfg.conditional else 1
        cond_width = (k + 1) * net_width           # time embedding(s) + pooled reference tokens
        with torch.random.fork_rng(devices=[]):    # the heads' start depends on the run's seed only
            torch.manual_seed(seed)
            self.heads = nn.ModuleList(DiscriminatorHead(k * net_width, cfg.width, cond_width, net_width, grid)
                                       for _ in self.blocks)

    def forward(self, end: BlockFeatures, start: BlockFeatures | None = None) -> Tensor:
        """Features of the end point (and, for the conditional form, of the start point) -> logits [B]."""
        if self.cfg.conditional != (start is not None):
            raise ValueError("FeatureDiscriminator: the conditional form needs start features, the other none")
        if end.blocks != self.blocks:
            raise ValueError(f"FeatureDiscriminator: features of blocks {end.blocks}, heads for {self.blocks}")
        c = [end.time, end.context]
        if start is not None:
            c.append(start.time)
        c = torch.cat(c, dim=-1)
        logits = []
        for i, head in enumerate(self.heads):
            tokens = end.tokens[i] if start is None else torch.cat([start.tokens[i], end.tokens[i]], dim=-1)
            logits.append(head(tokens, c, end.audio))
        return torch.stack(logits).mean(0)


class ScoreWithHeads(nn.Module):
    """A score net and discriminator heads on its own features, as one module (DMD2's fake score with its
    classification head): one role, one optimizer trains both, and the loop wraps (DDP / FSDP) both.

    ``module(x_t, t, cond)`` is the score net's prediction (what `lipstep.diffusion.denoiser.Denoiser`
    calls); ``module.logits(x_t, t, cond)`` the heads' logits [B] on the net's features at (x_t, t).
    """

    def __init__(self, net: AvatarDiT, disc: FeatureDiscriminator):
        super().__init__()
        if disc.cfg.conditional:
            raise ValueError("ScoreWithHeads: the heads judge a sample on its own (an unconditional discriminator)")
        self.net, self.disc = net, disc

    @property
    def cfg(self):
        return self.net.cfg

    def forward(self, x_t: Tensor, t: Tensor, cond) -> Tensor:
        return self.net(x_t, t, cond)

    def logits(self, x_t: Tensor, t: Tensor, cond) -> Tensor:
        """The heads' logits [B] on the score net's features at (x_t, t)."""
        return self.disc(self.net.features(x_t, t, cond, self.disc.blocks))


__all__ = ["DiscriminatorConfig", "DiscriminatorHead", "FeatureDiscriminator", "ScoreWithHeads", "default_blocks"]
