"""Latent codecs: frames ``[N, 3, H, W]`` in [-1, 1] <-> scaled latents ``[N, C, H/f, W/f]``.

A `Codec` wraps a diffusers autoencoder behind two calls, `encode` and `decode`, and owns the
latent scaling (LDM, Rombach et al. 2022, §4.3.2 and App. D.1): the diffusion model only ever sees

    z_scaled = (z - shift) * scale        and the decoder gets    z = z_scaled / scale + shift

with ``scale = scaling_factor`` and ``shift = shift_factor`` (0 when absent), or per channel
``scale = scaling_factor / latents_std`` and ``shift = latents_mean`` when a diffusers config
gives those (the convention of diffusers' pipelines). So latents are roughly unit-variance.

Kinds (``CodecConfig.kind``):

- ``"kl"``: diffusers ``AutoencoderKL`` (the SD-VAE family). ``encode`` takes the posterior mean
  (``sample=True`` draws from the posterior). Its encoder halves the resolution once per level
  after the first, so ``downsample = 2 ** (len(block_out_channels) - 1)``.
- ``"pixel"``: lossless space-to-depth (no weights, no training, no decode cost): an ``f×f`` block of
  RGB pixels becomes ``3·f²`` channels, so a 64 px frame with ``factor=2`` is a ``[12, 32, 32]``
  "latent" that decodes back bit-exactly. Diffusion on pixels is standard at 64 px, and nothing is
  lost: no colour shift, no blur, the mouth reader reads reconstructions as it reads real frames.
  ``scaling_factor`` stays 1 (pixels in [-1, 1]) unless given. The default of the synthetic world.
- ``"tiny"``: diffusers ``AutoencoderTiny`` (TAESD). A deterministic autoencoder; ``sample`` is
  ignored. Following diffusers, its config's ``scaling_factor`` (1.0 for TAESD/TAESDXL) and
  ``shift_factor`` (0.0) are applied as for ``"kl"``: TAESD was trained to produce latents that
  are *already scaled* like SD-VAE's ``z * 0.18215``, so its 1.0 leaves them as they are, while
  TAESD3/TAEF1 configs carry the SD3/FLUX factors. ``downsample = 2 ** (len(blocks) - 1)``.

Where a codec comes from:

- lipstep's own: `build_codec(CodecConfig())` builds a small ``AutoencoderKL`` with random weights
  (default: 4 levels (32, 64, 128, 128), one layer per block, 3.9 M parameters, downsample 8, so a
  64 px frame becomes a ``[4, 8, 8]`` latent); `train_codec` trains it on prepared frames and
  estimates ``scaling_factor`` as 1 / std of its latents.
- a local diffusers directory (``save_pretrained`` output, or a pipeline directory with ``vae/``):
  `load_codec(path)`; the kind comes from the directory's ``_class_name``.

Saved codec directory (`save_codec`, what checkpoints hold under ``codec/``)::

    config.json         lipstep's CodecConfig (``"_type": "CodecConfig"``) with the resolved
                        scaling_factor / shift_factor; architecture fields rebuild the model
    model.safetensors   the diffusers module's state_dict (lipstep's own codecs only)
    checksums.json      its sha256, checked on load (directories saved before checksums load unchecked)

A codec loaded from a diffusers directory is saved as ``config.json`` only, recording the
directory's absolute ``path``: the weights stay where the user keeps them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from lipstep.config import check, load_config, save_config, to_dict
from lipstep.data.dataset import open_shard, read_manifest
from lipstep.errors import ConfigError, DataError, LipstepError
from lipstep.fit import fit
from lipstep.fsutil import atomic_dir, verify_checksums, write_checksums

WEIGHTS_NAME = "model.safetensors"
_DIFFUSERS_KINDS = {"AutoencoderKL": "kl", "AutoencoderTiny": "tiny"}
_EXPECTED = "a lipstep codec directory or a local diffusers AutoencoderKL / AutoencoderTiny directory"


@dataclass
class CodecConfig:
    kind: Literal["kl", "tiny", "pixel"] = "kl"  # diffusers AutoencoderKL (VAE), AutoencoderTiny (TAESD-style)
    #   or lossless space-to-depth pixels (no weights)
    path: str | None = None             # local diffusers directory; None = lipstep's own, built from below
    image_size: int = 64                # frame side it is made for (informative: any multiple of downsample works)
    latent_channels: int = 4            # C
    block_out_channels: tuple[int, ...] = (32, 64, 128, 128)  # widths per level; downsample = 2 ** (levels - 1)
    layers_per_block: int = 1           # resnet (kl) or AutoencoderTinyBlock (tiny) layers per level
    norm_num_groups: int = 32           # GroupNorm groups of "kl"; must divide every width
    scaling_factor: float | None = None  # None = the diffusers config's, or 1.0 until train_codec estimates it
    shift_factor: float | None = None   # subtracted before scaling; None = the diffusers config's, else 0
    factor: int = 2                     # "pixel" only: space-to-depth block side (latents 3·factor² channels)

    @property
    def downsample(self) -> int:
        return self.factor if self.kind == "pixel" else 2 ** (len(self.block_out_channels) - 1)

    def validate(self) -> None:
        check(self.scaling_factor is None or self.scaling_factor > 0,
              f"scaling_factor must be > 0, got {self.scaling_factor}")
        if self.path:
            return  # the architecture comes from the directory
        if self.kind == "pixel":
            check(self.factor >= 1, f"factor must be >= 1, got {self.factor}")
            check(self.image_size % self.factor == 0,
                  f"image_size {self.image_size} must be a multiple of the pixel factor {self.factor}")
            return
        check(len(self.block_out_channels) >= 1 and all(c >= 1 for c in self.block_out_channels),
              f"block_out_channels must be positive widths, got {self.block_out_channels}")
        check(self.latent_channels >= 1, f"latent_channels must be >= 1, got {self.latent_channels}")
        check(self.layers_per_block >= 1, f"layers_per_block must be >= 1, got {self.layers_per_block}")
        check(self.image_size >= 1 and self.image_size % self.downsample == 0,
              f"image_size {self.image_size} must be a multiple of the downsample factor {self.downsample} "
              f"(2 ** (len(block_out_channels) - 1))")
        check(self.kind != "kl" or all(c % self.norm_num_groups == 0 for c in self.block_out_channels),
              f"norm_num_groups {self.norm_num_groups} must divide every width in {self.block_out_channels}")


# ------------------------------------------------------------------------------------------- codecs


class Codec(nn.Module):
    """Frames [N, 3, H, W] in [-1, 1] <-> scaled latents [N, C, H/f, W/f] (see the module docstring).

    Frozen where built (``requires_grad`` off); gradients still flow to the inputs, so pixel-space
    losses can back-propagate through `decode`. Subclasses implement the unscaled pair.
    """

    def __init__(self, vae: nn.Module, cfg: CodecConfig, downsample: int, *,
                 latents_mean=None, latents_std=None):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.kind = cfg.kind
        self.latent_channels = int(vae.config.latent_channels)
        self.downsample = int(downsample)
        self.name = f"{cfg.kind}-c{self.latent_channels}-f{self.downsample}"
        self.cfg = cfg
        self._latents_mean, self._latents_std = latents_mean, latents_std
        self.register_buffer("latent_shift", torch.zeros(self.latent_channels), persistent=False)
        self.register_buffer("latent_scale", torch.ones(self.latent_channels), persistent=False)
        self.set_scaling(cfg.scaling_factor if cfg.scaling_factor is not None else 1.0, cfg.shift_factor or 0.0)

    def set_scaling(self, scaling_factor: float, shift_factor: float = 0.0) -> None:
        """Set the latent scale/shift (and record them in `cfg`)."""
        self.scaling_factor, self.shift_factor = float(scaling_factor), float(shift_factor)
        self.cfg.scaling_factor, self.cfg.shift_factor = self.scaling_factor, self.shift_factor
        C = self.latent_channels
        shift = torch.full((C,), self.shift_factor, dtype=torch.float64)
        scale = torch.full((C,), self.scaling_factor, dtype=torch.float64)
        if self._latents_mean is not None and self._latents_std is not None:
            shift = torch.tensor(self._latents_mean, dtype=torch.float64)
            scale = scale / torch.tensor(self._latents_std, dtype=torch.float64)
        self.latent_shift.copy_(shift.float())
        self.latent_scale.copy_(scale.float())

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters(), self.latent_scale).dtype

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters(), self.latent_scale).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.vae.parameters())

    def encode_unscaled(self, x: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        raise NotImplementedError

    def decode_unscaled(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, frames: torch.Tensor, *, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Frames float [N, 3, H, W] in [-1, 1] -> scaled latents [N, C, H/f, W/f] (posterior mean by default)."""
        if frames.ndim != 4 or frames.shape[1] != 3 or not frames.is_floating_point():
            raise ValueError(f"encode expects float frames [N, 3, H, W], got {tuple(frames.shape)} {frames.dtype}")
        if frames.shape[-1] % self.downsample or frames.shape[-2] % self.downsample:
            raise ValueError(f"frame size {tuple(frames.shape[-2:])} is not a multiple of the codec's "
                             f"downsample factor {self.downsample}")
        z = self.encode_unscaled(frames.to(self.dtype), sample=sample, generator=generator)
        z = (z - self.latent_shift[:, None, None]) * self.latent_scale[:, None, None]
        return z.to(frames.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents [N, C, h, w] -> frames [N, 3, h*f, w*f], clamped to [-1, 1]."""
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"decode expects latents [N, {self.latent_channels}, h, w], "
                             f"got {tuple(latents.shape)}")
        z = latents.to(self.dtype) / self.latent_scale[:, None, None] + self.latent_shift[:, None, None]
        return self.decode_unscaled(z).clamp(-1.0, 1.0).to(latents.dtype)

    def encode_video(self, video: torch.Tensor, *, chunk: int = 32, sample: bool = False,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Video [B, T, 3, H, W] -> latents [B, T, C, h, w], `chunk` frames per forward."""
        B, T = video.shape[:2]
        flat = video.flatten(0, 1)  # [B*T, 3, H, W]
        z = torch.cat([self.encode(x, sample=sample, generator=generator) for x in flat.split(chunk)])
        return z.unflatten(0, (B, T))

    def decode_video(self, latents: torch.Tensor, *, chunk: int = 32) -> torch.Tensor:
        """Latents [B, T, C, h, w] -> video [B, T, 3, H, W], `chunk` frames per forward."""
        B, T = latents.shape[:2]
        flat = latents.flatten(0, 1)  # [B*T, C, h, w]
        return torch.cat([self.decode(z) for z in flat.split(chunk)]).unflatten(0, (B, T))

    def identity(self) -> str:
        """SHA-256 of what determines the latents: kind, shapes, scaling and every weight."""
        h = hashlib.sha256()
        head = {"kind": self.kind, "latent_channels": self.latent_channels, "downsample": self.downsample,
                "scale": [round(v, 8) for v in self.latent_scale.tolist()],
                "shift": [round(v, 8) for v in self.latent_shift.tolist()]}
        h.update(json.dumps(head, sort_keys=True).encode())
        for key, t in sorted(self.vae.state_dict().items()):
            h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


class KLCodec(Codec):
    """diffusers AutoencoderKL: posterior mean (or a sample) in, decoder out."""

    def encode_unscaled(self, x, sample=False, generator=None):
        posterior = self.vae.encode(x).latent_dist
        return posterior.sample(generator=generator) if sample else posterior.mode()

    def decode_unscaled(self, z):
        return self.vae.decode(z).sample


class TinyCodec(Codec):
    """diffusers AutoencoderTiny (TAESD): deterministic; `sample` is ignored."""

    def encode_unscaled(self, x, sample=False, generator=None):
        return self.vae.encode(x).latents

    def decode_unscaled(self, z):
        return self.vae.decode(z).sample


class _Namespace(dict):
    """A dict readable as attributes (``config.latent_channels``), like a diffusers config."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class _SpaceToDepth(nn.Module):
    """The module behind a pixel codec: no parameters, a diffusers-like ``config``."""

    def __init__(self, factor: int):
        super().__init__()
        self.config = _Namespace(latent_channels=3 * factor ** 2)


class PixelCodec(Codec):
    """Lossless space-to-depth: frames [N, 3, H, W] <-> [N, 3·f², H/f, W/f] (`F.pixel_unshuffle`)."""

    def __init__(self, cfg: CodecConfig):
        super().__init__(_SpaceToDepth(cfg.factor), cfg, cfg.factor)

    def encode_unscaled(self, x, sample=False, generator=None):
        return torch.nn.functional.pixel_unshuffle(x, self.downsample)

    def decode_unscaled(self, z):
        return torch.nn.functional.pixel_shuffle(z, self.downsample)


_CODECS = {"kl": KLCodec, "tiny": TinyCodec}


# ------------------------------------------------------------------------------------ build / load


def _new_vae(cfg: CodecConfig) -> nn.Module:
    """A randomly initialised diffusers autoencoder with lipstep's architecture fields."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    n = len(cfg.block_out_channels)
    if cfg.kind == "kl":
        return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                             up_block_types=("UpDecoderBlock2D",) * n,
                             block_out_channels=tuple(cfg.block_out_channels),
                             layers_per_block=cfg.layers_per_block, latent_channels=cfg.latent_channels,
                             norm_num_groups=cfg.norm_num_groups, sample_size=cfg.image_size,
                             scaling_factor=cfg.scaling_factor or 1.0, shift_factor=cfg.shift_factor)
    return AutoencoderTiny(encoder_block_out_channels=tuple(cfg.block_out_channels),
                           decoder_block_out_channels=tuple(cfg.block_out_channels),
                           num_encoder_blocks=(cfg.layers_per_block,) * n,
                           num_decoder_blocks=(cfg.layers_per_block,) * n,
                           latent_channels=cfg.latent_channels,
                           scaling_factor=cfg.scaling_factor or 1.0, shift_factor=cfg.shift_factor or 0.0)


