"""Chunked generation: a whole audio track sampled chunk by chunk with any sampler.

`sample_chunks` is what the pipeline, validation videos and evaluation run: ``frames`` latents per
chunk, each chunk one sampler run of ``steps`` steps. Each chunk sees ``motion_frames`` latents of
motion context: the reference (the first chunk, and every ``anchor_every``-th chunk when re-anchoring)
or the last latents of the previous chunk. A residual model (``residual > 0``) samples offsets from the
reference, ``(z − z_ref)·residual``; what comes back is always latents.

Guidance is applied here, not by the sampler: ``cfg`` wraps the denoiser in FADA Eq. 9 (three
condition patterns per step, one pass at scales 1), ``embedded`` passes the scales to a CFG-token
student as ``cond.cfg_scales`` (one pass at any scales).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from lipstep.diffusion.cond import Cond
from lipstep.diffusion.denoiser import Denoiser
from lipstep.diffusion.guidance import check_scale, multi_cfg, nfe_per_step
from lipstep.samplers.registry import SamplerInfo


@dataclass(frozen=True)
class ChunkLayout:
    """How a model cuts a video into chunks (from its `lipstep.modeldir.ModelInfo`)."""

    frames: int = 8                 # latents per chunk
    motion_frames: int = 2          # latents of motion context per chunk
    residual: float = 0.0           # > 0: the model samples (z − z_ref)·residual
    anchor_every: int = 0           # > 0: every k-th chunk sees the reference as motion context again


@torch.no_grad()
def sample_chunks(denoiser: Denoiser, reference: Tensor, audio: Tensor, *, sampler: SamplerInfo, layout: ChunkLayout,
                  steps: int | None = None, cfg_audio: float | None = None, cfg_ref: float | None = None,
                  seed: int = 0, n_frames: int | None = None, progress: bool = False, visemes: Tensor | None = None,
                  on_chunk: Callable[[int, Tensor], None] | None = None) -> tuple[Tensor, int]:
    """Reference [1, C, h, w], audio windows [N', K, D] -> (latents [N, C, h, w], NFE).

    ``audio`` is padded with its last window to whole chunks; ``n_frames`` (default N') latents are
    returned. ``steps`` / ``cfg_audio`` / ``cfg_ref`` default to the sampler record's. ``on_chunk(k,
    latents [frames, C, h, w])`` is called as soon as chunk k is sampled.
    """
    steps = steps or sampler.steps
    cfg_audio = sampler.cfg_audio if cfg_audio is None else cfg_audio
    cfg_ref = sampler.cfg_ref if cfg_ref is None else cfg_ref
    check_scale(float(cfg_audio), "cfg_audio")
    check_scale(float(cfg_ref), "cfg_ref")
    options = sampler.sampler_options()
    timesteps = options.timesteps(denoiser.schedule, steps)
    T, M = layout.frames, layout.motion_frames
    n = int(n_frames or len(audio))
    chunks = math.ceil(n / T)
    if len(audio) < chunks * T:
        audio = torch.cat([audio, audio[-1:].expand(chunks * T - len(audio), *audio.shape[1:])])
    dev = next(denoiser.net.parameters()).device
    reference = reference.to(dev, torch.float32)
    C, h, w = reference.shape[1:]
    embedded = sampler.guidance == "embedded"
    fn = denoiser if embedded else multi_cfg(denoiser, cfg_audio, cfg_ref)
    scales = torch.tensor([[float(cfg_audio), float(cfg_ref)]], device=dev) if embedded else None
    per_step = 1 if embedded else nfe_per_step(cfg_audio, cfg_ref)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    first = torch.zeros_like(reference) if layout.residual > 0 else reference  # the reference, in model space
    motion, out, nfe = None, [], 0
    bar = tqdm(total=chunks * steps, desc="generate", unit="step", disable=not progress, dynamic_ncols=True)
    for k in range(chunks):
        if M and (k == 0 or (layout.anchor_every and k % layout.anchor_every == 0)):
            motion = first[:, None].expand(1, M, C, h, w)  # the first chunk, or a re-anchored one
        a = audio[k * T:(k + 1) * T][None].to(dev, torch.float32)
        v = visemes[k * T:(k + 1) * T][None].to(dev) if visemes is not None else None
        cond = Cond(reference=reference, audio=a, motion=motion, visemes=v, cfg_scales=scales)
        noise = torch.randn((1, T, C, h, w), generator=gen).to(dev)
        z = sampler.kind(fn, noise, timesteps, cond, schedule=denoiser.schedule, generator=gen,
                         callback=lambda *_: bar.update(1), **options.kwargs())
        nfe += steps * per_step
        if M:
            motion = z[:, -M:]
        if layout.residual > 0:
            z = reference[:, None] + z / layout.residual
        out.append(z[0])
        if on_chunk is not None:
            on_chunk(k, z[0])
    bar.close()
    return torch.cat(out)[:n], nfe


@torch.no_grad()
def decode_frames(codec, latents: Tensor, device: torch.device | str = "cpu") -> np.ndarray:
    """Latents [N, C, h, w] -> uint8 frames [N, S, S, 3] through ``codec.decode_video`` on ``device``."""
    x = codec.decode_video(latents[None].to(device))[0]  # [N, 3, S, S] in [-1, 1]
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


__all__ = ["ChunkLayout", "decode_frames", "sample_chunks"]
