"""AvatarPipeline: a model directory in, talking-head video out.

A model directory (design.md §3) is what training writes and what `generate`, `eval` and `bench`
take::

    MODEL/lipstep.json        kind (teacher | student), recipe, schedule, default sampler, window
    MODEL/codec/              the latent codec (config.json + model.safetensors)
    MODEL/audio/              the audio encoder's config.json (transformers weights stay at their path)
    MODEL/denoiser/           AvatarDiT config.json + model.safetensors

Generation (`AvatarPipeline.__call__`): crop the portrait to the model's face size, encode it to the
reference latent, encode the audio to per-frame feature windows, then generate the whole audio length
chunk by chunk (`frames` latents per chunk); each chunk sees the last `motion_frames` latents of the
previous one as motion context (the first chunk sees the reference latent repeated, as in training).
Every chunk is one sampler run of `steps` steps with multi-condition CFG (FADA Eq. 9; three condition
patterns batched into one forward, so 3 NFE per step unless both scales are 1). The latents are then
decoded and, by the caller, muxed with the original audio.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lipstep import __version__
from lipstep.config import check, from_dict, to_dict
from lipstep.errors import ConfigError, LipstepError

INFO_NAME = "lipstep.json"
FORMAT = 1
BUNDLED_ROOT = Path(__file__).resolve().parent / "weights"


# ---------------------------------------------------------------------------------------------
# lipstep.json


@dataclass
class SamplerInfo:
    """A model's default sampler (what `generate` uses when no option overrides it)."""

    name: str = "ddim"              # a key of lipstep.samplers.SAMPLERS
    steps: int = 25                 # sampler steps per chunk
    cfg_audio: float = 3.0          # FADA Eq. 9 audio scale (1 = no audio guidance)
    cfg_ref: float = 1.5            # FADA Eq. 9 reference scale (1 = no reference guidance)
    spacing: str = "trailing"       # timestep grid of Schedule.timesteps (ddim, euler)
    eta: float = 0.0                # DDIM noise (0 = deterministic given the initial noise)
    windows: int = 4                # perflow: K time windows (steps >= windows)
    target: str = "ddim_eps"        # perflow: how the output is read (ddim_eps | velocity)
    guidance: str = "cfg"           # cfg: FADA Eq. 9, three condition patterns per step (one pass at
    #                                 scales 1); embedded: the scales are a network input (CFG tokens), one pass

    def validate(self) -> None:
        from lipstep.samplers import SAMPLERS

        check(self.name in SAMPLERS, f"sampler.name must be one of {sorted(SAMPLERS)}, got '{self.name}'")
        check(self.steps >= 1, f"sampler.steps must be >= 1, got {self.steps}")
        check(self.cfg_audio >= 0 and self.cfg_ref >= 0, "sampler cfg scales must be >= 0")
        check(self.spacing in ("trailing", "leading", "linspace"), f"sampler.spacing: bad value '{self.spacing}'")
        check(self.eta >= 0, "sampler.eta must be >= 0")
        check(self.windows >= 1, f"sampler.windows must be >= 1, got {self.windows}")
        check(self.name != "perflow" or self.steps >= self.windows,
              f"sampler.steps ({self.steps}) must be >= sampler.windows ({self.windows}) for perflow")
        check(self.target in ("ddim_eps", "velocity"), f"sampler.target: bad value '{self.target}'")
        check(self.guidance in ("cfg", "embedded"), f"sampler.guidance must be cfg or embedded, got '{self.guidance}'")


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
    fps: float = 25.0
    sample_rate: int = 16000
    format: int = FORMAT
    lipstep_version: str = __version__
    trained: dict = field(default_factory=dict)  # provenance: data, steps, seconds, final loss, ...

    def validate(self) -> None:
        from lipstep.diffusion.schedules import SCHEDULES

        check(self.kind in ("teacher", "student"), f"kind must be teacher or student, got '{self.kind}'")
        check(self.schedule in SCHEDULES, f"schedule must be one of {sorted(SCHEDULES)}, got '{self.schedule}'")
        check(self.frames >= 1 and self.motion_frames >= 0, "frames >= 1 and motion_frames >= 0 required")
        check(self.image_size >= 8, f"image_size must be >= 8, got {self.image_size}")
        check(self.residual >= 0, f"residual must be >= 0, got {self.residual}")
        check(self.anchor_every >= 0, f"anchor_every must be >= 0, got {self.anchor_every}")
        check(self.format <= FORMAT, f"model format {self.format} is newer than this lipstep ({FORMAT}); upgrade lipstep")
        self.sampler.validate()

    def make_schedule(self):
        from lipstep.diffusion.schedules import make_schedule

        return make_schedule(self.schedule, **({"shift": self.flow_shift} if self.schedule == "flow" else {}))

    def nfe_per_chunk(self, steps: int | None = None, cfg_audio: float | None = None,
                      cfg_ref: float | None = None) -> int:
        from lipstep.diffusion.guidance import nfe_per_step

        s = self.sampler
        if s.guidance == "embedded":
            return steps or s.steps
        return (steps or s.steps) * nfe_per_step(s.cfg_audio if cfg_audio is None else cfg_audio,
                                                 s.cfg_ref if cfg_ref is None else cfg_ref)


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
    data.pop("_type", None)
    try:
        info = from_dict(ModelInfo, data)
        info.validate()
    except ConfigError as e:
        raise LipstepError(f"{path}: {e}") from None
    for part in ("codec", "audio", "denoiser"):
        if not (root / part / "config.json").is_file():
            raise LipstepError(f"{root} is incomplete: {part}/config.json is missing")
    return info


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


