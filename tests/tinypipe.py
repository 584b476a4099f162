"""A tiny untrained pipeline built in memory (no training, no files): 16 px frames through the lossless
pixel codec, log-mel audio, a 2-block AvatarDiT with random weights. Mechanics only, in milliseconds."""

import numpy as np
import torch

from lipstep.audio import MelEncoder
from lipstep.codecs.vae import CodecConfig, build_codec
from lipstep.nets.dit import AvatarDiT, DiTConfig
from lipstep.pipeline import AvatarPipeline, ModelInfo, SamplerInfo


def tiny_pipeline(anchor_every: int = 0, frames: int = 4) -> AvatarPipeline:
    """Chained chunks (``anchor_every=0``) and DDIM with eta > 0, so both the motion context and the random
    generator must carry from chunk to chunk for streamed frames to equal whole-file frames."""
    codec = build_codec(CodecConfig(kind="pixel", image_size=16, factor=2))  # 16 px -> 12 x 8 x 8
    cfg = DiTConfig.preset("tiny", latent_channels=12, latent_size=8, patch=2, frames=frames, motion_frames=2,
                           audio_mean=-8.8, audio_std=3.3, channel_context=True)
    net = AvatarDiT(cfg).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the DiT starts zero-initialised (its output would ignore every input)
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    info = ModelInfo(kind="student", schedule="vp_x0", sampler=SamplerInfo(name="ddim", steps=2, options={"eta": 0.5}),
                     frames=frames, motion_frames=2, image_size=16, residual=4.0, anchor_every=anchor_every)
    return AvatarPipeline(info, codec, MelEncoder(16, 80), net)


def portrait(size: int = 16, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)
