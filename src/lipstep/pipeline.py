"""AvatarPipeline: a model directory in, talking-head video out.

A model directory (design.md §3; read and written by `lipstep.modeldir`, whose public names this
module re-exports) is what training writes and what `generate`, `eval` and `bench` take.

Generation (`AvatarPipeline.__call__`): crop the portrait to the model's face size, encode it to the
reference latent, encode the audio to per-frame feature windows, then generate the whole audio length
chunk by chunk (`frames` latents per chunk); each chunk sees the last `motion_frames` latents of the
previous one as motion context (the first chunk sees the reference latent repeated, as in training).
Every chunk is one sampler run of `steps` steps with multi-condition CFG (FADA Eq. 9; three condition
patterns batched into one forward, so 3 NFE per step unless both scales are 1). The latents are then
decoded and, by the caller, muxed with the original audio. The chunk loop itself is
`lipstep.samplers.sample_chunks`, which validation videos use too.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lipstep.data.faces import crop_portrait
from lipstep.data.media import SAMPLE_RATE, read_audio, read_image, write_video
from lipstep.diffusion.denoiser import Denoiser
from lipstep.errors import LipstepError
from lipstep.modeldir import (
    INFO_NAME,
    ModelInfo,
    bundled_models,
    default_model,
    describe_models,
    load_denoiser,
    load_model,
    read_info,
    resolve_model,
    save_denoiser,
    save_model,
)
from lipstep.samplers import SamplerInfo, decode_frames, sample_chunks

# ---------------------------------------------------------------------------------------------
# the pipeline


@dataclass
class Generation:
    """What one `AvatarPipeline` call produced."""

    frames: np.ndarray              # uint8 [N, S, S, 3]
    audio: np.ndarray               # float32 [L] mono at `sample_rate` (the driving audio)
    fps: float
    sample_rate: int
    nfe: int                        # network evaluations in total (all chunks)
    chunks: int
    steps: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds: crop_encode, audio, denoise, decode

    @property
    def seconds(self) -> float:
        return len(self.frames) / self.fps


class AvatarPipeline:
    """Codec + audio encoder + denoiser + schedule + default sampler (see the module docstring)."""

    def __init__(self, info: ModelInfo, codec, audio_encoder, denoiser, *, path: Path | None = None):
        self.info, self.codec, self.audio_encoder, self.denoiser = info, codec, audio_encoder, denoiser
        self.schedule = info.make_schedule()
        self.path = path

    # --- construction ----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike | None = None, *, device: str | torch.device = "cpu"
                        ) -> AvatarPipeline:
        """Load a model directory or a bundled model by name (None = the fastest bundled one)."""
        root, info, codec, audio, net = load_model(model, device=device)
        return cls(info, codec, audio, net, path=root)

    def save_pretrained(self, out: str | os.PathLike, *, half: bool = False) -> Path:
        return save_model(out, self.info, self.codec, self.audio_encoder, self.denoiser, half=half)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def clock(self) -> float:
        """`time.perf_counter()` after queued CUDA work has finished (async launches would shift timings)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    # --- building blocks (also used by validation, eval and bench) -------------------------------

    def model_fn(self) -> Denoiser:
        """The denoiser as ``(x_t, t in [0, 1], cond) -> native prediction`` (`Denoiser`)."""
        return Denoiser(self.denoiser, self.schedule)

    def crop(self, image: np.ndarray, detector: str = "auto", source: str = "the portrait") -> np.ndarray:
        """Face-centred crop of a portrait at the model's size: uint8 [S, S, 3] (`source`: its name)."""
        image = np.asarray(image)
        s = self.info.image_size
        if image.shape[:2] == (s, s) and detector == "auto":
            return image.astype(np.uint8)  # already a face crop of the right size
        return crop_portrait(image, s, detector, source=source)

    def encode_image(self, crop: np.ndarray) -> Tensor:
        """uint8 [S, S, 3] -> reference latent [1, C, h, w]."""
        x = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        with torch.no_grad():
            return self.codec.encode(x.to(self.device)).float()

    def n_frames(self, n_samples: int) -> int:
        return max(1, int(round(n_samples * self.info.fps / self.info.sample_rate)))

    @torch.no_grad()
    def generate_latents(self, reference: Tensor, audio: Tensor, *, steps: int | None = None,
                         cfg_audio: float | None = None, cfg_ref: float | None = None, seed: int = 0,
                         n_frames: int | None = None, progress: bool = False, visemes: Tensor | None = None,
                         on_chunk: Callable[[int, Tensor], None] | None = None) -> tuple[Tensor, int]:
        """Chunked sampling: reference [1, C, h, w], audio windows [N', K, D] -> (latents [N, C, h, w], NFE).

        `lipstep.samplers.sample_chunks` with this model's sampler and chunk layout: ``audio`` is padded to
        whole chunks, ``n_frames`` (default N') latents are returned, ``on_chunk(k, latents [frames, C, h, w])``
        runs as soon as chunk k is sampled (streaming consumers, `lipstep bench`'s first-chunk latency).
        """
        return sample_chunks(self.model_fn(), reference, audio, sampler=self.info.sampler, layout=self.info.layout(),
                             steps=steps, cfg_audio=cfg_audio, cfg_ref=cfg_ref, seed=seed, n_frames=n_frames,
                             progress=progress, visemes=visemes, on_chunk=on_chunk)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> np.ndarray:
        """Latents [N, C, h, w] -> uint8 frames [N, S, S, 3]."""
        return decode_frames(self.codec, latents, self.device)

    # --- the whole thing -------------------------------------------------------------------------

    def __call__(self, image: np.ndarray, audio: np.ndarray, *, steps: int | None = None,
                 cfg_audio: float | None = None, cfg_ref: float | None = None, seed: int = 0,
                 detector: str = "auto", progress: bool = False, source: str = "the portrait",
                 on_chunk: Callable[[int, Tensor], None] | None = None) -> Generation:
        """Portrait uint8 [H, W, 3] + mono float32 audio at the model's sample rate -> `Generation`.

        ``timings`` are seconds per stage (CUDA-synchronised); ``on_chunk`` as in `generate_latents`;
        ``source`` names the portrait in messages (e.g. its file).
        """
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size == 0:
            raise LipstepError("the audio is empty")
        if not np.isfinite(audio).all():
            raise LipstepError("the audio contains NaN or infinite samples")
        timings = {}
        t0 = self.clock()
        crop = self.crop(image, detector, source)
        ref = self.encode_image(crop)
        timings["crop_encode"] = self.clock() - t0
        n = self.n_frames(len(audio))
        T = self.info.frames
        t0 = self.clock()
        feats = self.audio_encoder.encode(audio, math.ceil(n / T) * T)
        timings["audio"] = self.clock() - t0
        t0 = self.clock()
        steps = steps or self.info.sampler.steps
        latents, nfe = self.generate_latents(ref, feats, steps=steps, cfg_audio=cfg_audio, cfg_ref=cfg_ref,
                                             seed=seed, n_frames=n, progress=progress, on_chunk=on_chunk)
        timings["denoise"] = self.clock() - t0
        t0 = self.clock()
        frames = self.decode(latents)
        timings["decode"] = self.clock() - t0
        return Generation(frames=frames, audio=audio, fps=self.info.fps, sample_rate=self.info.sample_rate,
                          nfe=nfe, chunks=math.ceil(n / T), steps=steps, timings=timings)