def default_model() -> str:
    """The fastest bundled model (fewest NFE per chunk); LipstepError when none is bundled."""
    models = bundled_models()
    if not models:
        raise LipstepError("no bundled model is installed; pass --model DIR")
    return min(models, key=lambda n: (read_info(models[n]).nfe_per_chunk(), n))


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
    """One row per bundled model: name, kind, recipe, steps, NFE per chunk, parameters, size on disk."""
    rows = []
    for name, path in bundled_models().items():
        info = read_info(path)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        params = _denoiser_params(path / "denoiser")
        rows.append({"name": name, "kind": info.kind, "recipe": info.recipe, "steps": info.sampler.steps,
                     "cfg": f"{info.sampler.cfg_audio:g}/{info.sampler.cfg_ref:g}",
                     "nfe_per_chunk": info.nfe_per_chunk(), "params_m": round(params / 1e6, 2),
                     "size_mb": round(size / 2**20, 1), "path": str(path)})
    return rows


def _denoiser_params(directory: Path) -> int:
    from safetensors import safe_open

    path = directory / "model.safetensors"
    if not path.is_file():
        return 0
    with safe_open(str(path), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


# ---------------------------------------------------------------------------------------------
# saving and loading


def save_denoiser(net, directory: str | os.PathLike, *, dtype: torch.dtype | None = None) -> Path:
    """Write an AvatarDiT as ``config.json`` + ``model.safetensors`` (optionally cast, e.g. fp16)."""
    from safetensors.torch import save_file

    from lipstep.config import save_config
    from lipstep.fsutil import atomic_path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_config(net.cfg, directory)
    state = {k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach())
             .contiguous().cpu() for k, v in net.state_dict().items()}
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "lipstep": __version__})
    return directory