def build_codec(cfg: CodecConfig | None = None) -> Codec:
    """lipstep's own codec with random weights, or (``cfg.path`` set) the codec in that directory.

    With a path, ``cfg.scaling_factor`` / ``cfg.shift_factor``, when set, override the directory's.
    """
    cfg = cfg or CodecConfig()
    cfg.validate()
    if cfg.path:
        return _load_path(Path(cfg.path), cfg.scaling_factor, cfg.shift_factor)
    cfg = dataclasses.replace(cfg)  # the codec owns (and updates) its copy
    return _from_config(cfg)


def _from_config(cfg: CodecConfig) -> Codec:
    """lipstep's own codec of `cfg` (random weights for kl / tiny; pixel has none)."""
    if cfg.kind == "pixel":
        cfg.latent_channels = 3 * cfg.factor ** 2
        return PixelCodec(cfg)
    return _CODECS[cfg.kind](_new_vae(cfg).float(), cfg, cfg.downsample)


def load_codec(path: str | os.PathLike) -> Codec:
    """The codec saved by `save_codec` in `path`, or a local diffusers AutoencoderKL/AutoencoderTiny dir."""
    return _load_path(Path(path), None, None)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LipstepError(f"{path}: cannot read it as JSON ({e}); expected {_EXPECTED}") from None
    if not isinstance(data, dict):
        raise LipstepError(f"{path}: not a JSON object; expected {_EXPECTED}")
    return data