def generate_file(model, image_path, audio_path, out_path, *, steps=None, cfg_audio=None, cfg_ref=None,
                  seed: int = 0, detector: str = "auto", max_seconds: float = 600.0, progress: bool = True,
                  device: str = "cpu") -> tuple[Path, Generation, float]:
    """`lipstep generate`: read the inputs, generate, mux the original audio, write the video atomically."""
    out_path = Path(out_path)
    if out_path.suffix.lower() not in (".mp4", ".mkv", ".mov"):
        raise LipstepError(f"--out {out_path}: use a .mp4, .mkv or .mov file name")
    image = read_image(image_path)          # MediaError (a LipstepError) names the file and the problem
    audio = read_audio(audio_path, SAMPLE_RATE, max_seconds=max_seconds)  # bad audio fails before loading
    pipe = AvatarPipeline.from_pretrained(model, device=device)
    if pipe.info.sample_rate != SAMPLE_RATE:
        audio = read_audio(audio_path, pipe.info.sample_rate, max_seconds=max_seconds)
    if len(audio) < pipe.info.sample_rate / pipe.info.fps:
        ms = len(audio) / pipe.info.sample_rate * 1000
        raise LipstepError(f"{audio_path}: {ms:.1f} ms of audio is shorter than one video frame")
    if len(audio) > max_seconds * pipe.info.sample_rate:
        raise LipstepError(f"{audio_path}: {len(audio) / pipe.info.sample_rate:.0f} s of audio is longer than "
                           f"--max-seconds {max_seconds:g}")
    t0 = time.perf_counter()
    result = pipe(image, audio, steps=steps, cfg_audio=cfg_audio, cfg_ref=cfg_ref, seed=seed, detector=detector,
                  progress=progress, source=str(image_path))
    t1 = time.perf_counter()
    write_video(out_path, result.frames, result.fps, audio=audio, sample_rate=result.sample_rate)
    result.timings["mux"] = time.perf_counter() - t1
    return out_path, result, time.perf_counter() - t0


__all__ = [
    "INFO_NAME",
    "AvatarPipeline",
    "Generation",
    "ModelInfo",
    "SamplerInfo",
    "bundled_models",
    "default_model",
    "describe_models",
    "generate_file",
    "load_denoiser",
    "read_info",
    "resolve_model",
    "save_denoiser",
    "save_model",
]