def load_denoiser(directory: str | os.PathLike, *, device="cpu"):
    """An AvatarDiT from ``config.json`` + ``model.safetensors`` (weights cast to fp32)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from lipstep.nets.dit import AvatarDiT, DiTConfig, drop_removed_options

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
    net = AvatarDiT(cfg)
    path = directory / "model.safetensors"
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise LipstepError(f"{directory}: model.safetensors is missing") from None
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


def save_model(out: str | os.PathLike, info: ModelInfo, codec, audio_encoder, net, *,
               half: bool = False) -> Path:
    """Write a complete model directory atomically (a temporary directory renamed into place).

    ``half=True`` stores the denoiser and codec weights in float16 (half the size; loading casts back
    to float32), which is how bundled checkpoints are kept small.
    """
    from lipstep.audio.encoders import save_audio_encoder
    from lipstep.codecs.vae import save_codec
    from lipstep.fsutil import atomic_dir, write_json_atomic

    info.validate()
    out = Path(out)
    if out.exists() and not (out / INFO_NAME).is_file():
        raise LipstepError(f"{out} exists and is not a lipstep model directory; refusing to overwrite it")
    with atomic_dir(out) as tmp:
        if half:
            codec = _half_copy(codec)
        save_codec(codec, tmp / "codec")
        save_audio_encoder(audio_encoder, tmp / "audio")
        save_denoiser(net, tmp / "denoiser", dtype=torch.float16 if half else None)
        write_json_atomic(tmp / INFO_NAME, {"_type": "ModelInfo", **to_dict(info)})
    return out


def _half_copy(codec):
    import copy

    c = copy.deepcopy(codec)
    c.vae.to(torch.float16)
    return c


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
        from lipstep.audio.encoders import load_audio_encoder
        from lipstep.codecs.vae import load_codec

        root = resolve_model(model)
        info = read_info(root)
        codec = load_codec(root / "codec").to(device)
        audio = load_audio_encoder(root / "audio", device=device)
        net = load_denoiser(root / "denoiser", device=device)
        cfg = net.cfg
        if cfg.latent_channels != codec.latent_channels or cfg.latent_size * codec.downsample != info.image_size:
            raise LipstepError(f"{root}: the denoiser expects {cfg.latent_channels}x{cfg.latent_size}² latents but the "
                               f"codec makes {codec.latent_channels}x{info.image_size // codec.downsample}²")
        if cfg.audio_dim != audio.feature_dim or cfg.audio_window != audio.window:
            raise LipstepError(f"{root}: the denoiser expects audio windows {cfg.audio_window}x{cfg.audio_dim} but the "
                               f"audio encoder makes {audio.window}x{audio.feature_dim}")
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

    def model_fn(self):
        """The denoiser as ``(x_t, t in [0, 1], cond) -> native prediction`` (schedule's model time)."""
        net, schedule = self.denoiser, self.schedule

        def fn(x_t: Tensor, t: Tensor, cond) -> Tensor:
            return net(x_t, schedule.model_time(t), cond)

        return fn

    def crop(self, image: np.ndarray, detector: str = "auto") -> np.ndarray:
        """Face-centred crop of a portrait at the model's size: uint8 [S, S, 3]."""
        from lipstep.data.faces import crop_portrait

        image = np.asarray(image)
        s = self.info.image_size
        if image.shape[:2] == (s, s) and detector == "auto":
            return image.astype(np.uint8)  # already a face crop of the right size
        return crop_portrait(image, s, detector)

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

        ``audio`` must cover a whole number of chunks or more (N' >= chunks · frames); ``n_frames`` (default
        N') is how many latents are returned. ``on_chunk(k, latents [frames, C, h, w])`` is called as soon as
        chunk k is sampled (streaming consumers, `lipstep bench`'s first-chunk latency). A residual model
        (``info.residual > 0``) samples offsets from the reference and chains them as motion context; what is
        returned (and given to ``on_chunk``) is always latents. With ``info.anchor_every = k > 0`` every k-th chunk
        sees the reference as motion context again instead of the previous chunk.
        """
        from tqdm.auto import tqdm

        from lipstep.diffusion.cond import Cond
        from lipstep.diffusion.guidance import multi_cfg
        from lipstep.samplers import SAMPLERS

        s = self.info.sampler
        steps = steps or s.steps
        cfg_audio = s.cfg_audio if cfg_audio is None else cfg_audio
        cfg_ref = s.cfg_ref if cfg_ref is None else cfg_ref
        T, M = self.info.frames, self.info.motion_frames
        n = int(n_frames or len(audio))
        chunks = math.ceil(n / T)
        if len(audio) < chunks * T:
            audio = torch.cat([audio, audio[-1:].expand(chunks * T - len(audio), *audio.shape[1:])])
        dev = self.device
        reference = reference.to(dev, torch.float32)
        C, h, w = reference.shape[1:]
        embedded = s.guidance == "embedded"
        denoiser = self.model_fn() if embedded else multi_cfg(self.model_fn(), cfg_audio, cfg_ref)
        scales = torch.tensor([[float(cfg_audio), float(cfg_ref)]], device=dev) if embedded else None
        if s.name == "perflow":
            from lipstep.samplers.perflow import perflow_timesteps

            if steps < s.windows:
                raise LipstepError(f"this PeRFlow student needs at least {s.windows} steps (one per window), got {steps}")
            timesteps = perflow_timesteps(steps, s.windows)
            extra = {"windows": s.windows, "target": s.target}
        else:
            timesteps = self.schedule.timesteps(steps, spacing=s.spacing)
            extra = {"eta": s.eta} if s.name == "ddim" else {}
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        first = torch.zeros_like(reference) if self.info.residual > 0 else reference  # the reference, model space
        motion = None
        sampler = SAMPLERS[s.name]
        out, nfe = [], 0
        from lipstep.diffusion.guidance import nfe_per_step

        per_step = 1 if embedded else nfe_per_step(cfg_audio, cfg_ref)
        bar = tqdm(total=chunks * steps, desc="generate", unit="step", disable=not progress, dynamic_ncols=True)
        anchor = self.info.anchor_every
        for k in range(chunks):
            if M and (k == 0 or (anchor and k % anchor == 0)):
                motion = first[:, None].expand(1, M, C, h, w)  # the first chunk, or a re-anchored one
            a = audio[k * T:(k + 1) * T][None].to(dev, torch.float32)
            v = visemes[k * T:(k + 1) * T][None].to(dev) if visemes is not None else None
            cond = Cond(reference=reference, audio=a, motion=motion, visemes=v, cfg_scales=scales)
            noise = torch.randn((1, T, C, h, w), generator=gen).to(dev)
            z = sampler(denoiser, noise, timesteps, cond, schedule=self.schedule, generator=gen,
                        callback=lambda *_: bar.update(1), **extra)
            nfe += steps * per_step
            if M:
                motion = z[:, -M:]
            if self.info.residual > 0:
                z = reference[:, None] + z / self.info.residual
            out.append(z[0])
            if on_chunk is not None:
                on_chunk(k, z[0])
        bar.close()
        return torch.cat(out)[:n], nfe

    @torch.no_grad()
    def decode(self, latents: Tensor) -> np.ndarray:
        """Latents [N, C, h, w] -> uint8 frames [N, S, S, 3]."""
        x = self.codec.decode_video(latents[None].to(self.device))[0]  # [N, 3, S, S] in [-1, 1]
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    # --- the whole thing -------------------------------------------------------------------------

    def __call__(self, image: np.ndarray, audio: np.ndarray, *, steps: int | None = None,
                 cfg_audio: float | None = None, cfg_ref: float | None = None, seed: int = 0,
                 detector: str = "auto", progress: bool = False,
                 on_chunk: Callable[[int, Tensor], None] | None = None) -> Generation:
        """Portrait uint8 [H, W, 3] + mono float32 audio at the model's sample rate -> `Generation`.

        ``timings`` are seconds per stage (CUDA-synchronised); ``on_chunk`` as in `generate_latents`.
        """
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size == 0:
            raise LipstepError("the audio is empty")
        if not np.isfinite(audio).all():
            raise LipstepError("the audio contains NaN or infinite samples")
        timings = {}
        t0 = self.clock()
        crop = self.crop(image, detector)
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
    from lipstep.data.media import read_audio, read_image, write_video

    out_path = Path(out_path)
    if out_path.suffix.lower() not in (".mp4", ".mkv", ".mov"):
        raise LipstepError(f"--out {out_path}: use a .mp4, .mkv or .mov file name")
    image = read_image(image_path)          # MediaError (a LipstepError) names the file and the problem
    pipe = AvatarPipeline.from_pretrained(model, device=device)
    audio = read_audio(audio_path, pipe.info.sample_rate, max_seconds=max_seconds)
    if audio.size == 0:
        raise LipstepError(f"{audio_path}: the audio is empty")
    if len(audio) > max_seconds * pipe.info.sample_rate:
        raise LipstepError(f"{audio_path}: {len(audio) / pipe.info.sample_rate:.0f} s of audio is longer than "
                           f"--max-seconds {max_seconds:g}")
    t0 = time.perf_counter()
    result = pipe(image, audio, steps=steps, cfg_audio=cfg_audio, cfg_ref=cfg_ref, seed=seed, detector=detector,
                  progress=progress)
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