def _load_path(path: Path, scaling_factor: float | None, shift_factor: float | None,
               seen: tuple[Path, ...] = ()) -> Codec:
    """The codec in `path`; `seen` holds the lipstep config.json files whose ``path`` led here."""
    if not path.is_dir():
        raise LipstepError(f"codec directory {path} does not exist (expected {_EXPECTED})")
    if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
        path = path / "vae"  # a diffusers pipeline directory
    if not (path / "config.json").is_file():
        raise LipstepError(f"{path} has no config.json; expected {_EXPECTED}")
    data = _read_json(path / "config.json")
    if data.get("_type") == "CodecConfig":
        return _load_lipstep(path, scaling_factor, shift_factor, seen)
    kind = _DIFFUSERS_KINDS.get(data.get("_class_name"))
    if kind is not None:
        return _load_diffusers(path, kind, data, scaling_factor, shift_factor)
    if "model_type" in data:
        found = f"a transformers model (model_type '{data['model_type']}')"
    elif "_class_name" in data:
        found = f"a diffusers {data['_class_name']}"
    else:
        found = "an unknown config.json"
    raise LipstepError(f"{path} holds {found}, not a codec; expected {_EXPECTED}")


def _load_diffusers(path: Path, kind: str, data: dict, scaling_factor, shift_factor) -> Codec:
    """A diffusers AutoencoderKL / AutoencoderTiny directory, in fp32, frozen."""
    import diffusers

    cls_name = next(name for name, k in _DIFFUSERS_KINDS.items() if k == kind)
    try:
        vae = getattr(diffusers, cls_name).from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise LipstepError(f"{path}: cannot load the diffusers {cls_name} ({first})") from None
    config = vae.config
    if kind == "kl":
        levels, widths, layers = len(config.block_out_channels), config.block_out_channels, config.layers_per_block
    else:
        levels, widths = len(config.num_encoder_blocks), config.encoder_block_out_channels
        layers = max(config.num_encoder_blocks)
    sf = scaling_factor if scaling_factor is not None else float(config.get("scaling_factor", 1.0) or 1.0)
    shift = shift_factor if shift_factor is not None else float(config.get("shift_factor", 0.0) or 0.0)
    cfg = CodecConfig(kind=kind, path=str(path.resolve()), image_size=int(config.get("sample_size", 64) or 64),
                      latent_channels=int(config.latent_channels), block_out_channels=tuple(widths),
                      layers_per_block=int(layers), norm_num_groups=int(config.get("norm_num_groups", 32)),
                      scaling_factor=sf, shift_factor=shift)
    mean, std = config.get("latents_mean"), config.get("latents_std")
    use_stats = mean is not None and std is not None
    return _CODECS[kind](vae.float(), cfg, 2 ** (levels - 1), latents_mean=mean if use_stats else None,
                         latents_std=std if use_stats else None)


