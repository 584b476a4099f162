"""Chunked generation: a whole audio track sampled chunk by chunk with any sampler.

`ChunkSampler` is the one chunk-stepping core: each `step` samples the next chunk of ``frames``
latents, one sampler run of ``steps`` steps. `sample_chunks` runs it over a whole audio track
(validation videos, evaluation); the pipeline's streaming generation runs it chunk by chunk as audio
arrives, so the two give the same latents for the same seed. Each chunk sees ``motion_frames`` latents of
motion context: the reference (the first chunk, and every ``anchor_every``-th chunk when re-anchoring)
or the last latents of the previous chunk. A residual model (``residual > 0``) samples offsets from the
reference, ``(z − z_ref)·residual``; what comes back is always latents.

Blinks (``blinks_per_second > 0``): each frame's eyelid closure comes from a `BlinkSchedule` (a function
of the seed and the frame index), given to the denoiser as ``cond.blink`` (a net that reads blinks draws
them) and, with an eye net (``eyes``, `lipstep.nets.eyes.EyeNet`), drawn on the chunk's latents after
sampling; the motion context is taken before, so the eye net never feeds back into the denoiser.

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

from lipstep.data.blinks import BlinkSchedule
from lipstep.diffusion.cond import Cond
from lipstep.diffusion.denoiser import Denoiser
from lipstep.diffusion.guidance import check_scale, multi_cfg, nfe_per_step
from lipstep.nets.eyes import EyeNet
from lipstep.samplers.registry import SamplerInfo


@dataclass(frozen=True)
class ChunkLayout:
    """How a model cuts a video into chunks (from its `lipstep.modeldir.ModelInfo`)."""

    frames: int = 8                 # latents per chunk
    motion_frames: int = 2          # latents of motion context per chunk
    residual: float = 0.0           # > 0: the model samples (z − z_ref)·residual
    anchor_every: int = 0           # > 0: every k-th chunk sees the reference as motion context again
    blinks_per_second: float = 0.0  # > 0: blinks drawn at this rate (read by the denoiser and/or an eye net)
    fps: float = 25.0               # frames per second (the blink schedule's clock)


def net_device(net) -> torch.device:
    """Where a network's inputs go: its parameters' device, or the ``device`` a stand-in without parameters
    names (an ONNX Runtime session behind the same call, `lipstep.runtime.onnx.OnnxNet`)."""
    device = getattr(net, "device", None)
    return torch.device(device) if device is not None else next(net.parameters()).device


class ChunkSampler:
    """The chunk-stepping core: one call of `step` samples the next chunk, carrying what chunks share.

    What carries from chunk to chunk is the motion context (the last ``motion_frames`` latents of the
    previous chunk, in the model's own space) and the random generator (each chunk's noise, and any noise
    the sampler draws, come from one generator seeded once), so chunks sampled one by one as their audio
    arrives equal the chunks of `sample_chunks` over the whole audio, bit for bit. It keeps nothing else:
    its memory does not grow with the number of chunks.
    """

    def __init__(self, denoiser: Denoiser, reference: Tensor, *, sampler: SamplerInfo, layout: ChunkLayout,
                 steps: int | None = None, cfg_audio: float | None = None, cfg_ref: float | None = None,
                 seed: int = 0, callback: Callable[..., None] | None = None, eyes: EyeNet | None = None):
        self.steps = steps or sampler.steps
        self.eyes = eyes
        cfg_audio = sampler.cfg_audio if cfg_audio is None else cfg_audio
        cfg_ref = sampler.cfg_ref if cfg_ref is None else cfg_ref
        check_scale(float(cfg_audio), "cfg_audio")
        check_scale(float(cfg_ref), "cfg_ref")
        self.sampler, self.layout, self.schedule, self.callback = sampler, layout, denoiser.schedule, callback
        self.options = sampler.sampler_options()
        self.timesteps = self.options.timesteps(denoiser.schedule, self.steps)
        self.device = net_device(denoiser.net)
        self.reference = reference.to(self.device, torch.float32)
        embedded = sampler.guidance == "embedded"
        self.fn = denoiser if embedded else multi_cfg(denoiser, cfg_audio, cfg_ref)
        self.scales = torch.tensor([[float(cfg_audio), float(cfg_ref)]], device=self.device) if embedded else None
        self.nfe_per_chunk = self.steps * (1 if embedded else nfe_per_step(cfg_audio, cfg_ref))
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed))
        # the reference in model space: the motion context of the first (and every re-anchored) chunk
        self.first = torch.zeros_like(self.reference) if layout.residual > 0 else self.reference
        self.motion: Tensor | None = None
        # eyelid closure per frame, a function of (seed, frame index) alone: chunk k's frames are k·T .. k·T + T − 1
        self.blinks = BlinkSchedule(layout.blinks_per_second, layout.fps, seed) if layout.blinks_per_second else None
        self.chunks = 0  # chunks sampled so far (the index of the next one)
        self.trials = 0  # `trial` runs so far (their evaluations count in `nfe`)

    @property
    def nfe(self) -> int:
        """Network evaluations so far."""
        return (self.chunks + self.trials) * self.nfe_per_chunk

    def trial(self, audio: Tensor, visemes: Tensor | None = None) -> Tensor:
        """The latents `step` would give for these windows, with nothing carried forward: the next `step` draws
        the same noise from the same motion context (a preview of a chunk whose audio is still arriving)."""
        state, motion, chunks = self.generator.get_state(), self.motion, self.chunks
        try:
            return self.step(audio, visemes)
        finally:
            self.generator.set_state(state)
            self.motion, self.chunks = motion, chunks
            self.trials += 1

    @torch.no_grad()
    def step(self, audio: Tensor, visemes: Tensor | None = None) -> Tensor:
        """Audio windows of one chunk [frames, K, D] (visemes [frames]) -> its latents [frames, C, h, w]."""
        T, M = self.layout.frames, self.layout.motion_frames
        if len(audio) != T:
            raise ValueError(f"a chunk needs audio windows for {T} frames, got {len(audio)}")
        C, h, w = self.reference.shape[1:]
        k = self.chunks
        if M and (k == 0 or (self.layout.anchor_every and k % self.layout.anchor_every == 0)):
            self.motion = self.first[:, None].expand(1, M, C, h, w)  # the first chunk, or a re-anchored one
        a = audio[None].to(self.device, torch.float32)
        v = visemes[None].to(self.device) if visemes is not None else None
        blink = None
        if self.blinks is not None:
            blink = torch.from_numpy(self.blinks.frames(k * T, T))[None].to(self.device)
        cond = Cond(reference=self.reference, audio=a, motion=self.motion, visemes=v, cfg_scales=self.scales,
                    blink=blink)
        noise = torch.randn((1, T, C, h, w), generator=self.generator).to(self.device)
        callback = self.callback or (lambda *_: None)
        z = self.sampler.kind(self.fn, noise, self.timesteps, cond, schedule=self.schedule,
                              generator=self.generator, callback=callback, **self.options.kwargs())
        if M:
            self.motion = z[:, -M:]
        if self.layout.residual > 0:
            z = self.reference[:, None] + z / self.layout.residual
        if self.eyes is not None and blink is not None:
            z = self.eyes.close_eyes(z[0], blink[0])[None]
        self.chunks += 1
        return z[0]


@torch.no_grad()
def sample_chunks(denoiser: Denoiser, reference: Tensor, audio: Tensor, *, sampler: SamplerInfo, layout: ChunkLayout,
                  steps: int | None = None, cfg_audio: float | None = None, cfg_ref: float | None = None,
                  seed: int = 0, n_frames: int | None = None, progress: bool = False, visemes: Tensor | None = None,
                  on_chunk: Callable[[int, Tensor], None] | None = None,
                  eyes: EyeNet | None = None) -> tuple[Tensor, int]:
    """Reference [1, C, h, w], audio windows [N', K, D] -> (latents [N, C, h, w], NFE).

    ``audio`` is padded with its last window to whole chunks; ``n_frames`` (default N') latents are
    returned. ``steps`` / ``cfg_audio`` / ``cfg_ref`` default to the sampler record's. ``on_chunk(k,
    latents [frames, C, h, w])`` is called as soon as chunk k is sampled. Each chunk is one
    `ChunkSampler.step`, as in streaming generation (``eyes``: an eye net drawing the scheduled blinks).
    """
    T = layout.frames
    n = int(n_frames or len(audio))
    chunks = math.ceil(n / T)
    if len(audio) < chunks * T:
        audio = torch.cat([audio, audio[-1:].expand(chunks * T - len(audio), *audio.shape[1:])])
    steps = steps or sampler.steps
    bar = tqdm(total=chunks * steps, desc="generate", unit="step", disable=not progress, dynamic_ncols=True)
    core = ChunkSampler(denoiser, reference, sampler=sampler, layout=layout, steps=steps, cfg_audio=cfg_audio,
                        cfg_ref=cfg_ref, seed=seed, callback=lambda *_: bar.update(1), eyes=eyes)
    out = []
    for k in range(chunks):
        v = visemes[k * T:(k + 1) * T] if visemes is not None else None
        out.append(core.step(audio[k * T:(k + 1) * T], v))
        if on_chunk is not None:
            on_chunk(k, out[-1])
    bar.close()
    return torch.cat(out)[:n], core.nfe


@torch.no_grad()
def decode_frames(codec, latents: Tensor, device: torch.device | str = "cpu") -> np.ndarray:
    """Latents [N, C, h, w] -> uint8 frames [N, S, S, 3] through ``codec.decode_video`` on ``device``."""
    x = codec.decode_video(latents[None].to(device))[0]  # [N, 3, S, S] in [-1, 1]
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


__all__ = ["ChunkLayout", "ChunkSampler", "decode_frames", "net_device", "sample_chunks"]
