"""Model directories: ``lipstep.json`` (`ModelInfo`), the components' weights, bundled models.

A model directory (design.md §3) is what training writes and what `generate`, `eval`, `bench` and
`export` take::

    MODEL/lipstep.json        kind (teacher | student), recipe, schedule, default sampler, chunk layout
    MODEL/codec/              the latent codec (config.json + model.safetensors)
    MODEL/audio/              the audio encoder's config.json (transformers weights stay at their path)
    MODEL/denoiser/           AvatarDiT config.json + model.safetensors
    MODEL/eyes/               optional: an eyelid renderer (`lipstep.nets.eyes.EyeNet`) that draws the blinks of
                              ``blinks_per_second`` on the generated latents

Each component directory with weights also holds ``checksums.json`` (sha256 of its ``*.safetensors``,
`lipstep.fsutil.write_checksums`), checked on load: flipped bytes are a one-line "damaged" error, not a
model that generates plausible garbage. Directories written before checksums existed load unchecked.

This module is the only reader and writer of that layout; it sits below the recipes, the training
loop and the pipeline so that every one of them can write or load a model.

``lipstep.json`` format 2 records the sampler as ``{name, options, steps, cfg_audio, cfg_ref,
guidance}`` (`lipstep.samplers.SamplerInfo`); format 1 (every sampler's fields flat) still loads.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from lipstep import __version__
from lipstep.audio.encoders import load_audio_encoder, save_audio_encoder
from lipstep.codecs.vae import load_codec, save_codec
from lipstep.config import check, from_dict, save_config, to_dict
from lipstep.data.dataset import read_manifest
from lipstep.diffusion.guidance import nfe_per_step
from lipstep.diffusion.schedules import SCHEDULES, make_schedule
from lipstep.errors import ConfigError, DataError, LipstepError
from lipstep.fsutil import (
    CHECKSUMS_NAME,
    atomic_dir,
    atomic_path,
    verify_checksums,
    write_checksums,
    write_json_atomic,
)
from lipstep.nets.dit import AvatarDiT, DiTConfig, drop_removed_options
from lipstep.nets.eyes import EyeNet, load_eye_net, save_eye_net
from lipstep.samplers.chunks import ChunkLayout
from lipstep.samplers.registry import SamplerInfo

INFO_NAME = "lipstep.json"
EYES_DIR = "eyes"
FORMAT = 2
MAX_BLINKS_PER_SECOND = 5.0  # the most blinks a second a model or a generation may ask for (people: about 0.3)
BUNDLED_ROOT = Path(__file__).resolve().parent / "weights"


# ---------------------------------------------------------------------------------------------
# lipstep.json


@dataclass
class ModelInfo:
    """Contents of ``MODEL/lipstep.json``."""

    kind: str = "teacher"           # teacher | student
    recipe: str = "teacher"         # teacher, perflow, dmd, ...
    schedule: str = "vp_eps"        # a key of lipstep.diffusion.schedules.SCHEDULES
    flow_shift: float = 1.0         # FlowSchedule shift (schedule "flow" only)
    sampler: SamplerInfo = field(default_factory=SamplerInfo)
    frames: int = 8                 # latents generated per chunk
    motion_frames: int = 2          # latents of the previous chunk given as motion context
    image_size: int = 64            # face crop side in pixels
    residual: float = 0.0           # > 0: the denoiser works on offsets from the reference latent, (z - z_ref) · residual
    #   (identity and colours then come from the reference itself; what is generated is what changes); 0 = on z
    anchor_every: int = 0           # > 0: every k-th chunk is re-anchored (its motion context is the reference again,
    #   as for the first chunk), so errors of chained chunks cannot accumulate over long runs; 0 = always chain
    blinks_per_second: float = 0.0  # > 0: chunked generation draws blinks at this rate (`lipstep.data.blinks.
    #   BlinkSchedule`; the training labels' rate), drawn by the denoiser (it reads each frame's eyelid closure,
    #   DiTConfig.blink) and/or by the eye net in MODEL/eyes/ (`lipstep.nets.eyes`); 0 = no blinks
    fps: float = 25.0
    sample_rate: int = 16000
    components: str = ""            # where the codec, audio and denoiser are, relative to this directory, when the
    #   model is a sampler variant of another model directory (bundled turbo4: turbo1's generator at 4 steps); "" = here
    format: int = FORMAT
    lipstep_version: str = __version__
    trained: dict = field(default_factory=dict)  # provenance: data, steps, seconds, final loss, ...

    def validate(self) -> None:
        check(self.kind in ("teacher", "student"), f"kind must be teacher or student, got '{self.kind}'")
        check(self.schedule in SCHEDULES, f"schedule must be one of {sorted(SCHEDULES)}, got '{self.schedule}'")
        check(self.frames >= 1 and self.motion_frames >= 0, "frames >= 1 and motion_frames >= 0 required")
        check(math.isfinite(self.fps) and 1 <= self.fps <= 240, f"fps must be in 1..240, got {self.fps}")
        check(8000 <= self.sample_rate <= 192000, f"sample_rate must be in 8000..192000, got {self.sample_rate}")
        check(self.image_size >= 8, f"image_size must be >= 8, got {self.image_size}")
        check(math.isfinite(self.residual) and self.residual >= 0, f"residual must be >= 0, got {self.residual}")
        check(math.isfinite(self.flow_shift) and self.flow_shift > 0, f"flow_shift must be > 0, got {self.flow_shift}")
        check(self.anchor_every >= 0, f"anchor_every must be >= 0, got {self.anchor_every}")
        check(0 <= self.blinks_per_second <= MAX_BLINKS_PER_SECOND,
              f"blinks_per_second must be in 0..{MAX_BLINKS_PER_SECOND:g}, got {self.blinks_per_second}")
        check(not Path(self.components).is_absolute(), f"components must be a relative directory, got {self.components!r}")
        check(self.format <= FORMAT, f"model format {self.format} is newer than this lipstep ({FORMAT}); upgrade lipstep")
        self.sampler.validate()

    def make_schedule(self):
        return make_schedule(self.schedule, **({"shift": self.flow_shift} if self.schedule == "flow" else {}))

    def layout(self) -> ChunkLayout:
        return ChunkLayout(frames=self.frames, motion_frames=self.motion_frames, residual=self.residual,
                           anchor_every=self.anchor_every, blinks_per_second=self.blinks_per_second, fps=self.fps)

    def nfe_per_chunk(self, steps: int | None = None, cfg_audio: float | None = None,
                      cfg_ref: float | None = None) -> int:
        s = self.sampler
        if s.guidance == "embedded":
            return steps or s.steps
        return (steps or s.steps) * nfe_per_step(s.cfg_audio if cfg_audio is None else cfg_audio,
                                                 s.cfg_ref if cfg_ref is None else cfg_ref)


def info_from_dict(data: dict) -> ModelInfo:
    """A validated `ModelInfo` from the JSON object of a lipstep.json (format 1 or 2)."""
    data = dict(data)
    data.pop("_type", None)
    missing = [k for k in ("kind", "schedule", "sampler") if k not in data]
    if missing:  # every lipstep.json ever written names them; the defaults would sample with the wrong process
        raise ConfigError(f"{INFO_NAME} names no {', '.join(missing)} (not written by lipstep export / save_pretrained?)")
    info = from_dict(ModelInfo, data)
    info.validate()  # refuses a format newer than this lipstep
    info.format = FORMAT  # older formats are converted on reading: what is written back is today's
    return info


def read_info(model_dir: str | os.PathLike) -> ModelInfo:
    """The validated `ModelInfo` of a model directory; a one-line `LipstepError` otherwise."""
    root = Path(model_dir)
    path = root / INFO_NAME
    if not root.is_dir():
        raise LipstepError(f"model directory {root} does not exist")
    if not path.is_file():
        what = _guess_kind(root)
        raise LipstepError(f"{root} is not a lipstep model directory (no {INFO_NAME}"
                           f"{'; it looks like ' + what if what else ''})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LipstepError(f"{path}: cannot read it ({e})") from None
    if not isinstance(data, dict):
        raise LipstepError(f"{path}: expected a JSON object")
    try:
        info = info_from_dict(data)
    except ConfigError as e:
        raise LipstepError(f"{path}: {e}") from None
    for part in () if info.components else ("codec", "audio", "denoiser"):  # a variant's: `components_dir`
        if not (root / part / "config.json").is_file():
            raise LipstepError(f"{root} is incomplete: {part}/config.json is missing")
    return info


def components_dir(root: str | os.PathLike, info: ModelInfo | None = None) -> Path:
    """The directory holding a model's codec/, audio/ and denoiser/: the model directory itself, or for a sampler
    variant (``components`` in its lipstep.json) the directory it names; a one-line `LipstepError` if that is not
    a model directory of its own (a variant of a variant is refused)."""
    root = Path(root)
    info = info or read_info(root)
    if not info.components:
        return root
    target = (root / info.components).resolve()
    if not (target / INFO_NAME).is_file() or read_info(target).components:  # read_info: its parts are there
        raise LipstepError(f"{root}: its components '{info.components}' are not a model directory with weights")
    return target


def _guess_kind(root: Path) -> str:
    """What a directory that is not a model directory seems to be (for error messages)."""
    if (root / "manifest.jsonl").is_file():
        return "a data directory (synthetic world or prepared shards)"
    if (root / "checkpoints").is_dir():
        return "a training run; its model is in the model/ subdirectory"
    if (root / "config.json").is_file():
        try:
            kind = json.loads((root / "config.json").read_text(encoding="utf-8")).get("_type", "")
        except (OSError, ValueError, AttributeError):
            kind = ""
        return f"a component directory ({kind or 'config.json only'})"
    return ""


# ---------------------------------------------------------------------------------------------
# bundled models


def bundled_models() -> dict[str, Path]:
    """Name -> directory of every model shipped inside the package (``lipstep/weights/<name>``)."""
    if not BUNDLED_ROOT.is_dir():
        return {}
    return {p.name: p for p in sorted(BUNDLED_ROOT.iterdir()) if (p / INFO_NAME).is_file()}


def meets_quality_bar(info: ModelInfo) -> bool | None:
    """Whether a model was judged to meet the project's quality bar when it was bundled (``lipstep export
    --quality-bar``; ``trained.quality_bar.met``): True, False, or None when it was never judged."""
    bar = info.trained.get("quality_bar")
    return bool(bar["met"]) if isinstance(bar, dict) and "met" in bar else None


def default_model() -> str:
    """The fastest bundled model (fewest NFE per chunk) that was not judged below the quality bar (a faster one
    that was stays available by name); LipstepError when none is bundled."""
    models = bundled_models()
    if not models:
        raise LipstepError("no bundled model is installed; pass --model DIR")
    infos = {n: read_info(p) for n, p in models.items()}
    usable = [n for n in models if meets_quality_bar(infos[n]) is not False] or list(models)
    return min(usable, key=lambda n: (infos[n].nfe_per_chunk(), n))


def resolve_model(model: str | os.PathLike | None) -> Path:
    """A model directory from a path or a bundled name (None = `default_model`)."""
    if model is None:
        model = default_model()
    path = Path(model)
    models = bundled_models()
    if path.is_dir() and ((path / INFO_NAME).is_file() or str(model) not in models):
        return path
    if str(model) in models:  # also when a local directory of that name is not a model directory
        return models[str(model)]
    names = ", ".join(models) or "none installed"
    raise LipstepError(f"model '{model}' is neither a directory nor a bundled model (bundled: {names})")


def describe_models() -> list[dict]:
    """One row per bundled model: name, kind, recipe, steps, NFE per chunk, parameters, size on disk, blinks (the
    rate and what draws them: its eye net or its denoiser)."""
    rows = []
    for name, path in bundled_models().items():
        info = read_info(path)
        blinks = "-" if info.blinks_per_second == 0 else \
            f"{info.blinks_per_second:.2f}/s ({'eye net' if eyes_dir(path, info) else 'denoiser'})"
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        params = _denoiser_params(components_dir(path, info) / "denoiser")
        rows.append({"name": name, "kind": info.kind, "recipe": info.recipe, "steps": info.sampler.steps,
                     "cfg": f"{info.sampler.cfg_audio:g}/{info.sampler.cfg_ref:g}",
                     "nfe_per_chunk": info.nfe_per_chunk(), "params_m": round(params / 1e6, 2),
                     "quality_bar": {True: "met", False: "not met", None: "-"}[meets_quality_bar(info)],
                     "size_mb": round(size / 2**20, 1), "path": str(path), "blinks": blinks,
                     "weights_of": components_dir(path, info).name if info.components else None})
    return rows


def _denoiser_params(directory: Path) -> int:
    path = directory / "model.safetensors"
    if not path.is_file():
        return 0
    with safe_open(str(path), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


# ---------------------------------------------------------------------------------------------
# saving and loading


def save_denoiser(net, directory: str | os.PathLike, *, dtype: torch.dtype | None = None) -> Path:
    """Write an AvatarDiT as ``config.json`` + ``model.safetensors`` + ``checksums.json`` (optionally cast, e.g. fp16)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_config(net.cfg, directory)
    state = {k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach())
             .contiguous().cpu() for k, v in net.state_dict().items()}
    (directory / CHECKSUMS_NAME).unlink(missing_ok=True)  # a crash before the new list leaves none, not a stale one
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "lipstep": __version__})
    write_checksums(directory)
    return directory