def _load_lipstep(path: Path, scaling_factor, shift_factor, seen: tuple[Path, ...]) -> Codec:
    """A directory written by `save_codec`."""
    from safetensors.torch import load_file

    config = path / "config.json"
    try:
        cfg = load_config(CodecConfig, config)
    except ConfigError as e:
        raise LipstepError(f"{config}: {e}") from None
    if scaling_factor is not None:
        cfg.scaling_factor = scaling_factor
    if shift_factor is not None:
        cfg.shift_factor = shift_factor
    if cfg.path:
        if config.resolve() in seen:
            raise LipstepError(f"{config}: its path {cfg.path} leads back to this file (a cycle of codec "
                               "config.json files); point path at a diffusers VAE directory")
        return _load_path(Path(cfg.path), cfg.scaling_factor, cfg.shift_factor, (*seen, config.resolve()))
    if cfg.kind == "pixel":
        return _from_config(cfg)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise LipstepError(f"{path} has a codec config.json but no {WEIGHTS_NAME}")
    verify_checksums(path)
    try:
        state = load_file(str(weights))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own types for a damaged file
        raise LipstepError(f"{weights}: cannot read the codec weights ({' '.join(str(e).split())[:160]})") \
            from None
    codec = _CODECS[cfg.kind](_new_vae(cfg).float(), cfg, cfg.downsample)
    try:
        missing, unexpected = codec.vae.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches raise even when strict=False
        raise LipstepError(f"{weights} does not match {path / 'config.json'} "
                           f"({' '.join(str(e).split())[:200]})") from None
    if missing or unexpected:
        raise LipstepError(f"{weights} does not match {path / 'config.json'}: {len(missing)} missing "
                           f"keys {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}")
    return codec


