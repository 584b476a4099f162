"""Hybrid mode (TempoSyncDiff's E2, algorithms.md §5.3): one machine denoises, the frames are rendered later.

``lipstep generate --emit latents`` (`generate_latents_file`) runs the stream path of `lipstep.pipeline`
without decoding and writes one safetensors file, atomically:

    latents   float32 [N, C, h, w]   what full mode decodes (after the residual offset), one per video frame
    audio     float32 [L]            the driving audio at the model's sample rate (muxed into the video)
    header    "lipstep_latents": JSON of `LatentsMeta` (the model, its codec's identity, fps, sample rate,
              frame count, decode chunk, sampling settings)

``lipstep decode LATENTS OUT.mp4`` (`decode_file`) renders it with the codec of the model that made it (or
``--model``) in the chunks full mode decodes, so its frames are those of ``lipstep generate`` with the same
settings, bit for bit. A codec whose identity (`Codec.identity`: sha256 of its kind, scaling and weights)
differs from the recorded one is refused: its frames would be wrong without any sign of it.

What crosses the wire is the latents: ``C·h·w·4`` bytes a frame (`latent_bytes_per_second`); the audio is
there so the file renders on its own.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from lipstep import __version__
from lipstep.codecs.vae import load_codec
from lipstep.config import check, from_dict, to_dict
from lipstep.data.features import frame_count
from lipstep.data.media import VideoWriter
from lipstep.errors import ConfigError, LipstepError
from lipstep.fsutil import atomic_path, read_checksums
from lipstep.modeldir import components_dir, resolve_model
from lipstep.pipeline import StreamStats, load_inputs
from lipstep.samplers import decode_frames

HEADER_KEY = "lipstep_latents"
LATENTS_FORMAT = 1
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov")


@dataclass
class LatentsMeta:
    """The JSON header of a latents file (``lipstep_latents``)."""

    frames: int                         # N: video frames = latents
    fps: float
    sample_rate: int                    # of the audio tensor
    chunk_frames: int                   # full mode decodes this many latents per call (the model's chunk)
    latent_shape: list[int]             # [C, h, w]
    image_size: int                     # frame side in pixels
    codec_sha256: str                   # `Codec.identity()` of the codec that must render them
    model: str = ""                     # the model directory that made them
    denoiser_sha256: str | None = None  # its denoiser weights (checksums.json), for the record
    runtime: str = "torch"
    steps: int = 0
    cfg_audio: float | None = None      # None: the model's default
    cfg_ref: float | None = None
    seed: int = 0
    nfe: int = 0
    format: int = LATENTS_FORMAT
    lipstep_version: str = __version__
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def validate(self) -> None:
        check(self.format <= LATENTS_FORMAT, f"latents format {self.format} is newer than this lipstep's "
                                             f"({LATENTS_FORMAT}); upgrade lipstep")
        check(self.frames >= 1 and self.chunk_frames >= 1, "frames and chunk_frames must be >= 1")
        check(self.fps > 0 and self.sample_rate > 0, "fps and sample_rate must be > 0")
        check(len(self.latent_shape) == 3 and min(self.latent_shape) >= 1, "latent_shape must be [C, h, w]")
        check(len(self.codec_sha256) == 64, "codec_sha256 must be a sha256 hex digest")

    @property
    def bytes_per_second(self) -> float:
        return latent_bytes_per_second(self.latent_shape, self.fps)


def latent_bytes_per_second(latent_shape, fps: float, bytes_per_value: int = 4) -> float:
    """Bytes of float32 latents per second of video: C·h·w·4·fps."""
    return float(np.prod(latent_shape)) * bytes_per_value * fps


# ---------------------------------------------------------------------------------------------
# the file


def write_latents(path: str | os.PathLike, latents: Tensor, audio: np.ndarray, meta: LatentsMeta) -> Path:
    """Write latents [N, C, h, w], audio [L] and `meta` as one safetensors file, atomically."""
    path = Path(path)
    tensors = {"latents": latents.detach().float().contiguous().cpu(),
               "audio": torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={HEADER_KEY: json.dumps(to_dict(meta))})
    return path


def read_latents(path: str | os.PathLike) -> tuple[Tensor, np.ndarray, LatentsMeta]:
    """(latents [N, C, h, w], audio [L], meta) of a latents file; a one-line `LipstepError` naming the file when it
    is missing, damaged, not a latents file, or inconsistent."""
    path = Path(path)
    if not path.is_file():
        raise LipstepError(f"{path}: {'is a directory' if path.is_dir() else 'file not found'}")
    try:
        with safe_open(str(path), "pt") as f:
            header, keys = f.metadata() or {}, set(f.keys())
            tensors = {k: f.get_tensor(k) for k in ("latents", "audio") if k in keys}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own types for a damaged file
        raise LipstepError(f"{path}: not a readable latents file ({' '.join(str(e).split())[:160]})") from None
    if HEADER_KEY not in header or set(tensors) != {"latents", "audio"}:
        raise LipstepError(f"{path}: not a lipstep latents file (made by lipstep generate --emit latents)")
    try:
        meta = from_dict(LatentsMeta, json.loads(header[HEADER_KEY]))
        meta.validate()
    except (ValueError, ConfigError) as e:
        raise LipstepError(f"{path}: damaged latents header ({e})") from None
    latents, audio = tensors["latents"], tensors["audio"]
    if latents.dtype != torch.float32 or list(latents.shape) != [meta.frames, *meta.latent_shape]:
        raise LipstepError(f"{path}: latents are {latents.dtype} {list(latents.shape)}, the header says float32 "
                           f"{[meta.frames, *meta.latent_shape]}")
    if audio.dtype != torch.float32 or audio.ndim != 1 or frame_count(len(audio), meta.sample_rate, meta.fps) \
            != meta.frames:
        raise LipstepError(f"{path}: its audio ({audio.dtype} {list(audio.shape)}) does not drive {meta.frames} "
                           f"frames at {meta.fps:g} fps")
    if not (torch.isfinite(latents).all() and torch.isfinite(audio).all()):
        raise LipstepError(f"{path}: contains NaN or infinite values")
    return latents, audio.numpy(), meta


# ---------------------------------------------------------------------------------------------
# the two halves


def generate_latents_file(model, image_path, audio_path, out_path, *, steps=None, cfg_audio=None, cfg_ref=None,
                          seed: int = 0, detector: str = "auto", max_seconds: float | None = None,
                          progress: bool = True, device: str = "cpu", runtime: str = "torch",
                          threads: int | None = None, blinks_per_second: float | None = None
                          ) -> tuple[Path, StreamStats, float, LatentsMeta]:
    """`lipstep generate --emit latents`: as `lipstep.pipeline.generate_file`, but the latents file instead of the
    video (nothing is decoded). Returns (path, stream stats, seconds, header)."""
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".safetensors":
        raise LipstepError(f"--out {out_path}: --emit latents writes a .safetensors file")
    pipe, image, audio = load_inputs(model, image_path, audio_path, max_seconds=max_seconds, device=device,
                                     runtime=runtime, threads=threads)
    t0 = time.perf_counter()
    if blinks_per_second is not None:
        pipe.check_blink_rate(blinks_per_second)  # before any work
    latents, stats = pipe.emit_latents(image, audio, steps=steps, cfg_audio=cfg_audio, cfg_ref=cfg_ref, seed=seed,
                                       detector=detector, progress=progress, source=str(image_path),
                                       blinks_per_second=blinks_per_second)
    info = pipe.info
    meta = LatentsMeta(frames=len(latents), fps=info.fps, sample_rate=info.sample_rate, chunk_frames=info.frames,
                       latent_shape=list(latents.shape[1:]), image_size=info.image_size,
                       codec_sha256=pipe.codec.identity(), model=str(Path(pipe.path).resolve()) if pipe.path else "",
                       denoiser_sha256=(read_checksums(components_dir(pipe.path) / "denoiser") or {}).get(
                           "model.safetensors")
                       if pipe.path else None, runtime=pipe.runtime, steps=stats.steps, cfg_audio=cfg_audio,
                       cfg_ref=cfg_ref, seed=seed, nfe=stats.nfe)
    write_latents(out_path, latents, audio, meta)
    return out_path, stats, time.perf_counter() - t0, meta


def _decode_model(path: Path, meta: LatentsMeta, model) -> Path:
    """The model directory whose codec renders a latents file: `model`, else the one recorded in it."""
    if model is not None:
        return resolve_model(model)
    if meta.model and Path(meta.model).is_dir():
        return Path(meta.model)
    raise LipstepError(f"{path} was made by {meta.model or 'an unrecorded model'}, which is not here; "
                       f"give the model with --model")


def decode_file(latents_path, out_path, *, model=None, device: str = "cpu") -> tuple[Path, LatentsMeta, float]:
    """`lipstep decode`: render a latents file to the video full mode writes (same frames, bit for bit).

    ``model`` (default: the one recorded in the file) must have the codec that made the latents. Returns
    (path, header, seconds).
    """
    out_path = Path(out_path)
    if out_path.suffix.lower() not in VIDEO_SUFFIXES:
        raise LipstepError(f"{out_path}: use a .mp4, .mkv or .mov file name")
    path = Path(latents_path)
    latents, audio, meta = read_latents(path)
    root = _decode_model(path, meta, model)
    codec = load_codec(components_dir(root) / "codec").to(device)  # a complete model directory's
    if codec.identity() != meta.codec_sha256:
        raise LipstepError(f"{path} was made with codec {meta.codec_sha256[:12]}, but {root / 'codec'} is "
                           f"{codec.identity()[:12]}; decode with the model that made it (--model)")
    t0 = time.perf_counter()
    with VideoWriter(out_path, meta.fps, sample_rate=meta.sample_rate) as writer:
        writer.write_audio(audio)
        for k in range(0, meta.frames, meta.chunk_frames):  # full mode's decode calls: one per chunk
            for image in decode_frames(codec, latents[k:k + meta.chunk_frames], device):
                writer.write_frame(image)
    return out_path, meta, time.perf_counter() - t0


__all__ = ["HEADER_KEY", "LatentsMeta", "decode_file", "generate_latents_file", "latent_bytes_per_second",
           "read_latents", "write_latents"]