def read_denoiser_config(directory: str | os.PathLike) -> DiTConfig:
    """The validated `DiTConfig` of a denoiser directory (``config.json``); a one-line `LipstepError` otherwise."""
    directory = Path(directory)
    try:
        data = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        kind = data.pop("_type", None)
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise LipstepError(f"{directory / 'config.json'}: cannot read it ({e})") from None
    if kind not in (None, "DiTConfig"):
        raise LipstepError(f"{directory} holds a {kind}, not an AvatarDiT denoiser")
    try:  # configs saved before 2026-12-05 may still name removed options at their neutral values
        cfg = from_dict(DiTConfig, drop_removed_options(data))
        cfg.validate()
    except ConfigError as e:
        raise LipstepError(f"{directory / 'config.json'}: {e}") from None
    return cfg


def load_denoiser(directory: str | os.PathLike, *, device="cpu") -> AvatarDiT:
    """An AvatarDiT from ``config.json`` + ``model.safetensors`` (weights cast to fp32)."""
    directory = Path(directory)
    net = AvatarDiT(read_denoiser_config(directory))
    path = directory / "model.safetensors"
    if not path.is_file():
        raise LipstepError(f"{directory}: model.safetensors is missing")
    verify_checksums(directory)
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise LipstepError(f"{path}: cannot read weights ({e})") from None
    try:
        missing, unexpected = net.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    except RuntimeError as e:  # shape mismatches
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise LipstepError(f"{path}: weights do not match the denoiser config ({first})") from None
    if missing or unexpected:
        raise LipstepError(f"{path}: weights do not match the denoiser config (missing {len(missing)}, e.g. "
                           f"{missing[:2]}; unexpected {len(unexpected)}, e.g. {unexpected[:2]})")
    return net.to(device).eval().requires_grad_(False)


