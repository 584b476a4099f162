"""TurboTalk stage 2: progressive adversarial distillation (4 → 2 → 1) with a self-compare reference.

One run is one *round*: a few-step student S (a DMD generator, or the previous round's student) is
copied into a new student S' that runs half as many steps (``target_steps``) on the same nested grid
(trailing: 1, .75, .5, .25 → 1, .5 → 1; `lipstep.samplers.fewstep`). Every step of S' must land where
two steps of the finer grid land. A discriminator of light heads on the frozen teacher's token features
(`lipstep.nets.discriminator`) plays the game (algorithms.md §2.6, §2.7, §3.4)::

    jump (s → e) on S''s grid;  x_s: the current student's own state at s (its inference path)
    fake:  x̂0 = S'(x_s, s)                                  one pass, with gradient
    real:  x0_ref = the *reference*'s rollout s → mid → e    (the x0 of its last step), no gradient
    D input: an x0 re-noised to t̂ ~ logit-normal(m, s) (the same t̂ and noise for fake and real),
             through the frozen teacher's blocks; the conditional form also sees x_s at s
    L_D = hinge: relu(1 − D(real)) + relu(1 + D(fake))     non-saturating: softplus(−D(real)) + softplus(D(fake))
    L_S = λ_adv·(−D(fake) | softplus(−D(fake))) + λ_dist·mean((x̂0 − x0_ref)²)

**Self-compare reference** (TurboTalk's "intermediate adversarial reference", our reading, §3.4):
the real side is the student family one level up, a small gap the game can close —

- ``prev_student``: the frozen starting student S on its own (2×) grid: a fixed target;
- ``self_more_steps``: the current student S' itself on the finer grid, detached (ASD-style: the
  reference moves with training);
- ``teacher`` (ablation): the frozen teacher, multi-condition-guided DDIM with ``teacher_steps`` steps
  from s to e, and its x0 estimate there;
- ``data`` (ablation): real latents; x_s is then the real latent diffused to s.

**Progressive timestep sampling** (``curriculum``). ``jumps`` (default): each step trains one jump, drawn
(the same on every process) from the *old* grid's jumps (which S already makes) with probability
1 − p and from the new grid's with probability p, p rising linearly from 0 to 1 over the first
``ramp`` of the round; in the last round (one step) the new grid's only jump starts at pure noise.
``d_noise`` (the other reading): only the new grid's jumps, and the discriminator's re-noise level is
annealed instead: the logit-normal mean moves from ``d_t_mean_start`` to ``d_t_mean`` over the ramp
(coarse structure first, then detail). ``none``: new-grid jumps, fixed t̂ distribution. The schedule's
state (p, the mean, the jump) is logged every step.

**Own chained chunks** (``chain`` > 1, beyond the paper): each training sample is ``chain`` consecutive
chunks of a clip. The current student (no gradient) generates the first ``chain − 1`` chunks on its own
grid, each chunk's motion context the previous chunk's last latents (the first one's the ground truth's
or the reference's), and the jump is trained on the last chunk, whose motion context is then the student's
own output, as at inference with chained chunks (Self-Forcing / CausVid train on their own rollouts for
the same reason). A model re-anchored at every chunk (``anchor_every = 1``) never sees its own output as
context, so ``chain`` only matters for chained layouts.

Roles: ``discriminator`` (the heads; ``d_updates`` steps per cycle, first), ``student`` (exported),
``feature_net`` (the frozen teacher: features, and the teacher reference) and, for ``prev_student``,
``reference`` (the frozen starting student). `AdversarialRecipe` builds a round for
`lipstep.train.runner.run_recipe` (``lipstep distill adversarial``).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lipstep.config import check
from lipstep.data.dataset import WindowConfig, WindowDataset
from lipstep.diffusion.cond import Cond
from lipstep.diffusion.denoiser import Denoiser
from lipstep.diffusion.guidance import multi_cfg
from lipstep.diffusion.schedules import SPACINGS, Schedule
from lipstep.distill.losses import batch_cond
from lipstep.distill.method import Built, Method, Role, TrainConfig, Validation
from lipstep.distill.perflow import check_scale_ranges, open_teacher
from lipstep.errors import LipstepError
from lipstep.modeldir import ModelInfo, load_eyes, load_model
from lipstep.nets.discriminator import DiscriminatorConfig, FeatureDiscriminator
from lipstep.nets.dit import param_count
from lipstep.samplers.ddim import sample_ddim
from lipstep.samplers.fewstep import FewStepOptions, sample_fewstep

REFERENCES = ("prev_student", "self_more_steps", "teacher", "data")
CURRICULA = ("jumps", "d_noise", "none")


@dataclass
class AdversarialConfig:
    """`lipstep distill adversarial`: one round (steps → target_steps), its game, reference and curriculum."""

    target_steps: int = 0                   # the new student's steps (0 = half the starting student's)
    reference: Literal["prev_student", "self_more_steps", "teacher", "data"] = "prev_student"
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    loss: Literal["hinge", "nonsaturating"] = "hinge"
    d_updates: int = 1                      # discriminator steps per student step
    d_lr: float | None = None               # the heads' lr (None = train.lr)
    d_t_mean: float = 1.0                   # t̂ ~ logit-normal(mean, std) of the discriminator's re-noising (LADD)
    d_t_std: float = 1.0
    curriculum: Literal["jumps", "d_noise", "none"] = "jumps"
    ramp: float = 0.3                       # fraction of the round over which the curriculum moves
    d_t_mean_start: float = 2.0             # curriculum d_noise: the logit-normal mean at the start
    adv_weight: float = 1.0                 # λ_adv
    distill_weight: float = 0.0             # λ_dist: x0 MSE to the reference's end point (0 = purely adversarial)
    teacher_steps: int = 4                  # reference "teacher": DDIM steps per jump
    chain: int = 1                          # consecutive chunks per sample (> 1: train on its own chained chunks)
    cfg_audio_range: tuple[float, float] = (1.0, 5.0)   # per-sample scales, for a student with a guidance input
    cfg_ref_range: tuple[float, float] = (1.0, 3.0)
    p_motion_ref: float = 0.5               # first-chunk training (motion = reference), as the teacher
    blink_repeat: int = 3                   # a teacher that reads blinks: windows holding a blink appear 1 + k
    #   times per epoch (`WindowDataset`, as the teacher's blink_repeat); 0 = as the clips have them
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=400, batch_size=4, lr=1e-5, betas=(0.0, 0.99), warmup_steps=0, grad_clip=1.0, ema_decay=0.99,
        checkpoint_every=50, validate_every=0, log_every=10))
    val_clips: int = 2
    val_seconds: float = 2.0

    def validate(self) -> None:
        check(self.target_steps >= 0, f"target_steps must be >= 0 (0 = half), got {self.target_steps}")
        check(self.reference in REFERENCES, f"reference must be one of {REFERENCES}, got {self.reference!r}")
        check(self.loss in ("hinge", "nonsaturating"), f"loss must be hinge or nonsaturating, got {self.loss!r}")
        check(self.curriculum in CURRICULA, f"curriculum must be one of {CURRICULA}, got {self.curriculum!r}")
        check(self.d_updates >= 1, "d_updates must be >= 1")
        check(self.d_lr is None or self.d_lr > 0, "d_lr must be > 0 (or None)")
        check(self.d_t_std > 0, "d_t_std must be > 0")
        check(0 < self.ramp <= 1, f"ramp must be in (0, 1], got {self.ramp}")
        check(self.adv_weight >= 0 and self.distill_weight >= 0 and self.adv_weight + self.distill_weight > 0,
              "adv_weight and distill_weight must be >= 0, and not both 0")
        check(self.teacher_steps >= 1, "teacher_steps must be >= 1")
        check(self.chain >= 1, f"chain must be >= 1, got {self.chain}")
        check(0 <= self.p_motion_ref <= 1, "p_motion_ref must be in [0, 1]")
        check(self.blink_repeat >= 0, f"blink_repeat must be >= 0, got {self.blink_repeat}")
        check(self.val_clips >= 0 and self.val_seconds > 0, "val_clips >= 0 and val_seconds > 0 required")
        check_scale_ranges(self)
        self.discriminator.validate()


# ---------------------------------------------------------------------------------------------
# the pieces


def round_grids(schedule: Schedule, spacing: str, steps: int, target: int) -> tuple[Tensor, Tensor, list[int]]:
    """(old grid [steps + 1], new grid [target + 1], the new grid's indices into the old one); an error
    when the new grid's times are not all on the old grid (the round could not compare like with like)."""
    check(spacing in SPACINGS, f"spacing must be one of {SPACINGS}, got {spacing!r}")
    check(1 <= target < steps, f"a round goes to fewer steps: {steps} -> {target}")
    opts = FewStepOptions(spacing)
    old, new = opts.timesteps(schedule, steps).double(), opts.timesteps(schedule, target).double()
    where = []
    for t in new.tolist():
        hits = (old - t).abs() < 1e-6
        if not hits.any():
            raise LipstepError(f"the {target}-step grid {new.tolist()} is not a subset of the {steps}-step grid "
                               f"{old.tolist()} ({spacing} spacing): use a step count that divides {steps}")
        where.append(int(hits.nonzero()[0]))
    return old.float(), new.float(), where


def new_grid_share(curriculum: str, step: int, steps: int, ramp: float) -> float:
    """Probability of a new-grid jump at ``step`` (`jumps` curriculum: 0 → 1 over the first ``ramp``)."""
    if curriculum != "jumps":
        return 1.0
    return min(1.0, step / max(1.0, ramp * steps))


def d_noise_mean(cfg: AdversarialConfig, step: int, steps: int) -> float:
    """The logit-normal mean of t̂ at ``step`` (annealed under the ``d_noise`` curriculum)."""
    if cfg.curriculum != "d_noise":
        return cfg.d_t_mean
    u = min(1.0, step / max(1.0, cfg.ramp * steps))
    return cfg.d_t_mean_start + (cfg.d_t_mean - cfg.d_t_mean_start) * u


def draw_jump(seed: int, step: int, share: float, old_jumps: int, new: list[int]) -> tuple[int, int, bool]:
    """(start, end) indices into the old grid of the jump trained at ``step``, and whether it is a new-grid
    jump; one draw per step from (seed, step), the same on every process."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + 29) % (2**63))
    u, v = torch.rand(2, generator=gen).tolist()
    if u < share:
        i = min(int(v * (len(new) - 1)), len(new) - 2)
        return new[i], new[i + 1], True
    j = min(int(v * old_jumps), old_jumps - 1)
    return j, j + 1, False


def logit_normal(n: int, mean: float, std: float, generator: torch.Generator, device) -> Tensor:
    """t̂ [n] = sigmoid(mean + std·z), clamped to [0.001, 0.999] (LADD's discriminator noise levels)."""
    z = torch.randn(n, generator=generator, device=generator.device).to(device)
    return torch.sigmoid(mean + std * z).clamp(0.001, 0.999)


def d_losses(kind: str, real: Tensor, fake: Tensor) -> Tensor:
    """The discriminator's loss per sample [B] from its logits on real and fake."""
    if kind == "hinge":
        return F.relu(1 - real) + F.relu(1 + fake)
    return F.softplus(-real) + F.softplus(fake)


def g_losses(kind: str, fake: Tensor) -> Tensor:
    """The student's adversarial loss per sample [B] from the discriminator's logits on its samples."""
    return -fake if kind == "hinge" else F.softplus(-fake)


def _randn(shape, generator: torch.Generator, device) -> Tensor:
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def _last_x0(fn, x: Tensor, times: Tensor, cond: Cond, schedule: Schedule, generator: torch.Generator) -> Tensor:
    """Run a re-noising few-step rollout from ``x`` at times[0] over ``times`` and return the x0 of its last
    step (the clean sample it would re-noise to times[-1])."""
    b = x.shape[0]
    for i in range(len(times) - 1):
        t = times[i].to(x.device).expand(b)
        x0 = schedule.to_x0(fn(x, t, cond), x, t)
        if i == len(times) - 2:
            return x0
        x = schedule.renoise(x0, times[i + 1].to(x.device).expand(b), _randn(x.shape, generator, x.device)).float()
    raise ValueError("a rollout needs at least two times")


class AdversarialMethod(Method):
    """One round of progressive adversarial distillation (module docstring)."""

    def __init__(self, student, start, teacher, discriminator: FeatureDiscriminator, schedule: Schedule,
                 cfg: AdversarialConfig, *, steps: int, spacing: str = "trailing", residual: bool = False,
                 motion_frames: int = 0):
        cfg.validate()
        self.cfg, self.schedule, self.spacing, self.residual = cfg, schedule, spacing, residual
        self.steps = steps                                   # the starting student's steps
        self.target = cfg.target_steps or max(1, steps // 2)
        self.old, self.new, self.new_idx = round_grids(schedule, spacing, steps, self.target)
        self.motion_frames = motion_frames
        self.student, self.start, self.teacher, self.disc = student, start, teacher, discriminator
        self.reads_scales = student.cfg.cfg_layer != "none"
        self.bind(self._modules())

    def _modules(self) -> dict:
        mods = {"discriminator": self.disc, "student": self.student, "feature_net": self.teacher}
        if self.cfg.reference == "prev_student":
            mods["reference"] = self.start
        return mods

    def roles(self) -> dict[str, Role]:
        roles = {"discriminator": Role(self.disc, lr=self.cfg.d_lr, updates=self.cfg.d_updates, ema=False),
                 "student": Role(self.student),
                 "feature_net": Role(self.teacher, trainable=False)}
        if self.cfg.reference == "prev_student":
            roles["reference"] = Role(self.start, trainable=False)
        return roles

    def bind(self, modules) -> None:
        super().bind(modules)
        self.student_fn = Denoiser(self.modules["student"], self.schedule)
        self.teacher_fn = Denoiser(self.modules["feature_net"].eval().requires_grad_(False), self.schedule)
        ref = self.modules.get("reference")
        self.reference_fn = Denoiser(ref.eval().requires_grad_(False), self.schedule) if ref is not None else None

    # --- conditions ---------------------------------------------------------------------------------

    def scales(self, n: int, generator: torch.Generator, device) -> Tensor:
        """Guidance scales [n, 2] = (cfg_a, cfg_r) per sample, drawn from the configured ranges."""
        u = torch.rand(n, 2, generator=generator, device=generator.device).to(device)
        lo = torch.tensor([self.cfg.cfg_audio_range[0], self.cfg.cfg_ref_range[0]], device=device)
        hi = torch.tensor([self.cfg.cfg_audio_range[1], self.cfg.cfg_ref_range[1]], device=device)
        return lo + (hi - lo) * u

    def _scaled(self, cond: Cond, scales: Tensor) -> Cond:
        return dataclasses.replace(cond, cfg_scales=scales if self.reads_scales else None)

    def chained(self, batch: dict, generator: torch.Generator) -> tuple[Tensor, Cond, Tensor]:
        """(latents of the trained chunk [B, T, ...], its Cond without scales, scales [B, 2]). With ``chain`` > 1
        the student's own earlier chunks (no gradient) become the last chunk's motion context."""
        cond = batch_cond(batch, generator, self.cfg.p_motion_ref, residual=self.residual)
        scales = self.scales(cond.batch_size, generator, cond.reference.device)
        x0 = batch["latents"].float()
        k = self.cfg.chain
        if k == 1:
            return x0, cond, scales
        t = x0.shape[1] // k
        visemes = cond.visemes
        with torch.no_grad():
            for c in range(k - 1):
                part = dataclasses.replace(cond, audio=cond.audio[:, c * t:(c + 1) * t],
                                           visemes=None if visemes is None else visemes[:, c * t:(c + 1) * t])
                noise = _randn(x0[:, :t].shape, generator, x0.device)
                z = sample_fewstep(self.student_fn, noise, self.new, self._scaled(part, scales),
                                   schedule=self.schedule, generator=generator)
                if self.motion_frames:
                    cond = dataclasses.replace(cond, motion=z[:, -self.motion_frames:].float())
        last = slice((k - 1) * t, k * t)
        cond = dataclasses.replace(cond, audio=cond.audio[:, last],
                                   visemes=None if visemes is None else visemes[:, last])
        return x0[:, last], cond, scales

    # --- the two sides of the game ----------------------------------------------------------------

    def start_state(self, x0: Tensor, cond: Cond, scales: Tensor, s: int, is_new: bool,
                    generator: torch.Generator) -> Tensor:
        """x_s at old-grid index ``s``, without gradient: pure noise at t = 1; the real latents diffused to it
        (reference ``data``); else the current student's own rollout to it on the grid the jump belongs to."""
        noise = _randn(x0.shape, generator, x0.device)
        if s == 0:
            return noise
        if self.cfg.reference == "data":
            return self.schedule.add_noise(x0, noise, self.old[s].to(x0.device)).float()
        grid = self.new[: self.new_idx.index(s) + 1] if is_new else self.old[: s + 1]
        with torch.no_grad():
            return sample_fewstep(self.student_fn, noise, grid, self._scaled(cond, scales), schedule=self.schedule,
                                  generator=generator).float()

    def reference_x0(self, x_s: Tensor, x0: Tensor, cond: Cond, scales: Tensor, s: int, e: int,
                     generator: torch.Generator) -> Tensor:
        """The real side's end point (x0 space) of the jump old[s] → old[e], without gradient."""
        ref = self.cfg.reference
        with torch.no_grad():
            if ref == "data":
                return x0
            if ref == "teacher":
                t_s, t_e = float(self.old[s]), float(self.old[e])
                times = torch.linspace(t_s, t_e, self.cfg.teacher_steps + 1)
                guided = multi_cfg(self.teacher_fn, scales[:, 0], scales[:, 1])
                x_e = sample_ddim(guided, x_s, times, cond, schedule=self.schedule)
                if t_e == 0.0:
                    return x_e.float()
                t = torch.full((x_s.shape[0],), t_e, device=x_s.device)
                return self.schedule.to_x0(guided(x_e, t, cond), x_e, t).float()
            fn = self.reference_fn if ref == "prev_student" else self.student_fn
            return _last_x0(fn, x_s, self.old[s:e + 1], self._scaled(cond, scales), self.schedule, generator)

    def logits(self, x0: Tensor, x_s: Tensor | None, t_s: Tensor, cond: Cond, t_hat: Tensor, noise: Tensor) -> Tensor:
        """The discriminator's logits [B] for end points ``x0``, re-noised to ``t_hat`` with ``noise`` (gradient
        flows to ``x0`` through the frozen feature net; the start point's features carry none)."""
        net, sch, blocks = self.modules["feature_net"], self.schedule, self.disc_blocks
        x_t = sch.add_noise(x0, noise, t_hat).float()
        end = net.features(x_t, sch.model_time(t_hat), cond, blocks)
        start = None
        if x_s is not None:
            with torch.no_grad():
                start = net.features(x_s, sch.model_time(t_s), cond, blocks)
        return self.modules["discriminator"](end, start)

    @property
    def disc_blocks(self) -> list[int]:
        disc = self.modules["discriminator"]
        return getattr(disc, "module", disc).blocks

    # --- the loss -----------------------------------------------------------------------------------

    def schedule_state(self, step: int) -> tuple[float, float]:
        """(share of new-grid jumps, the t̂ mean) at ``step``: the curriculum's state."""
        n = self.cfg.train.steps
        return new_grid_share(self.cfg.curriculum, step, n, self.cfg.ramp), d_noise_mean(self.cfg, step, n)

    def loss(self, role: str, batch: dict, step: int, generator: torch.Generator):
        cfg, sch = self.cfg, self.schedule
        share, mean = self.schedule_state(step)
        s, e, is_new = draw_jump(cfg.train.seed, step, share, self.steps, self.new_idx)
        x0, cond, scales = self.chained(batch, generator)
        x_s = self.start_state(x0, cond, scales, s, is_new, generator)
        b = x0.shape[0]
        t_s = self.old[s].to(x0.device).expand(b)
        with torch.set_grad_enabled(role == "student"):
            fake = sch.to_x0(self.student_fn(x_s, t_s, self._scaled(cond, scales)), x_s, t_s)
        need_real = role == "discriminator" or cfg.distill_weight > 0
        real = self.reference_x0(x_s, x0, cond, scales, s, e, generator) if need_real else None
        t_hat = logit_normal(b, mean, cfg.d_t_std, generator, x0.device)
        noise = _randn(x0.shape, generator, x0.device)
        start = x_s if cfg.discriminator.conditional else None
        logs = {"p_new": share, "d_t_mean": mean, "jump_start": float(self.old[s]), "jump_end": float(self.old[e]),
                "new_jump": float(is_new)}
        if role == "discriminator":
            d_real = self.logits(real, start, t_s, cond, t_hat, noise)
            d_fake = self.logits(fake.detach(), start, t_s, cond, t_hat, noise)
            loss = d_losses(cfg.loss, d_real, d_fake).mean()
            return loss, {**logs, "d_real": float(d_real.detach().mean()), "d_fake": float(d_fake.detach().mean())}
        loss = torch.zeros((), device=x0.device)
        if cfg.adv_weight > 0:
            d_fake = self.logits(fake, start, t_s, cond, t_hat, noise)
            l_adv = g_losses(cfg.loss, d_fake).mean()
            loss = loss + cfg.adv_weight * l_adv
            logs.update(l_adv=float(l_adv.detach()), d_fake=float(d_fake.detach().mean()))
        if cfg.distill_weight > 0:
            l_dist = (fake - real).square().flatten(1).mean(1).mean()
            loss = loss + cfg.distill_weight * l_dist
            logs["l_dist"] = float(l_dist.detach())
        return loss, logs


# ---------------------------------------------------------------------------------------------
# running it


def round_info(start_info: ModelInfo, target: int, cfg: AdversarialConfig) -> ModelInfo:
    """The new student's ModelInfo: the starting student's, its few-step sampler at ``target`` steps."""
    sampler = dataclasses.replace(start_info.sampler, steps=target)
    return dataclasses.replace(start_info, kind="student", recipe="adversarial", sampler=sampler, trained={})


def open_student(student: str | Path):
    """(root, info, net) of the few-step student a round starts from; a one-line error for any other model."""
    root, info, _, _, net = load_model(student, device="cuda" if torch.cuda.is_available() else "cpu")
    if info.kind != "student" or info.sampler.name != "fewstep":
        raise LipstepError(f"{root}: is a {info.kind} with the {info.sampler.name} sampler; an adversarial round starts "
                           "from a few-step student (lipstep distill dmd, or an earlier round)")
    return root, info, net


def check_same_layout(root: Path, info: ModelInfo, teacher_root: Path, teacher_info: ModelInfo) -> None:
    """The student and the teacher must share frame size, chunk layout, model space and schedule."""
    for name in ("image_size", "frames", "motion_frames", "residual", "schedule"):
        if getattr(info, name) != getattr(teacher_info, name):
            raise LipstepError(f"{root}: its {name} ({getattr(info, name)}) differs from the teacher {teacher_root}'s "
                               f"({getattr(teacher_info, name)})")


class AdversarialRecipe:
    """`lipstep distill adversarial`: a few-step student, the teacher it came from, an `AdversarialConfig`."""

    name = "adversarial"

    def __init__(self, student: str | Path, teacher: str | Path, cfg: AdversarialConfig | None = None):
        self.student, self.teacher, self.cfg = student, teacher, cfg or AdversarialConfig()
        self.cfg.validate()

    def build(self, prepared: Path, out: Path, *, resume: bool, progress: bool):
        cfg = self.cfg
        root, info, start = open_student(self.student)  # first: it fails fast, before the data are encoded
        src = open_teacher(self.teacher, prepared, "distill adversarial", progress=progress,
                           blink_repeat=cfg.blink_repeat)
        check_same_layout(root, info, src.root, src.info)
        steps = info.sampler.steps
        spacing = info.sampler.sampler_options().spacing
        target = cfg.target_steps or max(1, steps // 2)
        student = copy.deepcopy(start).cpu().train().requires_grad_(True)
        if student.mouth_head is not None:  # the teacher's fitted audio -> mouth-state head stays as it is
            student.mouth_head.requires_grad_(False)
        tcfg = src.net.cfg
        disc = FeatureDiscriminator(cfg.discriminator, net_width=tcfg.width, grid=tcfg.latent_size // tcfg.patch,
                                    depth=tcfg.depth, seed=cfg.train.seed)
        method = AdversarialMethod(student, start.eval().requires_grad_(False), src.net, disc,
                                   src.info.make_schedule(), cfg, steps=steps, spacing=spacing,
                                   residual=src.info.residual > 0, motion_frames=src.info.motion_frames)
        dataset = src.dataset
        if cfg.chain > 1:
            window = WindowConfig(frames=cfg.chain * src.info.frames, motion_frames=src.info.motion_frames)
            dataset = WindowDataset(prepared, "train", window, latents=src.latents, pixels=False,
                                    residual=src.info.residual, blink_repeat=src.dataset.blink_repeat)
        n_disc = sum(p.numel() for p in disc.parameters())
        print(f"adversarial: {steps} -> {target} steps, student AvatarDiT ({param_count(student.cfg) / 1e6:.2f} M "
              f"parameters) from {root}; reference {cfg.reference}, {cfg.loss} loss, "
              f"{'conditional' if cfg.discriminator.conditional else 'unconditional'} discriminator "
              f"({n_disc / 1e6:.2f} M parameters on blocks {disc.blocks} of the teacher {src.root}), curriculum "
              f"{cfg.curriculum}, chain {cfg.chain}; {len(dataset)} training windows{dataset.blink_note}", flush=True)
        provenance = {"teacher": str(src.root), "start": str(root), "data": str(prepared.resolve()),
                      "round": [steps, target], "reference": cfg.reference, "loss": cfg.loss,
                      "curriculum": cfg.curriculum, "chain": cfg.chain,
                      "conditional": cfg.discriminator.conditional}
        return Built(method=method, dataset=dataset, train=cfg.train, info=round_info(info, target, cfg),
                     codec=src.codec, audio=src.audio, export_role="student", latents=src.latents,
                     validation=Validation(cfg.val_clips, target, cfg.val_seconds),
                     provenance=provenance, record="distill.json", run_config=cfg,
                     eyes=load_eyes(root, info, src.codec, student.cfg))


__all__ = [
    "CURRICULA",
    "REFERENCES",
    "AdversarialConfig",
    "AdversarialMethod",
    "AdversarialRecipe",
    "check_same_layout",
    "d_losses",
    "d_noise_mean",
    "draw_jump",
    "g_losses",
    "logit_normal",
    "new_grid_share",
    "open_student",
    "round_grids",
    "round_info",
]
