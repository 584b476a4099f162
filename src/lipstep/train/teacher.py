"""The multi-step teacher: denoising training of an AvatarDiT on cached codec latents.

Objective (algorithms.md §1; the schedule decides what "native" means): for a window of clean
latents x0 [B, T, C, h, w], draw t ~ U(t_min, 1] and eps ~ N(0, I) per sample, form
x_t = a_t·x0 + s_t·eps, and regress the net's output on ``schedule.target(x0, eps, t)`` (eps, VP v
or flow velocity). Options, all per sample and all from the step's generator:

- condition dropout (`lipstep.diffusion.guidance.condition_dropout`): audio dropped with
  ``p_drop_audio``, audio and reference dropped with ``p_drop_both``, so the teacher supports
  FADA's three-pass multi-condition CFG;
- first-chunk training: with ``p_motion_ref`` the motion latents are replaced by the reference
  latent repeated, which is what generation feeds the first chunk (there is no previous chunk);
- min-SNR-γ loss weighting (Hang et al. 2023) for faster convergence: weight min(SNR, γ)/SNR for
  eps prediction, min(SNR, γ)/(SNR + 1) for v / flow velocity (min(SNR, γ) on the x0 error), and
  min(SNR + 1, γ) for x0 prediction (the v-loss weight, capped: it keeps a floor of 1 at high noise,
  where an x0 net must learn the conditional mean; see `snr_weight`);
- ``motion_noise``: Gaussian noise of a random level (up to ``motion_noise``) on each sample's motion
  latents, so the net learns not to copy the previous chunk's flaws (generated motion frames drift in
  colour and identity when the net trusts them as if they were real frames);
- ``residual`` (a model option): the denoiser works on offsets from the reference latent,
  ``(z - z_ref) · residual`` (`ModelInfo.residual`; the dataset makes the windows and motion latents
  offsets, the pipeline adds the reference back). The static face, hair, clothes and background then
  cost nothing to reproduce and cannot drift in colour, and the net's capacity goes to what changes:
  the mouth, blinks and head motion. The scale (4) brings the offsets (std ≈ 0.07 on the synthetic
  world's pixels) to the spread of the absolute latents, so the noise schedule keeps its meaning;
- ``motion_weight``: a per-position weight 1 + w·d/mean(d), with d the temporal standard deviation of
  x0 over the window: positions that move (the mouth above all; also blinks and head motion) count
  more. Talking heads are mostly static, and the mouth is a few latent pixels, so an unweighted loss
  spends almost all its signal on the background. The weight is computed from the data, so it needs
  no landmarks and works on real video as well as on the synthetic world;
- ``audio_norm``: the log-mel input is standardised with one mean and one standard deviation of the
  training split (`audio_stats`, stored in the net's config as ``audio_mean`` / ``audio_std``, so
  students and the pipeline inherit it). Raw log-mel sits near -9 ± 3, which would push the audio
  MLP's first layer far from the unit-variance inputs its initialisation assumes;
- ``mouth_state`` (a net option, not a loss; on by default): before the denoiser trains, its audio ->
  mouth-state head is fitted on the labelled training frames and frozen (`lipstep.train.mouth_head`);
  its reading of each frame then conditions the denoiser, which only has to render it. It needs data
  with mouth labels (the synthetic world); pass ``mouth_state=false`` for unlabelled (real) video.

Options tried and removed on 2026-12-05 because they did not pay off (a latent mouth-expert loss, an
audio probe head, per-frame audio adaLN, a min-SNR floor) are documented, with their measured results,
in ``experiments/teacher/README.md``.

`train_teacher` runs the whole thing: encode the prepared clips with the codec (cached, resumable),
build the net from a preset, train with `lipstep.train.loop.train` (checkpoints, exact resume, EMA),
write periodic validation videos (held-out clips, their own audio and reference), and export the EMA
weights as a model directory ``OUT/model`` that `lipstep generate` takes.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from lipstep.audio.encoders import AudioConfig
from lipstep.config import check
from lipstep.data.dataset import WindowConfig
from lipstep.diffusion.cond import Cond
from lipstep.diffusion.guidance import condition_dropout
from lipstep.diffusion.schedules import Schedule, append_dims
from lipstep.errors import DataError, LipstepError
from lipstep.pipeline import ModelInfo, SamplerInfo
from lipstep.train.loop import TrainConfig
from lipstep.train.mouth_head import MouthHeadConfig, check_mouth_labels, fit_mouth_head


@dataclass
class TeacherLossConfig:
    p_drop_audio: float = 0.1        # P(audio dropped, reference kept)
    p_drop_both: float = 0.1         # P(audio and reference dropped)
    p_motion_ref: float = 0.5        # P(motion latents replaced by the reference: first-chunk training; generation
    #   re-anchors every chunk by default, anchor_every=1, so this is the case generation meets most)
    min_snr_gamma: float = 5.0       # min-SNR-γ weighting; 0 = plain MSE
    motion_weight: float = 2.0       # extra weight on positions that move within the window; 0 = off
    t_min: float = 0.001             # training times t ~ U(t_min, 1]
    motion_noise: float = 0.1        # Gaussian noise of std ~ U(0, motion_noise) per sample on the motion latents:
    #   generated motion frames are imperfect, and a net trained on clean ones copies (and compounds) their
    #   errors chunk after chunk; 0 = off

    def validate(self) -> None:
        check(0 <= self.p_drop_audio and 0 <= self.p_drop_both and self.p_drop_audio + self.p_drop_both <= 1,
              "loss.p_drop_audio and p_drop_both must be >= 0 with a sum <= 1")
        check(0 <= self.p_motion_ref <= 1, "loss.p_motion_ref must be in [0, 1]")
        check(self.min_snr_gamma >= 0 and self.motion_weight >= 0 and self.motion_noise >= 0,
              "loss.min_snr_gamma, motion_weight and motion_noise must be >= 0")
        check(0 <= self.t_min < 1, "loss.t_min must be in [0, 1)")


@dataclass
class TeacherConfig:
    """`lipstep train teacher`: net, schedule, data windows, objective, optimisation, default sampler."""

    preset: Literal["tiny", "small", "base", "large"] = "small"
    attention: Literal["full", "factorized"] = "full"
    patch: int = 0                   # latent patch side; 0 = smallest giving <= 64 tokens per frame
    audio_norm: bool = True          # standardise the log-mel input with the training split's mean / std
    grad_checkpointing: bool = False
    channel_context: bool = True     # video tokens also see the aligned last-motion + reference patches
    #   (DiTConfig.channel_context): copying the face is free, the capacity goes to the mouth
    residual: float = 4.0            # > 0: diffuse offsets from the reference latent, (z - z_ref) · residual, so
    #   identity and colours come from the reference itself (ModelInfo.residual); 0 = diffuse the latents
    anchor_every: int = 1            # generation: every k-th chunk sees the reference as motion context again
    #   (ModelInfo.anchor_every; 1 = every chunk: no error can accumulate over long runs; 0 = always chain)
    mouth_state: bool = True         # an audio -> mouth-state head, fitted first and frozen, conditions every frame
    #   (DiTConfig.mouth_state, lipstep.train.mouth_head); needs mouth labels (the synthetic world):
    #   pass mouth_state=false for unlabelled (real) data
    schedule: Literal["vp_eps", "vp_v", "vp_x0", "flow"] = "vp_x0"  # x0: the net outputs the clean (offset)
    #   sample, not full-rank noise; with 192-value pixel patches on a 192-wide net, eps / v prediction
    #   leaves uncorrected noise (experiments/teacher/README.md, teacher v6)
    flow_shift: float = 1.0
    window: WindowConfig = field(default_factory=WindowConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)  # mel: the shards' own log-mel windows
    loss: TeacherLossConfig = field(default_factory=TeacherLossConfig)
    mouth_head: MouthHeadConfig = field(default_factory=MouthHeadConfig)  # fitted only when mouth_state is on
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=2700, batch_size=8, lr=4e-4, ema_decay=0.995, checkpoint_every=250, validate_every=500, log_every=20))
    sampler: SamplerInfo = field(default_factory=SamplerInfo)
    val_clips: int = 2               # held-out clips rendered as validation videos
    val_steps: int = 10              # sampler steps of validation videos (cheaper than the default 25)
    val_seconds: float = 2.0         # length of each validation video

    def validate(self) -> None:
        check(self.patch >= 0, "patch must be >= 0")
        check(self.residual >= 0, "residual must be >= 0 (0 = off)")
        check(self.anchor_every >= 0, "anchor_every must be >= 0 (0 = always chain)")
        check(self.audio.kind in ("mel", "viseme"),
              "train teacher supports audio.kind mel (from the shards) or viseme (from labels)")
        check(self.val_clips >= 0 and self.val_steps >= 1 and self.val_seconds > 0,
              "val_clips >= 0, val_steps >= 1, val_seconds > 0 required")


# ---------------------------------------------------------------------------------------------
# the method


def sample_times(n: int, generator: torch.Generator, t_min: float, device) -> Tensor:
    """t ~ U(t_min, 1] per sample."""
    u = torch.rand(n, generator=generator, device=generator.device).to(device)
    return t_min + (1.0 - t_min) * (1.0 - u)


def snr_weight(schedule: Schedule, t: Tensor, gamma: float) -> Tensor:
    """min-SNR-γ weight per sample for the schedule's native target (1 when gamma is 0).

    eps / v / flow targets: min(SNR, γ)/SNR, min(SNR, γ)/(SNR + 1) (Hang et al. 2023), which in x0 terms
    weights the x0 error by min(SNR, γ). x0 targets: min(SNR + 1, γ) on the x0 error, the v-loss weight
    (SNR + 1, as pixel-space x0 transformers train, Li & He 2025) capped like min-SNR. The difference is
    the high-noise end: min(SNR, γ) is 0.005 at t = 1 on the SD table, so an x0 net never learns what it
    must predict from (almost) pure noise, and its first sampler steps paint a texture of training-set
    offsets that later steps sharpen into glyphs (teacher v6, experiments/teacher/README.md).
    """
    if gamma <= 0:
        return torch.ones_like(t)
    snr = schedule.snr(t).float().clamp(max=1e8)
    if schedule.prediction == "x0":
        return (snr + 1.0).clamp(max=max(gamma, 1.0))
    clipped = snr.clamp(max=gamma)
    return clipped / snr if schedule.prediction == "eps" else clipped / (snr + 1.0)


def motion_weights(x0: Tensor, strength: float) -> Tensor:
    """Per-position weight [B, 1, 1, h, w]: 1 + strength · d / mean(d), d = std of x0 over time and channels."""
    if strength <= 0 or x0.shape[1] < 2:
        return torch.ones_like(x0[:, :1, :1])
    d = x0.float().std(dim=1).mean(dim=1, keepdim=True)             # [B, 1, h, w]
    d = d / d.mean(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    return (1.0 + strength * d)[:, None]


def noisy_motion(motion: Tensor, generator: torch.Generator, max_std: float) -> Tensor:
    """Motion latents [B, M, C, h, w] plus Gaussian noise of one std ~ U(0, max_std) per sample."""
    std = torch.rand(len(motion), generator=generator, device=generator.device).to(motion.device) * max_std
    noise = torch.randn(motion.shape, generator=generator, device=generator.device).to(motion.device)
    return motion + append_dims(std, motion.ndim).to(motion.dtype) * noise.to(motion.dtype)


def batch_cond(batch: dict, generator: torch.Generator | None = None, p_motion_ref: float = 0.0, *,
               use_visemes: bool = False, residual: bool = False) -> Cond:
    """The Cond of a latent batch (teacher and students alike).

    With a generator and ``p_motion_ref > 0``, each sample's motion latents are replaced by its
    reference latent repeated with that probability: first-chunk training, since generation feeds
    the first chunk the reference as motion (there is no previous chunk). For a ``residual`` model
    (motion latents are offsets from the reference) the reference's own offset is zero.
    """
    ref, motion = batch["reference_latent"], batch.get("motion_latents")
    if motion is not None and motion.shape[1] == 0:
        motion = None
    if motion is not None and generator is not None and p_motion_ref > 0:
        u = torch.rand(len(ref), generator=generator, device=generator.device).to(ref.device)
        use_ref = append_dims(u < p_motion_ref, motion.ndim)
        first = torch.zeros_like(ref) if residual else ref
        motion = torch.where(use_ref, first[:, None].expand_as(motion), motion)
    return Cond(reference=ref, audio=batch["audio"], motion=motion,
                visemes=batch.get("visemes") if use_visemes else None)


class TeacherMethod:
    """Denoising objective with condition dropout (see the module docstring)."""

    roles = ("denoiser",)

    def __init__(self, net, schedule: Schedule, cfg: TeacherLossConfig | None = None, *, use_visemes: bool = False,
                 residual: bool = False):
        self.net, self.schedule = net, schedule
        self.cfg = cfg or TeacherLossConfig()
        self.cfg.validate()
        self.use_visemes = use_visemes
        self.residual = residual  # batches hold offsets from the reference (TeacherConfig.residual)

    def trainable(self):
        return {"denoiser": self.net}

    def phase(self, step: int) -> str:
        return "denoiser"

    def bind(self, modules) -> None:
        self.net = modules["denoiser"]

    def cond_from_batch(self, batch: dict, generator: torch.Generator | None = None) -> Cond:
        """The Cond of a latent batch; with a generator, first-chunk motion replacement (and the motion
        noise of ``motion_noise``) is drawn too."""
        cond = batch_cond(batch, generator, self.cfg.p_motion_ref, use_visemes=self.use_visemes, residual=self.residual)
        if generator is not None and self.cfg.motion_noise > 0 and cond.motion is not None:
            cond = dataclasses.replace(cond, motion=noisy_motion(cond.motion, generator, self.cfg.motion_noise))
        return cond

    def loss(self, batch: dict, step: int, generator: torch.Generator):
        x0 = batch["latents"]
        b = x0.shape[0]
        t = sample_times(b, generator, self.cfg.t_min, x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
        x_t = self.schedule.add_noise(x0, eps, t)
        cond = self.cond_from_batch(batch, generator)
        cond = condition_dropout(cond, generator, self.cfg.p_drop_audio, self.cfg.p_drop_both)
        pred = self.net(x_t, self.schedule.model_time(t), cond).float()
        target = self.schedule.target(x0, eps, t).float()
        err = (pred - target).square() * motion_weights(x0, self.cfg.motion_weight)
        per_sample = err.flatten(1).mean(1)
        w = snr_weight(self.schedule, t, self.cfg.min_snr_gamma)
        loss = (w * per_sample).mean()
        return loss, {"mse": float(per_sample.detach().mean())}


# ---------------------------------------------------------------------------------------------
# building and running


def resolve_patch(latent_size: int, patch: int) -> int:
    """``patch`` or, when 0, the smallest divisor of the latent size giving at most 8x8 tokens per frame."""
    if patch:
        if latent_size % patch:
            raise LipstepError(f"patch {patch} does not divide the latent size {latent_size}")
        return patch
    return next(p for p in range(1, latent_size + 1) if latent_size % p == 0 and (latent_size // p) <= 8)


def audio_stats(prepared: str | Path, split: str = "train", max_clips: int = 64) -> tuple[float, float]:
    """Mean and standard deviation of the shards' log-mel over (up to ``max_clips``) clips of a split.

    One scalar each, not per mel bin: a per-bin or per-vector normalisation would remove the overall
    loudness, which is what tells an open vowel from a closed consonant.
    """
    from lipstep.data.dataset import open_shard, read_manifest

    prepared = Path(prepared)
    rows = [r for r in read_manifest(prepared) if r["split"] == split][:max_clips]
    if not rows:
        raise DataError(f"{prepared}: no {split} clips to take audio statistics from")
    total = total_sq = count = 0.0
    for row in rows:
        mel = np.asarray(open_shard(prepared / row["shard"], keys=("mel",))["mel"], dtype=np.float64)
        total, total_sq, count = total + mel.sum(), total_sq + np.square(mel).sum(), count + mel.size
    mean = total / count
    std = float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))
    if not np.isfinite(mean) or not std > 1e-6:
        raise DataError(f"{prepared}: the {split} clips' log-mel has no spread (mean {mean}, std {std}): silent audio?")
    return float(mean), std


def build_teacher_net(cfg: TeacherConfig, codec, audio_dim: int, audio_window: int,
                      audio_norm: tuple[float, float] = (0.0, 1.0)):
    from lipstep.nets.dit import AvatarDiT, DiTConfig

    latent_size = codec.cfg.image_size // codec.downsample
    dit = DiTConfig.preset(cfg.preset, latent_channels=codec.latent_channels, latent_size=latent_size,
                           patch=resolve_patch(latent_size, cfg.patch), frames=cfg.window.frames,
                           motion_frames=cfg.window.motion_frames, audio_dim=audio_dim, audio_window=audio_window,
                           audio_mean=round(audio_norm[0], 4), audio_std=round(audio_norm[1], 4),
                           attention=cfg.attention, use_visemes=False, grad_checkpointing=cfg.grad_checkpointing,
                           channel_context=cfg.channel_context, mouth_state=3 if cfg.mouth_state else 0)
    return AvatarDiT(dit)


class _VisemeAudio(torch.utils.data.Dataset):
    """Wraps a window dataset so that ``audio`` holds one-hot viseme windows instead of log-mel."""

    def __init__(self, base, encoder):
        self.base, self.encoder = base, encoder

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        item = dict(self.base[i])
        if "visemes" not in item:
            raise DataError("audio.kind viseme needs viseme labels (synthetic world data)")
        item["audio"] = self.encoder.encode(item["visemes"], len(item["visemes"]))
        return item


def _check_shapes(codec, prepared: Path) -> int:
    from lipstep.data.dataset import read_manifest

    sizes = {int(r["size"]) for r in read_manifest(prepared) if "size" in r}
    if len(sizes) > 1:
        raise DataError(f"{prepared}: clips of several sizes {sorted(sizes)}; prepare them at one size")
    size = sizes.pop() if sizes else codec.cfg.image_size
    if size % codec.downsample:
        raise DataError(f"{prepared}: {size}px frames are not a multiple of the codec's downsample {codec.downsample}")
    return size


def train_teacher(prepared: str | Path, codec_dir: str | Path, out: str | Path, cfg: TeacherConfig | None = None,
                  *, resume: bool = False, progress: bool = True) -> Path:
    """Encode latents, train, validate, export ``out/model``; returns the model directory."""
    from lipstep.audio.encoders import build_audio_encoder
    from lipstep.codecs.cache import encode_prepared
    from lipstep.codecs.vae import load_codec
    from lipstep.data.dataset import WindowDataset
    from lipstep.nets.dit import param_count
    from lipstep.train.loop import latest_checkpoint, train

    cfg = cfg or TeacherConfig()
    cfg.validate()
    prepared, out = Path(prepared), Path(out)
    if not resume and latest_checkpoint(out) is not None:
        raise LipstepError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    started = time.perf_counter()
    fit_head = cfg.mouth_state and (not resume or latest_checkpoint(out) is None)  # a resumed run restores it
    if fit_head:
        check_mouth_labels(prepared)  # before minutes of latent encoding
    codec = load_codec(codec_dir)
    size = _check_shapes(codec, prepared)
    codec.cfg.image_size = size
    cache = encode_prepared(prepared, codec, progress=progress)
    audio = build_audio_encoder(cfg.audio)
    if cfg.audio.kind == "mel" and (audio.window, audio.feature_dim) != (16, 80):
        raise LipstepError("train teacher uses the shards' log-mel windows: audio.window must be 16 and n_mels 80")
    dataset = WindowDataset(prepared, "train", cfg.window, latents=cache, pixels=False, residual=cfg.residual)
    if cfg.audio.kind == "viseme":
        dataset = _VisemeAudio(dataset, audio)
    norm = audio_stats(prepared) if cfg.audio_norm and cfg.audio.kind == "mel" else (0.0, 1.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        net = build_teacher_net(cfg, codec, audio.feature_dim, audio.window, norm)
    if fit_head:
        encode = (lambda shard: audio.encode(shard["visemes"], len(shard["visemes"]))) \
            if cfg.audio.kind == "viseme" else None
        fit_mouth_head(net, prepared, out, cfg.mouth_head, encode=encode, progress=progress)
    schedule = ModelInfo(schedule=cfg.schedule, flow_shift=cfg.flow_shift).make_schedule()
    method = TeacherMethod(net, schedule, cfg.loss, residual=cfg.residual > 0)
    print(f"teacher: AvatarDiT {cfg.preset} ({param_count(net.cfg) / 1e6:.2f} M parameters, "
          f"{net.cfg.tokens_per_frame} tokens/frame, {cfg.attention} attention), schedule {cfg.schedule}, "
          f"{len(dataset)} training windows", flush=True)
    info = ModelInfo(kind="teacher", recipe="teacher", schedule=cfg.schedule, flow_shift=cfg.flow_shift,
                     sampler=cfg.sampler, frames=cfg.window.frames, motion_frames=cfg.window.motion_frames,
                     image_size=size, residual=cfg.residual, anchor_every=cfg.anchor_every)
    validate = _validator(prepared, cache, codec, audio, info, cfg, out)
    state = train(method, dataset, cfg.train, out, resume=resume, run_config=cfg,
                  validate=validate if cfg.val_clips else None, progress=progress)
    final = state.emas["denoiser"].shadow if "denoiser" in state.emas else net
    info.trained = {"data": str(prepared.resolve()), "steps": state.step, "preset": cfg.preset,
                    "seconds_this_run": round(time.perf_counter() - started, 1),
                    "weights": "ema" if "denoiser" in state.emas else "model"}
    from lipstep.pipeline import save_model

    model_dir = save_model(out / "model", info, codec, audio, final.eval())
    print(f"wrote the teacher model to {model_dir}", flush=True)
    return model_dir


def _validator(prepared: Path, cache: Path, codec, audio, info: ModelInfo, cfg: TeacherConfig, out: Path):
    """A callable(step) that renders validation videos of held-out clips with the EMA weights."""
    from lipstep.codecs.cache import load_latents
    from lipstep.data.dataset import open_shard, read_manifest

    rows = read_manifest(prepared)
    split = next((s for s in ("val", "test", "train") if any(r["split"] == s for r in rows)), None)
    clips = [r for r in rows if r["split"] == split][: cfg.val_clips]

    def run(step: int, models: dict) -> dict:
        from lipstep.data.media import write_video
        from lipstep.pipeline import AvatarPipeline

        net = models["denoiser"]
        was_training = net.training
        net.eval()
        pipe = AvatarPipeline(info, codec, audio, net)
        errs = []
        for row in clips:
            data = open_shard(prepared / row["shard"], ("frames", "audio", "mel"))
            z = torch.from_numpy(load_latents(cache, str(row["id"])).astype(np.float32))
            n = min(len(z), int(cfg.val_seconds * info.fps))
            chunks = -(-n // info.frames)
            feats = audio.encode(data["audio"], chunks * info.frames)
            lat, _ = pipe.generate_latents(z[:1], feats, steps=cfg.val_steps, n_frames=n, seed=0)
            frames = pipe.decode(lat)
            real = np.asarray(data["frames"][:n])
            errs.append(float(np.abs(frames.astype(np.float32) - real.astype(np.float32)).mean() / 255))
            wav = np.asarray(data["audio"])[: int(n / info.fps * info.sample_rate)]
            side = np.concatenate([real, frames], axis=2)  # ground truth | generated
            write_video(out / "val" / f"step_{step:06d}_{row['id']}.mp4", side, info.fps, audio=wav,
                        sample_rate=info.sample_rate)
        net.train(was_training)
        return {"l1_pixels": float(np.mean(errs))} if errs else {}

    return run


__all__ = ["TeacherConfig", "TeacherLossConfig", "TeacherMethod", "audio_stats", "batch_cond", "build_teacher_net",
           "motion_weights", "noisy_motion", "resolve_patch", "sample_times", "snr_weight", "train_teacher"]
