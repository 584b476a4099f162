"""TurboTalk stage 1: distribution matching distillation (DMD / DMD2) to a few-step student.

A frozen multi-step teacher becomes a ``K``-step generator (default 4) whose every step is one network
pass at any guidance scales (algorithms.md §2.1-2.3, §3.3). Three networks, all starting from the
teacher's weights:

- ``generator`` G (trained, exported): the teacher with FADA's CFG tokens (``cfg_mode="tokens"``; new
  layers zero-initialised, so it starts as the conditional teacher). It runs the re-noising sampler
  `lipstep.samplers.fewstep` on the grid ``t_0 = 1 > t_1 > … > t_{K−1}`` (``Schedule.timesteps``, trailing:
  1, 0.75, 0.5, 0.25)::

      x0_k = G(x_k, t_k, c, w),   x_{k+1} = a_{t_{k+1}}·x0_k + s_{t_{k+1}}·z,   z ~ N(0, I)

- ``fake_score`` μ_fake (trained, ``fake_updates`` steps per generator step: two-time-scale updates):
  tracks the distribution of the generator's samples. It is trained with the teacher's own denoising
  loss (native target, min-SNR-γ and motion weights) on *detached* generator samples x, at the noise
  levels where the DM loss queries it (t_min ≤ t ≤ t_max; DMD2 trains it at every t)::

      L_fake = snr_w(t)·mean(m·(μ_fake(x_t, t, c, w) − target(x, ε, t))²),   x_t = a_t·x + s_t·ε

- ``real_score`` μ_real (frozen): the teacher with FADA Eq. 9 multi-condition guidance at the scales w
  the generator was given (`lipstep.diffusion.guidance.multi_cfg`; three condition patterns, one batch).

**Generator step.** Backward simulation (DMD2): a grid index k is drawn, the *current* generator runs
its own first k steps from noise without gradient to x_k, then one step with gradient gives the sample
x = x0_k (``backward_simulation=False``: x_k is instead the real latent diffused to t_k). At a noise
level t ~ U[t_min, t_max] (a flow schedule: uniform, shifted, clamped) and x_t = a_t·x + s_t·ε::

      grad = (x0_fake − x0_real) / mean_{per sample}|x − x0_real|              (`losses.dm_gradient`)
      L_G  = λ_dm·½·mean((x − sg(x − grad))²)  [+ λ_reg·mean((G(z, 1) − y)²)]  (`losses.dm_surrogate_loss`)

with x0_fake, x0_real the two scores' clean-sample estimates (`Denoiser.x0`, whatever the teacher
predicts). The optional regression term (DMD v1, MSE in latent space instead of LPIPS) uses teacher ODE
pairs (z at t = 1 → the teacher's multi-CFG DDIM solve y) from PeRFlow's pair bank with one window.
The fake score's step draws its samples the same way (same k distribution, no gradient anywhere in G).

**Guidance.** Per sample, scales w = (cfg_a, cfg_r) are drawn from ``cfg_audio_range`` ×
``cfg_ref_range``; the generator (and with ``fake_cfg``, the fake score, whose distribution depends on
w too) reads them through its CFG layer, the real score applies them. ``cfg_mode="none"`` bakes fixed
scales (``cfg_audio``, ``cfg_ref``) into a generator without a guidance input (DMD2's form).

The grid index k is the same on every process (drawn from the run's seed and the step): under FSDP /
ZeRO-3 every process must run the same number of forward passes.

**GAN head (DMD2, optional: ``gan_weight`` > 0).** Discriminator heads on the fake score's own token
features (`lipstep.nets.discriminator.ScoreWithHeads`: the fake score role is then net + heads, one
optimizer). Real latents and detached generator samples are both re-noised to t ~ U[t_min, t_max]
(diffusion-GAN) and judged by the heads; the fake score's step adds
``gan_d_weight·(softplus(D(x_gen)) + softplus(−D(x_real)))`` and the generator's step
``gan_weight·softplus(−D(x))`` (non-saturating; DMD2: 5e-3 / 1e-2 for 4 steps).

Not yet here: the dynamic DM-timestep range of Self-Forcing. `DMDRecipe` builds a run for `lipstep.train.runner.run_recipe`
(``lipstep distill dmd``); the exported model's ``lipstep.json`` records the ``fewstep`` sampler.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lipstep.config import check
from lipstep.diffusion.cond import Cond
from lipstep.diffusion.denoiser import Denoiser
from lipstep.diffusion.guidance import multi_cfg
from lipstep.diffusion.schedules import SPACINGS, Schedule
from lipstep.distill.losses import batch_cond, dm_gradient, dm_surrogate_loss, motion_weights, snr_weight
from lipstep.distill.method import Built, Method, Role, TrainConfig, Validation
from lipstep.distill.perflow import (
    PairBank,
    PerflowConfig,
    PerflowMethod,
    build_pair_bank,
    check_guidance_settings,
    guided_copy,
    open_teacher,
    pair_settings,
)
from lipstep.modeldir import ModelInfo
from lipstep.nets.discriminator import DiscriminatorConfig, FeatureDiscriminator, ScoreWithHeads
from lipstep.nets.dit import param_count
from lipstep.samplers import SamplerInfo
from lipstep.samplers.fewstep import FewStepOptions, sample_fewstep


@dataclass
class DMDConfig:
    """`lipstep distill dmd`: generator grid, two-time-scale updates, DM noise levels, guidance, training."""

    student_steps: int = 4                  # K: the generator's grid (and its sampler's steps)
    spacing: str = "trailing"               # the grid (`Schedule.timesteps`): 1, 0.75, 0.5, 0.25 at K = 4
    backward_simulation: bool = True       # G trains on its own states x_k; false: on real latents diffused to t_k
    fake_updates: int = 5                   # fake-score steps per generator step (DMD2's TTUR ratio)
    fake_lr: float | None = None            # the fake score's lr (None = train.lr); the generator's is train.lr
    fake_cfg: bool = True                   # the fake score reads the guidance scales too (G's output depends on them)
    t_min: float = 0.02                     # noise levels of the DM loss and of the fake score's loss: U[t_min, t_max]
    t_max: float = 0.98
    dm_weight: float = 1.0                  # λ_dm
    cfg_mode: Literal["none", "time", "plain", "tokens"] = "tokens"   # how w reaches G (see PerflowConfig)
    cfg_tokens: int = 4
    cfg_audio_range: tuple[float, float] = (1.0, 5.0)   # cfg_a ~ U(range) per sample
    cfg_ref_range: tuple[float, float] = (1.0, 3.0)     # cfg_r ~ U(range) per sample
    cfg_audio: float | None = None          # the student's default scales (None = the teacher's); with
    cfg_ref: float | None = None            #   cfg_mode=none, the scales baked into it
    p_motion_ref: float = 0.5               # first-chunk training (motion = reference), as the teacher
    fake_motion_weight: float = 2.0         # the fake score's denoising loss: the teacher's defaults
    fake_min_snr_gamma: float = 5.0
    reg_weight: float = 0.0                 # λ_reg on teacher ODE pairs (DMD v1 0.25); needs pairs > 0
    pairs: int = 0                          # teacher ODE pairs solved once into a pair bank (0 = none)
    pairs_dir: str = ""                     # the pair bank's directory ("" = OUT/pairs; reused when it matches)
    solver_steps: int = 10                  # teacher DDIM steps of one ODE pair (t = 1 → 0)
    blink_repeat: int = 3                   # a teacher that reads blinks: windows holding a blink appear 1 + k
    #   times per epoch (`WindowDataset`, as the teacher's blink_repeat); 0 = as the clips have them
    gan_weight: float = 0.0                 # λ_G of DMD2's GAN head on the fake score (0 = no head)
    gan_d_weight: float = 1e-2              # λ_D: the heads' loss in the fake score's step
    gan_head: DiscriminatorConfig = field(default_factory=lambda: DiscriminatorConfig(conditional=False))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=1200, batch_size=4, lr=2e-5, betas=(0.0, 0.999), warmup_steps=0, grad_clip=10.0, ema_decay=0.99,
        checkpoint_every=120, validate_every=0, log_every=12))
    val_clips: int = 2                      # held-out clips rendered as validation videos at the end
    val_seconds: float = 2.0

    def validate(self) -> None:
        check(self.student_steps >= 1, f"student_steps must be >= 1, got {self.student_steps}")
        check(self.spacing in SPACINGS, f"spacing must be one of {SPACINGS}, got {self.spacing!r}")
        check(self.fake_updates >= 1, f"fake_updates must be >= 1, got {self.fake_updates}")
        check(self.fake_lr is None or self.fake_lr > 0, "fake_lr must be > 0 (or None)")
        check(0 <= self.t_min < self.t_max <= 1, f"need 0 <= t_min < t_max <= 1, got {self.t_min}, {self.t_max}")
        check_guidance_settings(self)
        check(0 <= self.p_motion_ref <= 1, "p_motion_ref must be in [0, 1]")
        check(min(self.dm_weight, self.reg_weight, self.fake_motion_weight, self.fake_min_snr_gamma) >= 0,
              "dm_weight, reg_weight, fake_motion_weight and fake_min_snr_gamma must be >= 0")
        check(self.pairs >= 0 and self.solver_steps >= 1, "pairs must be >= 0 and solver_steps >= 1")
        check(self.reg_weight == 0 or self.pairs > 0, "reg_weight > 0 needs teacher pairs: set pairs=N")
        check(self.val_clips >= 0 and self.val_seconds > 0, "val_clips >= 0 and val_seconds > 0 required")
        check(self.blink_repeat >= 0, f"blink_repeat must be >= 0, got {self.blink_repeat}")
        check(self.gan_weight >= 0 and self.gan_d_weight >= 0, "gan_weight and gan_d_weight must be >= 0")
        check(not self.gan_head.conditional, "gan_head.conditional must be false (the head judges a sample alone)")
        self.gan_head.validate()


# ---------------------------------------------------------------------------------------------
# the pieces


def dm_times(n: int, generator: torch.Generator, t_min: float, t_max: float, schedule: Schedule, device) -> Tensor:
    """Noise levels [n] of the DM loss and the fake score's loss: U[t_min, t_max]; for a flow schedule U[0, 1]
    warped by its shift, then clamped to [t_min, t_max] (FastVideo / Wan, algorithms.md §2.3)."""
    u = torch.rand(n, generator=generator, device=generator.device).to(device)
    shift = getattr(schedule, "shift_time", None)
    if shift is None:
        return t_min + (t_max - t_min) * u
    return shift(u).clamp(t_min, t_max)


def start_index(seed: int, step: int, steps: int) -> int:
    """The grid index k the generator trains from at ``step``: one draw per step, equal on every process."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + 17) % (2**63))
    return int(torch.randint(steps, (1,), generator=gen))