def load_model(model: str | os.PathLike | None, *, device: str | torch.device = "cpu"):
    """(directory, info, codec, audio encoder, denoiser net) of a model directory or bundled name, with the
    components checked against each other."""
    root = resolve_model(model)
    info = read_info(root)
    parts = components_dir(root, info)
    verify_checksums(parts / "audio")  # the codec's are checked by load_codec
    codec = load_codec(parts / "codec").to(device)
    audio = load_audio_encoder(parts / "audio", device=device)
    net = load_denoiser(parts / "denoiser", device=device)
    check_components(root, info, codec, audio, net.cfg)
    return root, info, codec, audio, net


def eyes_dir(root: str | os.PathLike, info: ModelInfo) -> Path | None:
    """A model directory's eye net directory (``MODEL/eyes/``, else its components' ``eyes/``), or None."""
    root = Path(root)
    return next((d / EYES_DIR for d in (root, components_dir(root, info)) if (d / EYES_DIR).is_dir()), None)


def load_eyes(root: str | os.PathLike, info: ModelInfo, codec, cfg: DiTConfig, *,
              device: str | torch.device = "cpu") -> EyeNet | None:
    """The eye net of a model directory (``MODEL/eyes/``, else its components' ``eyes/``), or None without one; a
    one-line `LipstepError` when it does not fit the codec's latents, or when the model asks for blinks
    (``blinks_per_second`` > 0) that nothing can draw (no eye net and a denoiser that does not read blinks)."""
    found = eyes_dir(root, info)
    if found is None:
        if info.blinks_per_second > 0 and not cfg.blink:
            raise LipstepError(f"{root}: blinks_per_second is {info.blinks_per_second} but the denoiser does not read "
                               f"blinks and there is no {EYES_DIR}/ eye net to draw them")
        return None
    return check_eyes(found, load_eye_net(found), info, codec).to(device)


