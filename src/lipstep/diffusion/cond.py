"""The condition bundle every denoiser, sampler and distillation method passes along.

Shapes (design.md §3): reference latent [B, C, h, w]; audio features [B, T, K, D] (K audio frames
around each of the T video frames); motion-frame latents [B, M, C, h, w]; visemes [B, T]; eyelid
closure [B, T] in [0, 1] (`blink`, for nets conditioned on it).
`drop_audio` / `drop_ref` are bool [B] masks: True means "this sample sees the null condition"
(used for classifier-free guidance and condition dropout). `cfg_scales` [B, 2] = (audio, reference)
guidance scales, only for students that take them as an input (FADA's CFG tokens).
Samplers never look inside a Cond; only nets do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Cond:
    reference: Tensor
    audio: Tensor
    motion: Tensor | None = None
    visemes: Tensor | None = None
    drop_audio: Tensor | None = None
    drop_ref: Tensor | None = None
    cfg_scales: Tensor | None = None
    blink: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.reference.shape[0]

    def masks(self) -> tuple[Tensor, Tensor]:
        """(drop_audio, drop_ref) as bool [B] tensors, all False when unset."""
        b, dev = self.batch_size, self.reference.device
        none = torch.zeros(b, dtype=torch.bool, device=dev)
        return (self.drop_audio if self.drop_audio is not None else none,
                self.drop_ref if self.drop_ref is not None else none)

    def drop(self, audio: Tensor | bool = False, ref: Tensor | bool = False) -> "Cond":
        """A copy with extra samples switched to the null audio and/or reference condition."""
        da, dr = self.masks()
        audio = torch.as_tensor(audio, device=da.device).expand_as(da)
        ref = torch.as_tensor(ref, device=dr.device).expand_as(dr)
        return dataclasses.replace(self, drop_audio=da | audio, drop_ref=dr | ref)

    def map(self, fn) -> "Cond":
        """Apply `fn` to every tensor field (e.g. `.to(device)`, repeat, index)."""
        return Cond(**{f.name: (fn(v) if isinstance(v, Tensor) else v)
                       for f in dataclasses.fields(self) for v in [getattr(self, f.name)]})

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Cond":
        """Move to `device`; cast floating-point fields (not masks or visemes) to `dtype`."""
        return self.map(lambda v: v.to(device=device, dtype=dtype if v.is_floating_point() else None))

    def repeat(self, n: int) -> "Cond":
        """Stack `n` copies along the batch axis (for batching several condition patterns)."""
        return self.map(lambda v: torch.cat([v] * n, 0))

    @staticmethod
    def cat(conds: list["Cond"]) -> "Cond":
        """Concatenate conds along the batch axis (fields set in one must be set in all)."""
        first = conds[0]
        out = {}
        for f in dataclasses.fields(first):
            vals = [getattr(c, f.name) for c in conds]
            if f.name in ("drop_audio", "drop_ref"):
                vals = [c.masks()[0 if f.name == "drop_audio" else 1] for c in conds]
            out[f.name] = None if vals[0] is None else torch.cat(vals, 0)
        return Cond(**out)
