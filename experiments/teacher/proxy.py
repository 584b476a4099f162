"""Shared pieces of the fine-tune proxies and the denoiser probe (experiments/teacher/*/).

Each proxy fine-tunes the bundled teacher v3 for a few steps with one change to its objective and
saves the EMA weights as a model directory that `lipstep eval` and `denoiser_probe/probe.py` read.
"""
from pathlib import Path

import numpy as np
import torch

from lipstep.codecs.cache import encode_prepared
from lipstep.data.dataset import WindowConfig, WindowDataset
from lipstep.pipeline import AvatarPipeline, save_model
from lipstep.train.loop import TrainConfig, train

V3 = "src/lipstep/weights/teacher"


def load(model: str = V3) -> AvatarPipeline:
    """A model directory with its codec in float32."""
    pipe = AvatarPipeline.from_pretrained(model)
    pipe.codec.float()
    return pipe


def windows(pipe: AvatarPipeline, prepared: Path, split: str = "train") -> tuple[Path, WindowDataset]:
    """(latent cache dir, latent windows of a split) of a prepared directory, for the pipeline's codec."""
    cache = encode_prepared(prepared, pipe.codec, progress=False)
    ds = WindowDataset(prepared, split, WindowConfig(frames=pipe.info.frames, motion_frames=pipe.info.motion_frames),
                       latents=cache, pixels=False)
    return cache, ds


def test_windows(model: str, prepared: Path, n: int) -> tuple[AvatarPipeline, dict]:
    """(pipeline with a float32 denoiser in eval mode, a batch of ``n`` held-out test windows): the same
    windows for a given n (seed 0), with latents, reference and motion latents, audio and mouth labels."""
    torch.manual_seed(0)
    pipe = load(model)
    pipe.denoiser.float().eval()
    _, ds = windows(pipe, prepared, "test")
    idx = np.random.default_rng(0).choice(len(ds), size=min(n, len(ds)), replace=False)
    items = [ds[int(i)] for i in idx]
    keys = ("latents", "reference_latent", "motion_latents", "audio", "mouth")
    return pipe, {k: torch.stack([it[k] for it in items]) for k in keys}


def finetune(method, ds: WindowDataset, pipe: AvatarPipeline, out: Path, steps: int) -> None:
    """The proxy fine-tune (lr 2e-4, 20 warm-up steps, EMA 0.98, batch 8); saves OUT/model."""
    state = train(method, ds, TrainConfig(steps=steps, batch_size=8, lr=2e-4, warmup_steps=20, ema_decay=0.98,
                                          checkpoint_every=10**6, log_every=10), out, progress=True)
    save_model(out / "model", pipe.info, pipe.codec, pipe.audio_encoder, state.emas["denoiser"].shadow.eval())
    print("done", flush=True)