def check_eyes(directory: Path, eyes: EyeNet, info: ModelInfo, codec) -> EyeNet:
    """``eyes`` when it works in the codec's latents; a one-line `LipstepError` naming ``directory`` otherwise."""
    size = info.image_size // codec.downsample
    if eyes.cfg.latent_channels != codec.latent_channels or eyes.cfg.latent_size != size:
        raise LipstepError(f"{directory}: the eye net was trained on {eyes.cfg.latent_channels}x{eyes.cfg.latent_size}² "
                           f"latents but the model's codec makes {codec.latent_channels}x{size}²")
    return eyes


def check_components(root: Path, info: ModelInfo, codec, audio, cfg: DiTConfig) -> None:
    """A one-line `LipstepError` when a model directory's codec and audio encoder do not fit its denoiser."""
    if cfg.latent_channels != codec.latent_channels or cfg.latent_size * codec.downsample != info.image_size:
        raise LipstepError(f"{root}: the denoiser expects {cfg.latent_channels}x{cfg.latent_size}² latents but the "
                           f"codec makes {codec.latent_channels}x{info.image_size // codec.downsample}²")
    if info.frames > cfg.frames or info.motion_frames > cfg.motion_frames:
        raise LipstepError(f"{root}: {INFO_NAME} asks for chunks of {info.frames} frames with {info.motion_frames} "
                           f"motion frames, but the denoiser takes at most {cfg.frames} and {cfg.motion_frames}")
    if cfg.audio_dim != audio.feature_dim or cfg.audio_window != audio.window:
        raise LipstepError(f"{root}: the denoiser expects audio windows {cfg.audio_window}x{cfg.audio_dim} but the "
                           f"audio encoder makes {audio.window}x{audio.feature_dim}")