@contextlib.contextmanager
def _atomic_dir(out: Path) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces `out` (a codec dir or empty)."""
    _check_replaceable(out)
    with atomic_dir(out) as tmp:
        yield tmp


def _check_replaceable(out: Path) -> None:
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or _is_codec_dir(out))):
        raise LipstepError(f"{out} exists and is not a lipstep codec directory; refusing to overwrite it")


def _is_codec_dir(path: Path) -> bool:
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8")).get("_type") == "CodecConfig"
    except (OSError, ValueError, AttributeError):
        return False


def _write_codec(codec: Codec, directory: Path) -> None:
    from safetensors.torch import save_file

    save_config(codec.cfg, directory)
    if not codec.cfg.path and codec.kind != "pixel":
        state = {k: v.detach().cpu().contiguous() for k, v in codec.vae.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "kind": codec.kind})
        write_checksums(directory, [WEIGHTS_NAME])


def save_codec(codec: Codec, directory: str | os.PathLike) -> Path:
    """Write ``config.json`` (+ ``model.safetensors`` and ``checksums.json`` for lipstep's own codecs) atomically;
    returns the dir."""
    directory = Path(directory)
    with _atomic_dir(directory) as tmp:
        _write_codec(codec, tmp)
    return directory


# ----------------------------------------------------------------------------------------- training


@dataclass
class CodecTrainConfig:
    codec: CodecConfig = field(default_factory=CodecConfig)  # architecture; image_size is taken from the data
    steps: int = 2000               # optimizer steps
    batch: int = 32                 # frames per step, drawn uniformly from all train frames
    lr: float = 1e-3                # AdamW peak learning rate (linear warm-up, cosine decay to lr / 10)
    warmup_steps: int = 50          # linear warm-up length
    weight_decay: float = 0.0       # AdamW weight decay
    grad_clip: float = 1.0          # max gradient norm; 0 disables
    kl_weight: float = 1e-6         # β of the KL term ("kl" only); keeps the latent near a Gaussian
    edge_weight: float = 0.1        # weight of the L1 loss on image gradients (sharper edges); 0 disables
    colour_aug: float = 0.5         # share of frames with permuted colour channels and per-channel gains
    flip: bool = True               # mirror half of the frames left-right
    scale_frames: int = 512         # train frames encoded to estimate scaling_factor = 1 / std
    eval_frames: int = 256          # frames of the val (else test, else train) split for the PSNR report
    seed: int = 0                   # initial weights, frame draws and posterior samples

    def validate(self) -> None:
        check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        check(self.batch >= 1, f"batch must be >= 1, got {self.batch}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        check(self.kl_weight >= 0 and self.edge_weight >= 0 and self.grad_clip >= 0,
              "kl_weight, edge_weight and grad_clip must be >= 0")
        check(0.0 <= self.colour_aug <= 1.0, f"colour_aug must be in [0, 1], got {self.colour_aug}")
        check(self.scale_frames >= 2 and self.eval_frames >= 1,
              f"need scale_frames >= 2 and eval_frames >= 1, got {self.scale_frames}, {self.eval_frames}")
        check(self.codec.path is None, "train_codec trains lipstep's own codec: codec.path must be unset")


@dataclass
class CodecTrainResult:
    out: Path                       # the saved codec directory
    losses: list[float]             # total loss per step
    psnr: float                     # mean per-frame reconstruction PSNR (dB, RGB, data range 1)
    eval_split: str                 # split the PSNR was measured on
    scaling_factor: float
    parameters: int
    seconds: float


class _Frames:
    """Random access to the frames of one split of a prepared directory (memory-mapped shards)."""

    def __init__(self, root: Path, rows: list[dict]):
        self.arrays = [open_shard(root / r["shard"], ("frames",)).get("frames") for r in rows]
        for r, a in zip(rows, self.arrays):
            if a is None or a.ndim != 4 or a.shape[-1] != 3:
                raise DataError(f"shard {root / r['shard']} has no frames [T, S, S, 3]")
        sizes = {a.shape[1:3] for a in self.arrays}
        if len(sizes) != 1 or len(set(next(iter(sizes)))) != 1:
            raise DataError(f"{root}: frames must be square and of one size, found {sorted(sizes)}")
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])
        self.size = int(self.arrays[0].shape[1])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def get(self, indices) -> torch.Tensor:
        """Global frame indices -> float [N, 3, S, S] in [-1, 1]."""
        clips = np.searchsorted(self.offsets, indices, side="right") - 1
        pixels = np.stack([self.arrays[c][i - self.offsets[c]] for c, i in zip(clips, indices)])
        return torch.from_numpy(pixels).float().div_(127.5).sub_(1.0).permute(0, 3, 1, 2).contiguous()


def _split_frames(root: Path, rows: list[dict], split: str) -> _Frames | None:
    chosen = [r for r in rows if r.get("split") == split and int(r.get("frames", 0)) > 0]
    return _Frames(root, chosen) if chosen else None


def augment_frames(x: torch.Tensor, cfg: CodecTrainConfig, rng: np.random.Generator) -> torch.Tensor:
    """Colour and mirror augmentation of frames [B, 3, S, S] in [-1, 1].

    A codec trained on a few dozen identities otherwise memorises their skin, hair and clothing
    colours and reconstructs unseen identities as colour-shifted blur (18 dB instead of ~25 dB on the
    synthetic world); permuting the colour channels and scaling each by 0.75..1.25 shows it many
    more colour combinations. Mirroring keeps faces faces.
    """
    b = x.shape[0]
    if cfg.colour_aug > 0:
        pick = np.flatnonzero(rng.random(b) < cfg.colour_aug)
        if len(pick):
            perms = np.stack([rng.permutation(3) for _ in pick])
            gains = torch.from_numpy(rng.uniform(0.75, 1.25, (len(pick), 3, 1, 1)).astype(np.float32))
            sel = x[torch.from_numpy(pick)]
            sel = torch.stack([sel[i, torch.from_numpy(p)] for i, p in enumerate(perms)])
            x = x.clone()
            x[torch.from_numpy(pick)] = ((sel + 1) * gains.to(x.device) - 1).clamp(-1, 1)
    if cfg.flip:
        mirror = torch.from_numpy(rng.random(b) < 0.5).to(x.device)
        x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
    return x


def _edge_l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L1 between horizontal and vertical finite differences of two image batches."""
    d = x - y
    return (d[..., :, 1:] - d[..., :, :-1]).abs().mean() + (d[..., 1:, :] - d[..., :-1, :]).abs().mean()


def _codec_loss(codec: Codec, x: torch.Tensor, cfg: CodecTrainConfig, generator) -> torch.Tensor:
    """L1 + edge L1 + β·KL of one batch of frames (unscaled latents; scaling is irrelevant here)."""
    if codec.kind == "kl":
        posterior = codec.vae.encode(x).latent_dist
        recon = codec.vae.decode(posterior.sample(generator=generator)).sample
        kl = posterior.kl().mean() if cfg.kl_weight > 0 else x.new_zeros(())
    else:
        recon, kl = codec.vae.decode(codec.vae.encode(x).latents).sample, x.new_zeros(())
    loss = (recon - x).abs().mean() + cfg.kl_weight * kl
    if cfg.edge_weight > 0:
        loss = loss + cfg.edge_weight * _edge_l1(recon, x)
    return loss


@torch.no_grad()
def estimate_scaling_factor(codec: Codec, frames: torch.Tensor, *, chunk: int = 64) -> float:
    """1 / std of the codec's unscaled (posterior-mean) latents of `frames` (LDM's recipe)."""
    z = torch.cat([codec.encode_unscaled(x.to(codec.device, codec.dtype)) for x in frames.split(chunk)])
    return float(1.0 / z.float().std().clamp_min(1e-8))


@torch.no_grad()
def reconstruction_psnr(codec: Codec, frames: torch.Tensor, *, chunk: int = 64) -> float:
    """Mean per-frame PSNR (dB) of decode(encode(frames)), RGB, data range 1."""
    values = []
    for x in frames.split(chunk):
        x = x.to(codec.device)
        y = codec.decode(codec.encode(x))
        mse = ((y - x) / 2).square().flatten(1).mean(1).clamp_min(1e-10)  # [-1, 1] -> range 1
        values.append(10 * torch.log10(1.0 / mse))
    return float(torch.cat(values).mean())


def _even_indices(n: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(np.int64))


def _fit(codec: Codec, train: _Frames, cfg: CodecTrainConfig, rng: np.random.Generator, device,
         progress: bool) -> list[float]:
    """Train a kl / tiny codec in place (uniform random frames, L1 + edge + β·KL); per-step losses."""
    codec.vae.train().requires_grad_(True)
    generator = torch.Generator(device).manual_seed(cfg.seed + 1)

    def step(_: int) -> torch.Tensor:
        x = augment_frames(train.get(rng.integers(0, len(train), cfg.batch)), cfg, rng).to(device)
        return _codec_loss(codec, x, cfg, generator)

    losses = fit(codec.vae.parameters(), step, steps=cfg.steps, lr=cfg.lr, weight_decay=cfg.weight_decay,
                 schedule="cosine", warmup_steps=cfg.warmup_steps, floor=0.1, grad_clip=cfg.grad_clip,
                 progress=progress, desc=f"train codec {codec.name}", hint="lower lr or grad_clip").losses
    codec.vae.eval().requires_grad_(False)
    return losses


def train_codec(prepared_dir: str | os.PathLike, out_dir: str | os.PathLike,
                cfg: CodecTrainConfig | None = None, *, progress: bool = True,
                device: str | torch.device | None = None) -> CodecTrainResult:
    """Train lipstep's own codec on the train frames of a prepared directory and save it to `out_dir`.

    Args:
        prepared_dir: output of ``lipstep prepare`` (manifest.jsonl + shards with ``frames``).
        out_dir: the codec directory to write (atomically; an existing codec directory is replaced).
        cfg: training settings; ``cfg.codec`` gives the architecture (``image_size`` is set from the data,
            ``scaling_factor`` None is estimated after training, a number is kept).
        progress: show a tqdm bar with the loss.
        device: where to train; None = CUDA when available, else CPU (fp32 either way).

    Returns:
        A `CodecTrainResult` (per-step losses, PSNR on val/test/train, scaling factor, ...); the same
        summary, without the per-step losses, is written to ``out_dir/train.json``.
    """
    cfg = cfg or CodecTrainConfig()
    cfg.validate()
    started = time.perf_counter()
    root, out = Path(prepared_dir), Path(out_dir)
    _check_replaceable(out)
    rows = read_manifest(root)
    train = _split_frames(root, rows, "train")
    if train is None:
        raise DataError(f"{root / 'manifest.jsonl'} has no train clips with frames")
    codec_cfg = dataclasses.replace(cfg.codec, image_size=train.size)
    codec_cfg.validate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        codec = build_codec(codec_cfg)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    codec.to(device)
    rng = np.random.default_rng(cfg.seed)
    losses = [] if codec.kind == "pixel" else _fit(codec, train, cfg, rng, device, progress)

    # Scale: 1 / std of the latents of a sample of train frames, unless given (pixels stay in [-1, 1]).
    if cfg.codec.scaling_factor is None and codec.kind != "pixel":
        sample = train.get(np.sort(rng.choice(len(train), min(len(train), cfg.scale_frames), replace=False)))
        codec.set_scaling(estimate_scaling_factor(codec, sample), codec.shift_factor)

    # Report: reconstruction PSNR on val, else test, else train.
    split, frames = next((s, f) for s in ("val", "test", "train")
                         if (f := _split_frames(root, rows, s)) is not None)
    psnr = reconstruction_psnr(codec, frames.get(_even_indices(len(frames), cfg.eval_frames)))
    result = CodecTrainResult(out=out, losses=losses, psnr=psnr, eval_split=split,
                              scaling_factor=codec.scaling_factor, parameters=codec.num_parameters(),
                              seconds=time.perf_counter() - started)
    summary = {"psnr": round(psnr, 4), "eval_split": split, "scaling_factor": codec.scaling_factor,
               "parameters": result.parameters, "final_loss": losses[-1] if losses else 0.0,
               "latent_shape": [codec.latent_channels] + [train.size // codec.downsample] * 2,
               "seconds": round(result.seconds, 2), "prepared_dir": str(root.resolve()),
               "train": to_dict(cfg)}
    with _atomic_dir(out) as tmp:
        _write_codec(codec, tmp)
        (tmp / "train.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return result


__all__ = [
    "WEIGHTS_NAME",
    "Codec",
    "CodecConfig",
    "CodecTrainConfig",
    "CodecTrainResult",
    "KLCodec",
    "TinyCodec",
    "build_codec",
    "estimate_scaling_factor",
    "load_codec",
    "reconstruction_psnr",
    "save_codec",
    "train_codec",
]