def _randn(shape, generator: torch.Generator, device) -> Tensor:
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


class DMDMethod(Method):
    """The DMD objective (module docstring): ``fake_score`` (trained ``fake_updates`` times per cycle),
    ``generator`` (trained once per cycle, exported) and ``real_score`` (the frozen teacher)."""

    def __init__(self, generator, fake_score, teacher, schedule: Schedule, cfg: DMDConfig, *,
                 residual: bool = False, fixed_scales: tuple[float, float] = (1.0, 1.0)):
        cfg.validate()
        self.generator, self.fake_score, self.teacher = generator, fake_score, teacher
        self.schedule, self.cfg = schedule, cfg
        self.residual = residual            # batches hold offsets from the reference (the teacher's ModelInfo.residual)
        self.fixed_scales = fixed_scales    # the scales of cfg_mode "none"
        self.grid = FewStepOptions(cfg.spacing).timesteps(schedule, cfg.student_steps)  # [K + 1], t_K = 0
        self.bind({"fake_score": fake_score, "generator": generator, "real_score": teacher})

    def roles(self) -> dict[str, Role]:
        # declaration order is the update order of a cycle: the fake score first catches up with G
        return {"fake_score": Role(self.fake_score, lr=self.cfg.fake_lr, updates=self.cfg.fake_updates, ema=False),
                "generator": Role(self.generator),
                "real_score": Role(self.teacher, trainable=False)}

    def bind(self, modules) -> None:
        super().bind(modules)
        self.generator_fn = Denoiser(self.modules["generator"], self.schedule)
        self.fake_fn = Denoiser(self.modules["fake_score"], self.schedule)  # a ScoreWithHeads predicts too
        self.real_fn = Denoiser(self.modules["real_score"].eval().requires_grad_(False), self.schedule)

    # --- conditions and guidance scales ---------------------------------------------------------

    def scales(self, n: int, generator: torch.Generator, device) -> Tensor:
        """Guidance scales [n, 2] = (cfg_a, cfg_r) per sample; the fixed ones for cfg_mode "none"."""
        cfg = self.cfg
        if cfg.cfg_mode == "none":
            return torch.tensor(self.fixed_scales, device=device).expand(n, 2)
        u = torch.rand(n, 2, generator=generator, device=generator.device).to(device)
        lo = torch.tensor([cfg.cfg_audio_range[0], cfg.cfg_ref_range[0]], device=device)
        hi = torch.tensor([cfg.cfg_audio_range[1], cfg.cfg_ref_range[1]], device=device)
        return lo + (hi - lo) * u

    def conditions(self, batch: dict, generator: torch.Generator) -> tuple[Cond, Tensor]:
        """The batch's Cond (no guidance scales) and the step's scales [B, 2] (a pair bank's own, if any)."""
        if "z_end" in batch:  # a pair bank item: motion choice and scales were drawn when it was solved
            return batch_cond(batch), batch["scales"].float()
        cond = batch_cond(batch, generator, self.cfg.p_motion_ref, residual=self.residual)
        return cond, self.scales(cond.batch_size, generator, cond.reference.device)

    def _with_scales(self, cond: Cond, scales: Tensor, reads: bool) -> Cond:
        return dataclasses.replace(cond, cfg_scales=scales if reads else None)

    # --- the generator's samples ------------------------------------------------------------------

    def generator_input(self, x0: Tensor, g_cond: Cond, k: int, generator: torch.Generator) -> Tensor:
        """x_k at grid time t_k, without gradient: noise at k = 0; else the current generator's own k steps
        from noise (backward simulation), or the real latents ``x0`` diffused to t_k."""
        noise = _randn(x0.shape, generator, x0.device)
        if k == 0:
            return noise
        with torch.no_grad():
            if self.cfg.backward_simulation:
                return sample_fewstep(self.generator_fn, noise, self.grid[: k + 1], g_cond, schedule=self.schedule,
                                      generator=generator)
            return self.schedule.add_noise(x0.float(), noise, self.grid[k].to(x0.device)).float()

    def generate(self, x0: Tensor, g_cond: Cond, k: int, generator: torch.Generator) -> Tensor:
        """The generator's sample x = x0_k (step k from its input x_k), under the caller's grad mode."""
        x_k = self.generator_input(x0, g_cond, k, generator)
        t = self.grid[k].to(x0.device).expand(x0.shape[0])
        return self.generator_fn.x0(x_k, t, g_cond)

    # --- losses -----------------------------------------------------------------------------------

    def dm_loss(self, x: Tensor, cond: Cond, scales: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(per-sample surrogate DM loss [B], the DM gradient) for generated samples ``x`` (with grad)."""
        cfg, sch = self.cfg, self.schedule
        t = dm_times(x.shape[0], generator, cfg.t_min, cfg.t_max, sch, x.device)
        noise = _randn(x.shape, generator, x.device)
        with torch.no_grad():
            x_t = sch.add_noise(x.detach(), noise, t).float()
            fake = self.fake_fn(x_t, t, self._with_scales(cond, scales, self.reads_scales("fake_score")))
            real = multi_cfg(self.real_fn, scales[:, 0], scales[:, 1])(x_t, t, cond)  # FADA Eq. 9, one 3B batch
            grad = dm_gradient(x.detach(), sch.to_x0(fake, x_t, t), sch.to_x0(real, x_t, t))
        return dm_surrogate_loss(x, grad), grad

    def fake_loss(self, x: Tensor, cond: Cond, scales: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(weighted loss, per-sample MSE [B]): the teacher's denoising loss of the fake score on detached ``x``."""
        cfg, sch = self.cfg, self.schedule
        x = x.detach().float()
        t = dm_times(x.shape[0], generator, cfg.t_min, cfg.t_max, sch, x.device)
        eps = _randn(x.shape, generator, x.device)
        x_t = sch.add_noise(x, eps, t).float()
        pred = self.fake_fn(x_t, t, self._with_scales(cond, scales, self.reads_scales("fake_score")))
        err = ((pred - sch.target(x, eps, t).float()).square() * motion_weights(x, cfg.fake_motion_weight))
        per_sample = err.flatten(1).mean(1)
        return (snr_weight(sch, t, cfg.fake_min_snr_gamma) * per_sample).mean(), per_sample

    def reg_loss(self, batch: dict, cond: Cond, scales: Tensor) -> Tensor:
        """Per-sample MSE [B] of G's first step (t = 1, the pair's start) against the teacher's ODE solution."""
        x0 = batch["latents"].float()
        one = torch.ones(x0.shape[0], device=x0.device)
        z = self.schedule.add_noise(x0, batch["eps"].float(), one.double()).float()
        pred = self.generator_fn.x0(z, one, self._with_scales(cond, scales, self.reads_scales("generator")))
        return (pred - batch["z_end"].float()).square().flatten(1).mean(1)

    def judge(self, x: Tensor, cond: Cond, scales: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """The GAN head's logits [B] for clean samples ``x`` re-noised to ``t`` (gradient flows to ``x``).

        `ScoreWithHeads.logits` is called on the unwrapped module: under DDP its parameters' gradients are
        still reduced in the fake score's own step (its DDP forward, the fake loss, runs in the same step and
        every parameter gets a gradient), and in the generator's step they are not trained.
        """
        sch = self.schedule
        x_t = sch.add_noise(x, noise, t).float()
        c = self._with_scales(cond, scales, self.reads_scales("fake_score"))
        net = self.modules["fake_score"]
        return getattr(net, "module", net).logits(x_t, sch.model_time(t), c)

    def gan_times(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(t [B], noise) of the GAN head's re-noising: the DM loss's noise levels (diffusion-GAN)."""
        t = dm_times(x.shape[0], generator, self.cfg.t_min, self.cfg.t_max, self.schedule, x.device)
        return t, _randn(x.shape, generator, x.device)

    def reads_scales(self, role: str) -> bool:
        """Whether ``role``'s net takes the guidance scales as an input."""
        if self.cfg.cfg_mode == "none":
            return False
        return role == "generator" or self.cfg.fake_cfg

    def loss(self, role: str, batch: dict, step: int, generator: torch.Generator):
        cfg = self.cfg
        x0 = batch["latents"].float()
        cond, scales = self.conditions(batch, generator)
        g_cond = self._with_scales(cond, scales, self.reads_scales("generator"))
        k = start_index(cfg.train.seed, step, cfg.student_steps)
        if role == "fake_score":
            with torch.no_grad():
                x = self.generate(x0, g_cond, k, generator)
            loss, mse = self.fake_loss(x, cond, scales, generator)
            logs = {"l_fake": float(mse.detach().mean()), "k": float(k)}
            if cfg.gan_weight > 0:
                t, noise = self.gan_times(x, generator)
                d_fake = self.judge(x, cond, scales, t, noise)
                d_real = self.judge(x0, cond, scales, t, noise)
                l_d = (F.softplus(d_fake) + F.softplus(-d_real)).mean()
                loss = loss + cfg.gan_d_weight * l_d
                logs.update(l_gan_d=float(l_d.detach()), d_real=float(d_real.detach().mean()),
                            d_fake=float(d_fake.detach().mean()))
            return loss, logs
        x = self.generate(x0, g_cond, k, generator)
        l_dm, grad = self.dm_loss(x, cond, scales, generator)
        loss = cfg.dm_weight * l_dm.mean()
        logs = {"l_dm": float(l_dm.detach().mean()), "dm_grad": float(grad.abs().mean()), "k": float(k)}
        if cfg.gan_weight > 0:
            l_g = F.softplus(-self.judge(x, cond, scales, *self.gan_times(x, generator))).mean()
            loss = loss + cfg.gan_weight * l_g
            logs["l_gan_g"] = float(l_g.detach())
        if cfg.reg_weight > 0 and "z_end" in batch:
            l_reg = self.reg_loss(batch, cond, scales)
            loss = loss + cfg.reg_weight * l_reg.mean()
            logs["l_reg"] = float(l_reg.detach().mean())
        return loss, logs


# ---------------------------------------------------------------------------------------------
# running it


def with_gan_head(fake, head: DiscriminatorConfig, seed: int) -> ScoreWithHeads:
    """The fake score with DMD2's GAN heads on its own features."""
    c = fake.cfg
    return ScoreWithHeads(fake, FeatureDiscriminator(head, net_width=c.width, grid=c.latent_size // c.patch,
                                                     depth=c.depth, seed=seed))


def default_scales(teacher_info: ModelInfo, cfg: DMDConfig) -> tuple[float, float]:
    """The student's default (cfg_a, cfg_r): the config's, else the teacher's."""
    t = teacher_info.sampler
    return (t.cfg_audio if cfg.cfg_audio is None else cfg.cfg_audio, t.cfg_ref if cfg.cfg_ref is None else cfg.cfg_ref)


def student_info(teacher_info: ModelInfo, cfg: DMDConfig) -> ModelInfo:
    """The student's ModelInfo: the teacher's schedule and chunk layout, the ``fewstep`` sampler on its grid."""
    cfg_audio, cfg_ref = default_scales(teacher_info, cfg)
    guidance = "embedded"
    if cfg.cfg_mode == "none":  # the scales are baked in: one plain conditional pass (guidance on top costs 3)
        cfg_audio = cfg_ref = 1.0
        guidance = "cfg"
    sampler = SamplerInfo(name="fewstep", steps=cfg.student_steps, cfg_audio=cfg_audio, cfg_ref=cfg_ref,
                          guidance=guidance, options={"spacing": cfg.spacing})
    return dataclasses.replace(teacher_info, kind="student", recipe="dmd", sampler=sampler, trained={})


def pair_solver(method: DMDMethod, cfg: DMDConfig) -> PerflowMethod:
    """PeRFlow's pair-bank builder set to one window (t = 1 → 0) and DMD's scales: teacher ODE pairs."""
    fixed = cfg.cfg_mode == "none"
    a, r = method.fixed_scales
    pcfg = PerflowConfig(windows=1, solver_steps=cfg.solver_steps, cfg_mode="tokens",
                         cfg_audio_range=(a, a) if fixed else cfg.cfg_audio_range,
                         cfg_ref_range=(r, r) if fixed else cfg.cfg_ref_range, p_motion_ref=cfg.p_motion_ref,
                         train=TrainConfig(seed=cfg.train.seed))
    return PerflowMethod(method.generator, method.teacher, method.schedule, pcfg, residual=method.residual)


class DMDRecipe:
    """`lipstep distill dmd` for `lipstep.train.runner.run_recipe`: a teacher (model directory or bundled name)
    + a `DMDConfig`."""

    name = "dmd"

    def __init__(self, teacher: str | Path, cfg: DMDConfig | None = None):
        self.teacher, self.cfg = teacher, cfg or DMDConfig()
        self.cfg.validate()

    def build(self, prepared: Path, out: Path, *, resume: bool, progress: bool):
        cfg = self.cfg
        src = open_teacher(self.teacher, prepared, "distill dmd", progress=progress, blink_repeat=cfg.blink_repeat)
        seed = cfg.train.seed
        generator = guided_copy(src.net, cfg.cfg_mode, cfg.cfg_tokens, seed).cpu()
        fake = guided_copy(src.net, cfg.cfg_mode if cfg.fake_cfg else "none", cfg.cfg_tokens, seed).cpu()
        if cfg.gan_weight > 0:
            fake = with_gan_head(fake, cfg.gan_head, seed)
        scales = default_scales(src.info, cfg)
        method = DMDMethod(generator, fake, src.net, src.info.make_schedule(), cfg, residual=src.info.residual > 0,
                           fixed_scales=scales)
        dataset, bank = src.dataset, None
        if cfg.pairs:
            solver = pair_solver(method, cfg)
            bank = Path(cfg.pairs_dir) if cfg.pairs_dir else out / "pairs"
            build_pair_bank(solver, dataset, cfg.pairs, bank, pair_settings(solver.cfg, src.root, prepared),
                            progress=progress)
            dataset = PairBank(bank, cfg.pairs)
        print(f"dmd: {cfg.student_steps}-step generator AvatarDiT ({param_count(generator.cfg) / 1e6:.2f} M parameters, "
              f"cfg_mode {cfg.cfg_mode}) and fake score from the teacher {src.root}; {cfg.fake_updates} fake-score "
              f"updates per generator update, backward simulation {'on' if cfg.backward_simulation else 'off'}; "
              f"{len(dataset)} {'teacher pairs from ' + str(bank) if bank else 'training windows' + src.dataset.blink_note}",
              flush=True)
        provenance = {"teacher": str(src.root), "data": str(prepared.resolve()), "student_steps": cfg.student_steps,
                      "cfg_mode": cfg.cfg_mode, "fake_updates": cfg.fake_updates,
                      "backward_simulation": cfg.backward_simulation, "reg_weight": cfg.reg_weight,
                      "gan_weight": cfg.gan_weight,
                      "scales": list(scales) if cfg.cfg_mode == "none" else
                      [list(cfg.cfg_audio_range), list(cfg.cfg_ref_range)]}
        return Built(method=method, dataset=dataset, train=cfg.train, info=student_info(src.info, cfg),
                     codec=src.codec, audio=src.audio, export_role="generator", latents=src.latents,
                     validation=Validation(cfg.val_clips, cfg.student_steps, cfg.val_seconds),
                     provenance=provenance, record="distill.json", run_config=cfg, eyes=src.eyes)


__all__ = ["DMDConfig", "DMDMethod", "DMDRecipe", "default_scales", "dm_times", "pair_solver", "start_index",
           "student_info", "with_gan_head"]