def check_data_size(codec, prepared: str | os.PathLike) -> int:
    """The frame size of a prepared directory's clips (the codec's size when unrecorded); a `DataError` when the
    clips have several sizes or a size the codec cannot downsample."""
    prepared = Path(prepared)
    sizes = {int(r["size"]) for r in read_manifest(prepared) if "size" in r}
    if len(sizes) > 1:
        raise DataError(f"{prepared}: clips of several sizes {sorted(sizes)}; prepare them at one size")
    size = sizes.pop() if sizes else codec.cfg.image_size
    if size % codec.downsample:
        raise DataError(f"{prepared}: {size}px frames are not a multiple of the codec's downsample {codec.downsample}")
    return size


def save_model(out: str | os.PathLike, info: ModelInfo, codec, audio_encoder, net, *,
               half: bool = False, eyes: EyeNet | None = None) -> Path:
    """Write a complete model directory atomically (a temporary directory renamed into place).

    ``half=True`` stores the denoiser and codec weights in float16 (half the size; loading casts back
    to float32), which is how bundled checkpoints are kept small. ``eyes`` (an eye net) goes to ``OUT/eyes/``
    (always float32: it is small).
    """
    info.validate()
    out = Path(out)
    if out.exists() and not (out / INFO_NAME).is_file():
        raise LipstepError(f"{out} exists and is not a lipstep model directory; refusing to overwrite it")
    with atomic_dir(out) as tmp:
        if half:
            codec = copy.deepcopy(codec)
            codec.vae.to(torch.float16)
        save_codec(codec, tmp / "codec")  # with its checksums
        save_audio_encoder(audio_encoder, tmp / "audio")
        write_checksums(tmp / "audio")
        save_denoiser(net, tmp / "denoiser", dtype=torch.float16 if half else None)
        if eyes is not None:
            save_eye_net(eyes, tmp / EYES_DIR)
        info = replace(info, components="")  # a copy of a variant carries its own weights
        write_json_atomic(tmp / INFO_NAME, {"_type": "ModelInfo", **to_dict(info)})
    return out


__all__ = [
    "BUNDLED_ROOT",
    "EYES_DIR",
    "FORMAT",
    "INFO_NAME",
    "MAX_BLINKS_PER_SECOND",
    "ModelInfo",
    "bundled_models",
    "check_components",
    "check_data_size",
    "components_dir",
    "default_model",
    "describe_models",
    "eyes_dir",
    "info_from_dict",
    "load_denoiser",
    "load_eyes",
    "load_model",
    "meets_quality_bar",
    "read_denoiser_config",
    "read_info",
    "resolve_model",
    "save_denoiser",
    "save_model",
]
