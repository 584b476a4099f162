"""Classifier-free guidance over two conditions (audio, reference) and the dropout that trains it.

FADA Eq. 9 (multi-CFG), with p = the denoiser's native prediction::

    p = p_b + cfg_ref·(p_r − p_b) + cfg_audio·(p_a − p_r)

    p_a = p(x_t, t, audio + reference)      full condition
    p_r = p(x_t, t, reference only)         audio dropped
    p_b = p(x_t, t, neither)                audio and reference dropped

Rewritten as ``(1 − cfg_ref)·p_b + (cfg_ref − cfg_audio)·p_r + cfg_audio·p_a`` the weights sum to 1,
so the combination is the same whether p is eps, VP v or flow velocity (each is affine in
(x0, eps) at fixed (x_t, t)): guiding native predictions equals guiding x0 and eps. With both
scales 1 it is exactly p_a. The drop order is fixed here and only here: the audio is dropped
first (p_r keeps the reference), then both; "reference dropped, audio kept" never appears in Eq. 9,
so ``condition_dropout`` never produces it either.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from lipstep.diffusion.cond import Cond
from lipstep.diffusion.schedules import append_dims
from lipstep.errors import ConfigError

Denoiser = Callable[[Tensor, Tensor, Cond], Tensor]
Scale = float | Tensor

MAX_SCALE = 100.0   # far above any useful scale (1-10); NaN, inf or huge ones give black or saturated frames


def check_scale(value: float, name: str) -> None:
    """Refuse a guidance scale that is not a number from 0 to `MAX_SCALE` (`name`: e.g. --cfg-audio)."""
    if not (math.isfinite(value) and 0.0 <= value <= MAX_SCALE):
        raise ConfigError(f"{name} must be a guidance scale from 0 to {MAX_SCALE:g}, got {value:g}")


def _is_one(scale: Scale) -> bool:
    """True when a scalar or per-sample scale is 1 everywhere."""
    return bool(torch.all(torch.as_tensor(scale) == 1))


def nfe_per_step(cfg_audio: Scale, cfg_ref: Scale) -> int:
    """Network evaluations per sampler step: 1 without guidance, 3 with (batched into one forward)."""
    return 1 if _is_one(cfg_audio) and _is_one(cfg_ref) else 3


def combine_multi_cfg(p_a: Tensor, p_r: Tensor, p_b: Tensor, cfg_audio: Scale, cfg_ref: Scale) -> Tensor:
    """Eq. 9 on given predictions; scales are floats or per-sample [B] tensors (broadcast over dims)."""
    out_dtype = torch.promote_types(p_a.dtype, torch.float32)
    w_a = append_dims(torch.as_tensor(cfg_audio, device=p_a.device, dtype=out_dtype), p_a.ndim)
    w_r = append_dims(torch.as_tensor(cfg_ref, device=p_a.device, dtype=out_dtype), p_a.ndim)
    p_a, p_r, p_b = p_a.to(out_dtype), p_r.to(out_dtype), p_b.to(out_dtype)
    return p_b + w_r * (p_r - p_b) + w_a * (p_a - p_r)


def guidance_conds(cond: Cond) -> Cond:
    """The three Eq. 9 condition patterns stacked on the batch axis: [full; audio dropped; both dropped]."""
    return Cond.cat([cond, cond.drop(audio=True), cond.drop(audio=True, ref=True)])


def multi_cfg(denoiser: Denoiser, cfg_audio: Scale, cfg_ref: Scale) -> Denoiser:
    """Wrap ``denoiser`` as FADA Eq. 9 guidance: one forward of batch 3B, or the plain call at scales 1."""
    if _is_one(cfg_audio) and _is_one(cfg_ref):
        return denoiser

    def guided(x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        t = torch.as_tensor(t, device=x_t.device)
        t3 = t if t.ndim == 0 else t.repeat(3)
        pred = denoiser(x_t.repeat(3, *[1] * (x_t.ndim - 1)), t3, guidance_conds(cond))  # [3B, ...]
        p_a, p_r, p_b = pred.chunk(3)
        return combine_multi_cfg(p_a, p_r, p_b, cfg_audio, cfg_ref)

    return guided


def condition_dropout(cond: Cond, generator: torch.Generator | None, p_audio: float = 0.1,
                      p_both: float = 0.1) -> Cond:
    """Teacher-training dropout: per sample, one uniform u decides the pattern.

    ``u < p_both``: drop audio and reference; else ``u < p_both + p_audio``: drop audio only; else
    keep both. So P(both dropped) = p_both, P(audio only dropped) = p_audio (marginals). Existing
    drop masks in ``cond`` are kept (OR-ed). ``generator=None`` uses torch's global RNG.
    """
    if min(p_audio, p_both) < 0 or p_audio + p_both > 1:
        raise ValueError(f"condition_dropout: need p_audio, p_both >= 0 and p_audio + p_both <= 1, "
                         f"got {p_audio}, {p_both}")
    device = generator.device if generator is not None else cond.reference.device
    u = torch.rand(cond.batch_size, generator=generator, device=device).to(cond.reference.device)
    both = u < p_both
    audio_only = (u >= p_both) & (u < p_both + p_audio)
    return cond.drop(audio=both | audio_only, ref=both)
