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

`TeacherRecipe` builds the run (encode the prepared clips with the codec, cached and resumable; fit
the mouth-state head; build the net from a preset) and `lipstep.train.runner.run_recipe` runs it like
every recipe: the shared loop (checkpoints, exact resume, EMA), periodic validation videos (held-out
clips, their own audio and reference), and the EMA weights exported as a model directory ``OUT/model``
that `lipstep generate` takes. `train_teacher` is the two together.

The loss pieces a student reuses (`batch_cond`, `motion_weights`, `snr_weight`, ...) live in
`lipstep.distill.losses`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from lipstep.audio.encoders import AudioConfig, build_audio_encoder
from lipstep.codecs.cache import encode_prepared
from lipstep.codecs.vae import load_codec
from lipstep.config import check
from lipstep.data.blinks import blink_rate
from lipstep.data.dataset import WindowConfig, WindowDataset, open_shard, read_manifest, split_track
from lipstep.data.media import FPS
from lipstep.diffusion.cond import Cond
from lipstep.diffusion.denoiser import Denoiser
from lipstep.diffusion.guidance import condition_dropout
from lipstep.diffusion.schedules import Schedule
from lipstep.distill.losses import (
    batch_cond,
    blink_weights,
    motion_weights,
    noisy_motion,
    sample_times,
    snr_weight,
)
from lipstep.distill.method import Built, Method, Role, TrainConfig, Validation
from lipstep.errors import DataError, LipstepError
from lipstep.modeldir import ModelInfo, check_data_size, components_dir, load_denoiser, resolve_model
from lipstep.nets.dit import AvatarDiT, DiTConfig, param_count
from lipstep.samplers import SamplerInfo
from lipstep.train.loop import latest_checkpoint
from lipstep.train.mouth_head import MouthHeadConfig, check_mouth_labels, fit_mouth_head
from lipstep.train.runner import run_recipe


@dataclass
class TeacherLossConfig:
    p_drop_audio: float = 0.1        # P(audio dropped, reference kept)
    p_drop_both: float = 0.1         # P(audio and reference dropped)
    p_motion_ref: float = 0.5        # P(motion latents replaced by the reference: first-chunk training; generation
    #   re-anchors every chunk by default, anchor_every=1, so this is the case generation meets most)
    min_snr_gamma: float = 5.0       # min-SNR-γ weighting; 0 = plain MSE
    motion_weight: float = 2.0       # extra weight on positions that move within the window; 0 = off
    t_min: float = 0.001             # training times t ~ U(t_min, 1]
    blink_weight: float = 16.0       # nets that read blinks (blink=true): frames weigh 1 + w · their eyelid closure
    #   (`losses.blink_weights`); blinks cover ~4 % of the frames, so unweighted they are hardly asked for. 16 gave
    #   the deepest blinks measured (experiments/streaming/README.md); 0 = off
    motion_noise: float = 0.1        # Gaussian noise of std ~ U(0, motion_noise) per sample on the motion latents:
    #   generated motion frames are imperfect, and a net trained on clean ones copies (and compounds) their
    #   errors chunk after chunk; 0 = off

    def validate(self) -> None:
        check(0 <= self.p_drop_audio and 0 <= self.p_drop_both and self.p_drop_audio + self.p_drop_both <= 1,
              "loss.p_drop_audio and p_drop_both must be >= 0 with a sum <= 1")
        check(0 <= self.p_motion_ref <= 1, "loss.p_motion_ref must be in [0, 1]")
        check(min(self.min_snr_gamma, self.motion_weight, self.motion_noise, self.blink_weight) >= 0,
              "loss.min_snr_gamma, motion_weight, motion_noise and blink_weight must be >= 0")
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
    out_head: int = 64               # hidden channels of the convolutional output head (DiTConfig.out_head; 0 = none):
    #   per-pixel refinement from the output, the noisy input and the aligned reference; teacher v9's change
    #   (MouthErr 0.112 -> 0.095, FD 0.098 -> 0.045, dark faces no longer worse; experiments/teacher/README.md)
    mouth_state: bool = True         # an audio -> mouth-state head, fitted first and frozen, conditions every frame
    #   (DiTConfig.mouth_state, lipstep.train.mouth_head); needs mouth labels (the synthetic world):
    #   pass mouth_state=false for unlabelled (real) data
    blink: bool = False              # condition every frame on its eyelid closure (DiTConfig.blink) from the world's
    #   blink labels; generation then draws blinks at the labels' rate (ModelInfo.blinks_per_second); needs blink
    #   labels (the synthetic world)
    blink_repeat: int = 3            # blink=true: training windows holding a blink appear 1 + k times per epoch
    #   (`WindowDataset`; 11 % of the windows hold one, 32 % of the draws with k = 3); 0 = as the clips have them
    init: str = ""                   # a model directory or bundled name whose denoiser starts this run (fine-tuning):
    #   the same net (preset, codec, data, options), except that options in `GROWABLE` may be switched on, their
    #   zero-initialised tensors then start at zero (e.g. init=teacher blink=true); its fitted mouth-state head
    #   comes with it. "" = random initialisation
    grown_lr_scale: float = 10.0     # learning-rate multiplier of the tensors that switched-on `GROWABLE` options add
    #   (blink_*): in a fine-tune (init) they start at zero while the rest is trained, and at the common rate they
    #   grew linearly, 4-5 eye-brightness units per 1 000 steps (experiments/streaming/README.md); 1 = the common rate
    schedule: Literal["vp_eps", "vp_v", "vp_x0", "flow"] = "vp_x0"  # x0: the net outputs the clean (offset)
    #   sample, not full-rank noise; with 192-value pixel patches on a 192-wide net, eps / v prediction
    #   leaves uncorrected noise (experiments/teacher/README.md, teacher v6)
    flow_shift: float = 1.0
    window: WindowConfig = field(default_factory=WindowConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)  # mel: the shards' own log-mel windows
    loss: TeacherLossConfig = field(default_factory=TeacherLossConfig)
    mouth_head: MouthHeadConfig = field(default_factory=MouthHeadConfig)  # fitted only when mouth_state is on
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=3400, batch_size=8, lr=4e-4, ema_decay=0.995, checkpoint_every=250, validate_every=500, log_every=20))
    sampler: SamplerInfo = field(default_factory=SamplerInfo)
    val_clips: int = 2               # held-out clips rendered as validation videos
    val_steps: int = 10              # sampler steps of validation videos (cheaper than the default 25)
    val_seconds: float = 2.0         # length of each validation video

    def validate(self) -> None:
        check(self.patch >= 0, "patch must be >= 0")
        check(self.out_head >= 0, "out_head must be >= 0")
        check(self.residual >= 0, "residual must be >= 0 (0 = off)")
        check(self.blink_repeat >= 0, f"blink_repeat must be >= 0, got {self.blink_repeat}")
        check(self.grown_lr_scale > 0, f"grown_lr_scale must be > 0, got {self.grown_lr_scale}")
        check(self.anchor_every >= 0, "anchor_every must be >= 0 (0 = always chain)")
        check(self.audio.kind in ("mel", "viseme"),
              "train teacher supports audio.kind mel (from the shards) or viseme (from labels)")
        check(self.val_clips >= 0 and self.val_steps >= 1 and self.val_seconds > 0,
              "val_clips >= 0, val_steps >= 1, val_seconds > 0 required")


