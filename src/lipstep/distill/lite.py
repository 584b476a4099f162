"""TempoSyncDiff: a lightweight few-step student with identity anchoring and temporal regularisation.

A *smaller* AvatarDiT (``width_factor`` × the source's width, ``depth_factor`` × its depth, a narrower
output head; checked against ``max_flops_ratio``) learns to do in 1–4 passes what a *source* model does
(algorithms.md §5.3). The default is one transformer block of the source's width, started from the
source's embeddings, last block and output layers (``init="source"``): 0.21 of the source's FLOPs per
evaluation; it reaches in 1 000 steps what a from-scratch student of half the width and three blocks
reaches in 3 000 (experiments/temposyncdiff).

- **source = a few-step student** (``fewstep`` sampler: ``turbo1``, a DMD generator): step distillation
  on the source's own grid (trailing: 1, .75, .5, .25 at K = 4). A grid index k is drawn (k = 0, the
  one-step start from pure noise, with probability ``first_step_share``, the others uniformly); the
  source runs its own first k steps from noise without gradient to x_k (its inference path), and the
  student matches the source's clean estimate there::

      L_match = mean(m·(S(x_k, t_k, c) − T(x_k, t_k, c, w))²),      m = `losses.motion_weights` of the target

  so the student at K steps retraces the source at K steps and, from t = 1, makes its one-step sample.
- **source = a teacher** (multi-step): output matching (a): x_k is the real latent diffused to t_k and the
  target the teacher's multi-condition-guided clean estimate there (FADA Eq. 9). One pass of a
  multi-step teacher at t = 1 is a blurred average, so this trains a smaller net, not fewer steps.
- ``target="data"`` (the "without distillation" ablation): the same network, the same grid, but the
  target is the real latent (x0 regression from scratch, no source at all).

On the *decoded* x0 prediction (the codec in the loop, frozen) two regularisers (§5.3):

- **identity anchoring** for grid times t_k ≤ ``id_t_max``: ``L_id = 1 − mean_frames cos(E(D(x̂0)), E(D(ref)))``
  with E a frozen identity encoder. It must not be the evaluator's (`weights/evaluators/identity`):
  the metric would then grade its own training signal, so ``identity_net`` names a separately trained
  encoder (by default the bundled anchor, `lipstep train identity` with another seed, loss and width;
  experiments/temposyncdiff).
  Every grid step of a distilled student outputs a clean sample, so the default threshold (1.0) keeps
  all of them; the threshold matters for students trained on noisy estimates.
- **temporal regularisation** against the ground truth's motion, so real lip motion is not suppressed:
  ``L_temp = mean|Δŷ − Δy| + λ_mouth·mean|(Δŷ − Δy)·M_mouth|``, Δ the frame-to-frame change of the
  decoded chunk (ŷ the student's, y the codec's reconstruction of the real frames), M_mouth the lower
  ``mouth_rows`` of the frame (the repo's mouth-flicker proxy).

**Viseme conditioning** (``audio="viseme"``): the student reads one-hot windows of the per-frame viseme
labels (``viseme_window`` frames, ±2 for coarticulation; `lipstep.audio.visemes.viseme_windows`) in place of
log-mel, while the source keeps its own audio; training uses the world's labels, and the exported model's
audio front end is the ``viseme-audio`` encoder (speech -> log-mel -> the classifier of ``lipstep train
visemes`` -> labels -> the same windows), so it runs on raw speech.

The student reads no guidance input: the source's default scales are baked in (one conditional pass per
step). Its sampler is ``fewstep`` on the source's grid; ``lipstep export --steps 1`` makes it one-step.
Roles: ``student`` (trained, exported), ``source`` (frozen), ``codec`` and ``anchor`` (frozen, only when
a regulariser is on). `LiteRecipe` builds the run for `lipstep.train.runner.run_recipe`
(``lipstep distill lite``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipstep.audio.encoders import AudioConfig, build_audio_encoder
from lipstep.audio.visemes import N_VISEMES, viseme_windows
from lipstep.config import check
from lipstep.diffusion.cond import Cond
from lipstep.diffusion.denoiser import Denoiser
from lipstep.diffusion.guidance import multi_cfg
from lipstep.diffusion.schedules import SPACINGS, Schedule
from lipstep.distill.adversarial import check_same_layout
from lipstep.distill.losses import batch_cond, blink_weights, motion_weights
from lipstep.distill.method import Built, Method, Role, TrainConfig, Validation
from lipstep.distill.perflow import open_teacher
from lipstep.errors import LipstepError
from lipstep.modeldir import BUNDLED_ROOT, ModelInfo, load_eyes, load_model
from lipstep.nets.dit import AvatarDiT, DiTConfig, forward_flops, param_count
from lipstep.nets.identity import IdentityNet, load_identity
from lipstep.samplers import SamplerInfo
from lipstep.samplers.fewstep import FewStepOptions, sample_fewstep

TARGETS = ("source", "data")
ANCHOR_IDENTITY = BUNDLED_ROOT / "anchors" / "identity"  # the default identity-anchoring encoder


@dataclass
class LiteConfig:
    """`lipstep distill lite`: the student's size, its grid, the targets and the regularisers."""

    width_factor: float = 1.0               # student width = heads·head_dim with heads = round(source heads · factor)
    depth_factor: float = 0.17              # student depth = round(source depth · factor), at least 1 (1 of 6 blocks)
    out_head_factor: float = 0.5            # channels of the convolutional output head (if the source has one)
    max_flops_ratio: float = 0.25           # refuse a student above this share of the source's FLOPs per evaluation
    init: Literal["scratch", "source"] = "source"  # "source" (width_factor 1): start from the source's weights,
    #   its blocks evenly spaced over the depth (the last kept), every other layer whose shape matches
    student_steps: int = 4                  # K: the grid trained on (sampling at fewer steps uses its start)
    spacing: str = "trailing"               # the grid (`Schedule.timesteps`)
    first_step_share: float = 0.5           # P(k = 0): the one-step start from pure noise
    target: Literal["source", "data"] = "source"  # "data": no distillation (the same net on ground truth)
    audio: Literal["mel", "viseme"] = "mel"  # the student's audio condition: the source's log-mel windows, or viseme
    #   tokens (one-hot windows of the per-frame labels; at inference the labels of `viseme_classifier`)
    viseme_classifier: str = ""             # audio="viseme": `lipstep train visemes` directory (the exported model's
    #   audio front end: speech -> labels -> tokens)
    viseme_window: int = 5                  # audio="viseme": frames per token window (±2, coarticulation)
    match_motion_weight: float = 2.0        # `losses.motion_weights` strength on the matching loss (0 = plain MSE)
    match_blink_weight: float = 16.0        # a source that reads blinks: frames weigh 1 + w · their eyelid closure
    #   (`losses.blink_weights`, as the teacher's loss.blink_weight); 0 = off
    blink_repeat: int = 3                   # a student that reads blinks: windows holding a blink appear 1 + k
    #   times per epoch (`WindowDataset`, as the teacher's blink_repeat); 0 = as the clips have them
    id_weight: float = 0.1                  # λ_id
    id_t_max: float = 1.0                   # identity anchoring at grid times t_k <= id_t_max
    identity_net: str = ""                  # a frozen identity encoder directory, not the evaluator's ("" = the
    #   bundled anchor encoder, lipstep/weights/anchors/identity: `lipstep train identity` with another seed, loss
    #   and width than the evaluator's)
    temp_weight: float = 0.1                # λ_temp
    temp_mouth_weight: float = 0.5          # λ_mouth inside L_temp
    mouth_rows: float = 0.45                # the lower share of the frame that M_mouth covers
    cfg_audio: float | None = None          # the guidance baked in (None = the source's default scales)
    cfg_ref: float | None = None
    p_motion_ref: float = 0.5               # first-chunk training (motion = reference), as the teacher
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=3000, batch_size=4, lr=4e-4, betas=(0.9, 0.99), warmup_steps=100, grad_clip=1.0, ema_decay=0.995,
        checkpoint_every=200, validate_every=0, log_every=20))
    val_clips: int = 2
    val_seconds: float = 2.0

    def validate(self) -> None:
        check(0 < self.width_factor <= 1 and 0 < self.depth_factor <= 1 and 0 < self.out_head_factor <= 1,
              "width_factor, depth_factor and out_head_factor must be in (0, 1]")
        check(0 < self.max_flops_ratio <= 1, f"max_flops_ratio must be in (0, 1], got {self.max_flops_ratio}")
        check(self.student_steps >= 1, f"student_steps must be >= 1, got {self.student_steps}")
        check(self.spacing in SPACINGS, f"spacing must be one of {SPACINGS}, got {self.spacing!r}")
        check(0 <= self.first_step_share <= 1, "first_step_share must be in [0, 1]")
        check(self.target in TARGETS, f"target must be one of {TARGETS}, got {self.target!r}")
        check(self.init in ("scratch", "source"), f"init must be 'scratch' or 'source', got {self.init!r}")
        check(self.audio in ("mel", "viseme"), f"audio must be 'mel' or 'viseme', got {self.audio!r}")
        check(self.audio == "mel" or bool(self.viseme_classifier),
              "audio=viseme needs viseme_classifier=DIR (lipstep train visemes): the student's raw-audio front end")
        check(self.viseme_window >= 1, f"viseme_window must be >= 1, got {self.viseme_window}")
        check(self.init == "scratch" or self.width_factor == 1,
              "init=source copies the source's layers: it needs width_factor=1 (shrink the depth instead)")
        check(self.blink_repeat >= 0, f"blink_repeat must be >= 0, got {self.blink_repeat}")
        check(min(self.match_motion_weight, self.match_blink_weight, self.id_weight, self.temp_weight,
                  self.temp_mouth_weight) >= 0,
              "match_motion_weight, match_blink_weight, id_weight, temp_weight and temp_mouth_weight must be >= 0")
        check(0 <= self.id_t_max <= 1, f"id_t_max must be in [0, 1], got {self.id_t_max}")
        check(0 < self.mouth_rows <= 1, f"mouth_rows must be in (0, 1], got {self.mouth_rows}")
        check(0 <= self.p_motion_ref <= 1, "p_motion_ref must be in [0, 1]")
        check(self.val_clips >= 0 and self.val_seconds > 0, "val_clips >= 0 and val_seconds > 0 required")


