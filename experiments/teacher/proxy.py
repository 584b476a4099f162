"""Shared pieces of the fine-tune proxies and the denoiser probe (experiments/teacher/*/).

Each proxy fine-tunes the bundled teacher v3 for a few steps with one change to its objective and
saves the EMA weights as a model directory that `lipstep eval` and `denoiser_probe/probe.py` read.
"""
from pathlib import Path

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


def finetune(method, ds: WindowDataset, pipe: AvatarPipeline, out: Path, steps: int) -> None:
    """The proxy fine-tune (lr 2e-4, 20 warm-up steps, EMA 0.98, batch 8); saves OUT/model."""
    state = train(method, ds, TrainConfig(steps=steps, batch_size=8, lr=2e-4, warmup_steps=20, ema_decay=0.98,
                                          checkpoint_every=10**6, log_every=10), out, progress=True)
    save_model(out / "model", pipe.info, pipe.codec, pipe.audio_encoder, state.emas["denoiser"].shadow.eval())
    print("done", flush=True)