# ---------------------------------------------------------------------------------------------
# the method


class TeacherMethod(Method):
    """Denoising objective with condition dropout (see the module docstring); one role, ``denoiser``."""

    def __init__(self, net, schedule: Schedule, cfg: TeacherLossConfig | None = None, *, use_visemes: bool = False,
                 residual: bool = False, lr_scale: dict[str, float] | None = None):
        self.net, self.schedule = net, schedule
        self.lr_scale = dict(lr_scale or {})  # parameter name -> lr multiplier (Role.lr_scale)
        self.cfg = cfg or TeacherLossConfig()
        self.cfg.validate()
        self.use_visemes = use_visemes
        self.residual = residual  # batches hold offsets from the reference (TeacherConfig.residual)
        self.bind({"denoiser": net})

    def roles(self) -> dict[str, Role]:
        return {"denoiser": Role(self.net, lr_scale=self.lr_scale)}

    def cond_from_batch(self, batch: dict, generator: torch.Generator | None = None) -> Cond:
        """The Cond of a latent batch; with a generator, first-chunk motion replacement (and the motion
        noise of ``motion_noise``) is drawn too."""
        cond = batch_cond(batch, generator, self.cfg.p_motion_ref, use_visemes=self.use_visemes, residual=self.residual)
        if generator is not None and self.cfg.motion_noise > 0 and cond.motion is not None:
            cond = dataclasses.replace(cond, motion=noisy_motion(cond.motion, generator, self.cfg.motion_noise))
        return cond

    def loss(self, role: str, batch: dict, step: int, generator: torch.Generator):
        x0 = batch["latents"]
        b = x0.shape[0]
        t = sample_times(b, generator, self.cfg.t_min, x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
        x_t = self.schedule.add_noise(x0, eps, t)
        cond = self.cond_from_batch(batch, generator)
        cond = condition_dropout(cond, generator, self.cfg.p_drop_audio, self.cfg.p_drop_both)
        pred = Denoiser(self.modules["denoiser"], self.schedule)(x_t, t, cond)
        target = self.schedule.target(x0, eps, t).float()
        err = (pred - target).square() * motion_weights(x0, self.cfg.motion_weight)
        if self.net.cfg.blink:
            err = err * blink_weights(batch, self.cfg.blink_weight)
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


def label_blink_rate(prepared: str | Path, fps: float, split: str = "train") -> float:
    """Blinks per second in the blink labels of a split's clips (`lipstep.data.blinks.blink_rate`); a one-line
    error when a clip has none (``blink=true`` needs labelled data: the synthetic world)."""
    tracks = split_track(prepared, "blink", split)
    for shard, blink in tracks:
        if blink is None:
            raise DataError(f"{shard}: no blink labels. blink=true needs data with a blink track (the synthetic "
                            "world); pass blink=false for unlabelled (real) data")
    if not tracks:
        raise DataError(f"{prepared}: no {split} clips to read blink labels from")
    rate = round(blink_rate([np.asarray(b, np.float32) for _, b in tracks], fps), 4)
    if rate == 0:
        raise DataError(f"{prepared}: the {split} clips' blink labels hold no blink; blink=true has nothing to learn")
    return rate


def build_teacher_net(cfg: TeacherConfig, codec, audio_dim: int, audio_window: int,
                      audio_norm: tuple[float, float] = (0.0, 1.0)):
    latent_size = codec.cfg.image_size // codec.downsample
    dit = DiTConfig.preset(cfg.preset, latent_channels=codec.latent_channels, latent_size=latent_size,
                           patch=resolve_patch(latent_size, cfg.patch), frames=cfg.window.frames,
                           motion_frames=cfg.window.motion_frames, audio_dim=audio_dim, audio_window=audio_window,
                           audio_mean=round(audio_norm[0], 4), audio_std=round(audio_norm[1], 4),
                           attention=cfg.attention, use_visemes=False, grad_checkpointing=cfg.grad_checkpointing,
                           channel_context=cfg.channel_context, mouth_state=3 if cfg.mouth_state else 0,
                           out_head=cfg.out_head, blink=cfg.blink)
    return AvatarDiT(dit)


# DiTConfig options a fine-tuning run (TeacherConfig.init) may switch on, with the tensors each adds (name prefixes):
# they are zero-initialised, so the started net computes what the trained one did until training moves them
GROWABLE = {"blink": ("blink_embed.", "blink_space", "out_head.blink_map")}


def grown_tensors(net: AvatarDiT) -> list[str]:
    """Names of the parameters of ``net`` that its switched-on `GROWABLE` options add."""
    prefixes = tuple(p for option, ps in GROWABLE.items() if getattr(net.cfg, option) for p in ps)
    return [n for n, _ in net.named_parameters() if prefixes and n.startswith(prefixes)]


def check_init_codec(model: str | Path, codec) -> None:
    """A one-line `LipstepError` unless the init model's codec makes the latents ``codec`` makes (the same probe
    image encoded by both; float16-stored weights pass): its denoiser learned those latents."""
    try:
        theirs = load_codec(components_dir(resolve_model(model)) / "codec")
    except LipstepError as e:
        raise LipstepError(f"init={model}: {e}") from None
    size = 8 * codec.downsample
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        a, b = codec.encode(image), theirs.encode(image) if theirs.downsample == codec.downsample else None
    if b is None or a.shape != b.shape or float((a - b).abs().max()) > 0.05:
        raise LipstepError(f"init={model}: its codec ({theirs.name}) does not make this run's latents (--codec, "
                           f"{codec.name}); fine-tune with the codec the model was trained on")


def start_from(net: AvatarDiT, model: str | Path) -> list[str]:
    """Copy a trained model's denoiser weights into ``net``; returns the names of the tensors ``net`` adds (they keep
    their initialisation). A one-line `LipstepError` when the trained denoiser is not the same net."""
    source = load_denoiser(components_dir(resolve_model(model)) / "denoiser")
    mine, theirs = dataclasses.asdict(net.cfg), dataclasses.asdict(source.cfg)
    differ = [k for k in mine if k not in (*GROWABLE, "grad_checkpointing") and mine[k] != theirs.get(k)]
    differ += [k for k in GROWABLE if theirs.get(k) and not mine[k]]
    if differ:
        said = ", ".join(f"{k}={json.dumps(theirs.get(k))} (this run: {json.dumps(mine[k])})" for k in differ[:3])
        raise LipstepError(f"init={model}: its denoiser is not this run's net: {said}. init fine-tunes the same net "
                           f"(preset, codec, training data and options); only {', '.join(GROWABLE)} may be added")
    added, _ = net.load_state_dict(source.state_dict(), strict=False)
    return list(added)


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


class TeacherRecipe:
    """`lipstep train teacher` for `run_recipe`: a codec directory + a `TeacherConfig`."""

    name = "teacher"

    def __init__(self, codec_dir: str | Path, cfg: TeacherConfig | None = None):
        self.codec_dir, self.cfg = codec_dir, cfg or TeacherConfig()
        self.cfg.validate()

    def build(self, prepared: Path, out: Path, *, resume: bool, progress: bool) -> Built:
        cfg = self.cfg
        codec = load_codec(self.codec_dir)
        fresh = not resume or latest_checkpoint(out) is None  # a resumed run restores the net and its head
        if cfg.init and fresh:
            check_init_codec(cfg.init, codec)  # before minutes of latent encoding
        fit_head = cfg.mouth_state and fresh and not cfg.init  # an init model brings its fitted head
        if fit_head:
            check_mouth_labels(prepared)  # before minutes of latent encoding
        blinks = label_blink_rate(prepared, FPS) if cfg.blink else 0.0
        size = check_data_size(codec, prepared)
        codec.cfg.image_size = size
        cache = encode_prepared(prepared, codec, progress=progress)
        audio = build_audio_encoder(cfg.audio)
        if cfg.audio.kind == "mel" and (audio.window, audio.feature_dim) != (16, 80):
            raise LipstepError("train teacher uses the shards' log-mel windows: audio.window must be 16 and n_mels 80")
        dataset = windows = WindowDataset(prepared, "train", cfg.window, latents=cache, pixels=False,
                                          residual=cfg.residual, blink_repeat=cfg.blink_repeat if cfg.blink else 0)
        if cfg.audio.kind == "viseme":
            dataset = _VisemeAudio(dataset, audio)
        norm = audio_stats(prepared) if cfg.audio_norm and cfg.audio.kind == "mel" else (0.0, 1.0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)
            net = build_teacher_net(cfg, codec, audio.feature_dim, audio.window, norm)
        if cfg.init and fresh:
            added = start_from(net, cfg.init)
            print(f"teacher: started from {cfg.init}'s denoiser; new (zero-initialised) tensors: "
                  f"{', '.join(added) or 'none'}", flush=True)
        if fit_head:
            encode = (lambda shard: audio.encode(shard["visemes"], len(shard["visemes"]))) \
                if cfg.audio.kind == "viseme" else None
            fit_mouth_head(net, prepared, out, cfg.mouth_head, encode=encode, progress=progress)
        info = ModelInfo(kind="teacher", recipe="teacher", schedule=cfg.schedule, flow_shift=cfg.flow_shift,
                         sampler=cfg.sampler, frames=cfg.window.frames, motion_frames=cfg.window.motion_frames,
                         image_size=size, residual=cfg.residual, anchor_every=cfg.anchor_every,
                         blinks_per_second=blinks, fps=FPS)
        method = TeacherMethod(net, info.make_schedule(), cfg.loss, residual=cfg.residual > 0,
                               lr_scale=dict.fromkeys(grown_tensors(net), cfg.grown_lr_scale))
        print(f"teacher: AvatarDiT {cfg.preset} ({param_count(net.cfg) / 1e6:.2f} M parameters, "
              f"{net.cfg.tokens_per_frame} tokens/frame, {cfg.attention} attention), schedule {cfg.schedule}, "
              f"{len(dataset)} training windows{windows.blink_note}", flush=True)
        return Built(method=method, dataset=dataset, train=cfg.train, info=info, codec=codec, audio=audio,
                     export_role="denoiser", latents=cache,
                     validation=Validation(cfg.val_clips, cfg.val_steps, cfg.val_seconds),
                     provenance={"data": str(prepared.resolve()), "preset": cfg.preset,
                                 **({"init": str(resolve_model(cfg.init).resolve())} if cfg.init else {})},
                     run_config=cfg)


def train_teacher(prepared: str | Path, codec_dir: str | Path, out: str | Path, cfg: TeacherConfig | None = None,
                  *, resume: bool = False, progress: bool = True) -> Path:
    """Encode latents, train, validate, export ``out/model``; returns the model directory."""
    return run_recipe(TeacherRecipe(codec_dir, cfg), prepared, out, resume=resume, progress=progress)


__all__ = ["GROWABLE", "TeacherConfig", "TeacherLossConfig", "TeacherMethod", "TeacherRecipe", "audio_stats",
           "build_teacher_net", "check_init_codec", "grown_tensors", "label_blink_rate", "resolve_patch", "start_from",
           "train_teacher"]