# ---------------------------------------------------------------------------------------------
# the student network


def lite_dit(source: DiTConfig, cfg: LiteConfig) -> DiTConfig:
    """The student's architecture: the source's layout (latents, patch, audio, conditioning) at a smaller width,
    depth and output head, with the same head width and no guidance input."""
    heads = max(1, round(source.heads * cfg.width_factor))
    out_head = max(8, round(source.out_head * cfg.out_head_factor)) if source.out_head else 0
    lite = dataclasses.replace(source, width=heads * (source.width // source.heads), heads=heads,
                               depth=max(1, round(source.depth * cfg.depth_factor)), out_head=out_head,
                               cfg_layer="none", grad_checkpointing=False, dropout=0.0)
    if cfg.audio == "viseme":  # one-hot viseme windows in place of log-mel; the mouth-state head reads log-mel
        lite = dataclasses.replace(lite, audio_dim=N_VISEMES, audio_window=cfg.viseme_window, audio_mean=0.0,
                                   audio_std=1.0, mouth_state=0)
    lite.validate()
    return lite


def build_lite(source: AvatarDiT, cfg: LiteConfig, seed: int) -> AvatarDiT:
    """A new (randomly initialised) lightweight student; the source's fitted audio -> mouth-state head is copied
    and stays frozen, as in every student."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = AvatarDiT(lite_dit(source.cfg, cfg))
    if cfg.init == "source":
        copy_source_layers(student, source)
    if student.mouth_head is not None and source.mouth_head is not None:
        student.mouth_head.load_state_dict(source.mouth_head.state_dict())
        student.mouth_head.requires_grad_(False)
    return student.train()


def kept_blocks(source_depth: int, depth: int) -> list[int]:
    """The source blocks a ``depth``-block student starts from: evenly spaced, the last one always kept."""
    if depth >= source_depth:
        return list(range(source_depth))
    if depth == 1:
        return [source_depth - 1]
    return [round(i * (source_depth - 1) / (depth - 1)) for i in range(depth)]


def copy_source_layers(student: AvatarDiT, source: AvatarDiT) -> int:
    """Copy into ``student`` every source tensor of the same name and shape, block i from source block
    ``kept_blocks(...)[i]``; returns how many tensors were copied."""
    src = source.state_dict()
    blocks = kept_blocks(source.cfg.depth, student.cfg.depth)
    own = student.state_dict()
    copied = {}
    for name, value in own.items():
        key = name
        if name.startswith("blocks."):
            i, rest = name.split(".", 2)[1:]
            key = f"blocks.{blocks[int(i)]}.{rest}"
        if key in src and src[key].shape == value.shape:
            copied[name] = src[key].to(value.dtype)
    student.load_state_dict(copied, strict=False)
    return len(copied)


def flops_ratio(student: AvatarDiT, source: AvatarDiT) -> tuple[float, float]:
    """(student GFLOPs, source GFLOPs) of one network evaluation on one chunk of the source's layout."""
    c = source.cfg
    lat = (1, c.latent_channels, c.latent_size, c.latent_size)
    cond = Cond(reference=torch.zeros(lat), audio=torch.zeros(1, c.frames, c.audio_window, c.audio_dim),
                motion=torch.zeros(1, c.motion_frames, *lat[1:]) if c.motion_frames else None,
                blink=torch.zeros(1, c.frames) if c.blink else None)
    x, t = torch.zeros(1, c.frames, *lat[1:]), torch.ones(1)
    s = student.cfg
    own = dataclasses.replace(cond, audio=torch.zeros(1, c.frames, s.audio_window, s.audio_dim))
    src_cond = dataclasses.replace(cond, cfg_scales=torch.ones(1, 2)) if c.cfg_layer != "none" else cond
    return forward_flops(student.cpu(), x, t, own) / 1e9, forward_flops(source.cpu(), x, t, src_cond) / 1e9


# ---------------------------------------------------------------------------------------------
# the regularisers (each a small callable on decoded frames [B, T, 3, H, W] in [-1, 1])


def temporal_loss(pred: Tensor, real: Tensor, mouth_rows: float = 0.45, mouth_weight: float = 0.5) -> Tensor:
    """Per-sample [B]: mean|Δpred − Δreal| + mouth_weight·(the same over the lower ``mouth_rows`` of the frame),
    Δ the change between consecutive frames. Zero when the prediction moves exactly as the ground truth."""
    if pred.shape[1] < 2:
        return pred.new_zeros(pred.shape[0])
    diff = (pred[:, 1:] - pred[:, :-1]) - (real[:, 1:] - real[:, :-1])
    rows = max(1, round(pred.shape[-2] * mouth_rows))
    return diff.abs().flatten(1).mean(1) + mouth_weight * diff[..., -rows:, :].abs().flatten(1).mean(1)


def identity_loss(anchor: IdentityNet, pred: Tensor, reference: Tensor) -> Tensor:
    """Per-sample [B]: 1 − mean over frames of the cosine between the identity embeddings of the frames
    [B, T, 3, H, W] and of the reference [B, 3, H, W] (frames in [-1, 1], resized to the encoder's size)."""
    b, t = pred.shape[:2]
    size = anchor.cfg.image_size

    def fit(x: Tensor) -> Tensor:
        if x.shape[-1] == size and x.shape[-2] == size:
            return x.float()
        return F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)

    e = anchor(torch.cat([fit(pred.flatten(0, 1)), fit(reference)]))
    cos = (e[: b * t].unflatten(0, (b, t)) * e[b * t:, None]).sum(-1)  # [B, T]
    return 1.0 - cos.mean(1)


def decode_chunk(codec: nn.Module, x: Tensor, reference: Tensor, residual: float) -> Tensor:
    """Model-space latents [B, T, C, h, w] (offsets from the reference × ``residual`` when > 0) -> frames
    [B, T, 3, H, W] in [-1, 1], differentiable."""
    z = x / residual + reference[:, None] if residual > 0 else x
    return codec.decode(z.flatten(0, 1).float()).unflatten(0, x.shape[:2])


# ---------------------------------------------------------------------------------------------
# the method


def draw_index(seed: int, step: int, steps: int, first_share: float) -> int:
    """The grid index k of ``step`` (equal on every process): 0 with probability ``first_share``, else uniform."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + 29) % (2**63))
    u = float(torch.rand((), generator=gen))
    if steps == 1 or u < first_share:
        return 0
    return 1 + int((u - first_share) / (1 - first_share) * (steps - 1)) % (steps - 1)


class LiteMethod(Method):
    """The TempoSyncDiff objective (module docstring)."""

    def __init__(self, student: AvatarDiT, source: AvatarDiT | None, source_info: ModelInfo | None,
                 schedule: Schedule, cfg: LiteConfig, *, codec: nn.Module | None = None,
                 anchor: IdentityNet | None = None, residual: float = 0.0, scales: tuple[float, float] = (1.0, 1.0)):
        cfg.validate()
        if cfg.target == "source" and (source is None or source_info is None):
            raise LipstepError("target=source needs a source model")
        if (cfg.temp_weight > 0 or cfg.id_weight > 0) and codec is None:
            raise LipstepError("the identity and temporal regularisers decode frames: they need the codec")
        if cfg.id_weight > 0 and anchor is None:
            raise LipstepError("id_weight > 0 needs an identity encoder (identity_net)")
        self.student, self.source, self.source_info = student, source, source_info
        self.codec, self.anchor = codec, anchor
        self.schedule, self.cfg, self.residual, self.scales = schedule, cfg, float(residual), scales
        self.grid = FewStepOptions(cfg.spacing).timesteps(schedule, cfg.student_steps)  # [K + 1], t_K = 0
        self.fewstep_source = source_info is not None and source_info.sampler.name == "fewstep"
        self.bind({name: role.module for name, role in self.roles().items()})

    def roles(self) -> dict[str, Role]:
        roles = {"student": Role(self.student)}
        if self.cfg.target == "source":
            roles["source"] = Role(self.source, trainable=False)
        if self.codec is not None and (self.cfg.temp_weight > 0 or self.cfg.id_weight > 0):
            roles["codec"] = Role(self.codec, trainable=False)
        if self.anchor is not None and self.cfg.id_weight > 0:
            roles["anchor"] = Role(self.anchor, trainable=False)
        return roles

    def bind(self, modules) -> None:
        super().bind(modules)
        for name in ("source", "codec", "anchor"):
            if name in self.modules:
                self.modules[name].eval().requires_grad_(False)
        self.student_fn = Denoiser(self.modules["student"], self.schedule)
        self.source_fn = Denoiser(self.modules["source"], self.schedule) if "source" in self.modules else None

    def source_pred(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """The source's native prediction at its default guidance: through its CFG input (embedded), one plain
        pass (scales 1), or FADA Eq. 9's three condition patterns."""
        a, r = self.scales
        guidance = self.source_info.sampler.guidance
        if guidance == "embedded":
            c = dataclasses.replace(cond, cfg_scales=torch.tensor([a, r], device=x_t.device).expand(len(x_t), 2))
            return self.source_fn(x_t, t, c)
        if a == 1.0 and r == 1.0:
            return self.source_fn(x_t, t, cond)
        n = len(x_t)
        return multi_cfg(self.source_fn, torch.full((n,), a, device=x_t.device),
                         torch.full((n,), r, device=x_t.device))(x_t, t, cond)

    @torch.no_grad()
    def state_and_target(self, x0: Tensor, cond: Cond, k: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(x_k, the clean latent the student must predict from it)."""
        noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
        t = self.grid[k].to(x0.device).expand(x0.shape[0])
        if self.cfg.target == "data" or not self.fewstep_source:
            x_k = self.schedule.add_noise(x0, noise, t).float()
        elif k == 0:
            x_k = noise
        else:  # the source's own first k steps: its inference path
            x_k = sample_fewstep(self.source_pred, noise, self.grid[: k + 1], cond, schedule=self.schedule,
                                 generator=generator).float()
        target = x0 if self.cfg.target == "data" else self.schedule.to_x0(self.source_pred(x_k, t, cond), x_k, t)
        return x_k, target.float()

    def student_cond(self, cond: Cond, batch: dict) -> Cond:
        """The student's Cond: the source's, with viseme tokens as the audio for a viseme student."""
        if self.cfg.audio == "mel":
            return cond
        if "visemes" not in batch:
            raise LipstepError("audio=viseme trains on per-frame viseme labels, but the batches have none (prepare "
                               "the data from the synthetic world, whose shards carry them)")
        return dataclasses.replace(cond, audio=viseme_windows(batch["visemes"], self.cfg.viseme_window, N_VISEMES))

    def loss(self, role: str, batch: dict, step: int, generator: torch.Generator):
        cfg = self.cfg
        x0 = batch["latents"].float()
        cond = batch_cond(batch, generator, cfg.p_motion_ref, residual=self.residual > 0)
        k = draw_index(cfg.train.seed, step, cfg.student_steps, cfg.first_step_share)
        x_k, target = self.state_and_target(x0, cond, k, generator)
        t = self.grid[k].to(x0.device).expand(x0.shape[0])
        pred = self.student_fn.x0(x_k, t, self.student_cond(cond, batch)).float()
        err = (pred - target).square() * motion_weights(target, cfg.match_motion_weight)
        if self.student.cfg.blink:
            err = err * blink_weights(batch, cfg.match_blink_weight)
        match = err.flatten(1).mean(1)
        loss = match.mean()
        logs = {"l_match": float(match.detach().mean()), "k": float(k)}
        if "codec" in self.modules:
            ref = batch["reference_latent"].float()
            frames = decode_chunk(self.modules["codec"], pred, ref, self.residual)
            with torch.no_grad():
                real = decode_chunk(self.modules["codec"], x0, ref, self.residual)
            if cfg.temp_weight > 0:
                l_temp = temporal_loss(frames, real, cfg.mouth_rows, cfg.temp_mouth_weight)
                loss = loss + cfg.temp_weight * l_temp.mean()
                logs["l_temp"] = float(l_temp.detach().mean())
            if cfg.id_weight > 0 and float(self.grid[k]) <= cfg.id_t_max:
                with torch.no_grad():
                    ref_frame = self.modules["codec"].decode(ref)
                l_id = identity_loss(self.modules["anchor"], frames, ref_frame)
                loss = loss + cfg.id_weight * l_id.mean()
                logs["l_id"] = float(l_id.detach().mean())
        return loss, logs


# ---------------------------------------------------------------------------------------------
# running it


def lite_info(base: ModelInfo, cfg: LiteConfig) -> ModelInfo:
    """The student's ModelInfo: the source's layout and schedule, the ``fewstep`` sampler on its grid, one plain
    conditional pass per step (the guidance is baked in)."""
    sampler = SamplerInfo(name="fewstep", steps=cfg.student_steps, cfg_audio=1.0, cfg_ref=1.0, guidance="cfg",
                          options={"spacing": cfg.spacing})
    return dataclasses.replace(base, kind="student", recipe="lite", sampler=sampler, trained={})


def source_scales(info: ModelInfo, cfg: LiteConfig) -> tuple[float, float]:
    s = info.sampler
    return (s.cfg_audio if cfg.cfg_audio is None else cfg.cfg_audio, s.cfg_ref if cfg.cfg_ref is None else cfg.cfg_ref)


class LiteRecipe:
    """`lipstep distill lite`: a source model (a few-step student or a teacher), the teacher whose data encoding
    and layout it shares, and a `LiteConfig`."""

    name = "lite"

    def __init__(self, source: str | Path, teacher: str | Path, cfg: LiteConfig | None = None):
        self.source, self.teacher, self.cfg = source, teacher, cfg or LiteConfig()
        self.cfg.validate()

    def build(self, prepared: Path, out: Path, *, resume: bool, progress: bool):
        cfg = self.cfg
        device = "cuda" if torch.cuda.is_available() else "cpu"
        root, info, _, _, source = load_model(self.source, device=device)  # first: fails fast, before encoding
        if info.kind == "student" and info.sampler.name != "fewstep":
            raise LipstepError(f"{root}: a {info.sampler.name} student; the lite student distills a few-step "
                               "(fewstep) student or a teacher")
        source = source.float().cpu().eval().requires_grad_(False)
        student = build_lite(source, cfg, cfg.train.seed)
        g_student, g_source = flops_ratio(student, source)
        ratio = g_student / g_source
        if ratio > cfg.max_flops_ratio:
            raise LipstepError(f"the lite student needs {ratio:.2f} of the source's FLOPs per evaluation (max_flops_ratio "
                               f"{cfg.max_flops_ratio}); lower width_factor / depth_factor")
        viseme_audio = None  # the viseme student's raw-audio front end (loaded first: a bad directory fails fast)
        if cfg.audio == "viseme":
            viseme_audio = build_audio_encoder(AudioConfig(kind="viseme-audio", classifier=cfg.viseme_classifier,
                                                           window=cfg.viseme_window))
        anchor_dir = Path(cfg.identity_net) if cfg.identity_net else ANCHOR_IDENTITY
        anchor = load_identity(anchor_dir) if cfg.id_weight > 0 else None
        src = open_teacher(self.teacher, prepared, "distill lite", progress=progress,
                           blink_repeat=cfg.blink_repeat if student.cfg.blink else 0)
        check_same_layout(root, info, src.root, src.info)
        scales = source_scales(info, cfg)
        codec = src.codec if cfg.temp_weight > 0 or cfg.id_weight > 0 else None
        method = LiteMethod(student, source if cfg.target == "source" else None, info, info.make_schedule(), cfg,
                            codec=codec, anchor=anchor, residual=info.residual, scales=scales)
        mode = ("data (no distillation)" if cfg.target == "data" else
                "step distillation on its grid" if method.fewstep_source else "output matching")
        print(f"lite: student AvatarDiT {student.cfg.width}x{student.cfg.depth} ({param_count(student.cfg) / 1e6:.2f} M "
              f"parameters, {g_student:.2f} GFLOPs per evaluation = {ratio:.2f} of the source's {g_source:.2f}) "
              f"from {root} ({info.kind}, {info.sampler.name}), {mode}, {cfg.student_steps}-step grid, {cfg.audio} "
              f"audio; identity "
              f"{cfg.id_weight} ({anchor_dir if anchor is not None else 'off'}), temporal {cfg.temp_weight}; "
              f"{len(src.dataset)} training windows{src.dataset.blink_note}", flush=True)
        provenance = {"source": str(root), "teacher": str(src.root), "data": str(prepared.resolve()),
                      "target": cfg.target, "student_steps": cfg.student_steps, "width": student.cfg.width,
                      "depth": student.cfg.depth, "gflops": round(g_student, 3), "source_gflops": round(g_source, 3),
                      "id_weight": cfg.id_weight, "identity_net": str(anchor_dir) if anchor is not None else "", "audio": cfg.audio,
                      "temp_weight": cfg.temp_weight,
                      "scales": list(scales)}
        audio = src.audio if viseme_audio is None else viseme_audio
        return Built(method=method, dataset=src.dataset, train=cfg.train, info=lite_info(info, cfg),
                     codec=src.codec, audio=audio, export_role="student", latents=src.latents,
                     validation=Validation(cfg.val_clips, cfg.student_steps, cfg.val_seconds),
                     provenance=provenance, record="distill.json", run_config=cfg,
                     eyes=load_eyes(root, info, src.codec, source.cfg))


__all__ = [
    "ANCHOR_IDENTITY",
    "TARGETS",
    "LiteConfig",
    "LiteMethod",
    "LiteRecipe",
    "build_lite",
    "copy_source_layers",
    "decode_chunk",
    "draw_index",
    "flops_ratio",
    "identity_loss",
    "kept_blocks",
    "lite_dit",
    "lite_info",
    "source_scales",
    "temporal_loss",
]
