"""Loss math shared by every recipe (the teacher's denoising objective and the distillation methods).

- `sample_times`, `snr_weight` (min-SNR-γ per prediction type), `motion_weights` (moving positions
  count more), `blink_weights` (frames that blink count more), `noisy_motion`, `batch_cond` (the Cond of a
  latent batch, with first-chunk training): the pieces of the teacher's loss that students reuse so that
  they weigh what the teacher weighed;
- DMD's distribution-matching gradient and the surrogate loss that applies it (`dm_gradient`,
  `dm_surrogate_loss`);
- FADA's adaptive mixed supervision (below).

FADA's adaptive mixed supervision (algorithms.md §4.1): ``L = L_distill + W(R)·L_gt`` with the
per-sample ratio ``R = L_gt / L_teacher`` (stop-gradient) and ::

    W(R) = W0·R^s                               R < R_p
         = W0·R_p^s·(R_d − R)/(R_d − R_p)         R_p ≤ R < R_d
         = 0                                     R ≥ R_d

(s = 0.25, W0 = 0.2, R_p = 30, R_d = 100). Both branches equal ``W0·R_p^s`` at ``R_p``, so W is
continuous; a sample whose ground-truth loss is far above the teacher's (a low-quality or
mismatched clip) gets no ground-truth weight. ``adaptive-unlimited`` keeps ``W0·R^s`` for every R
(the ablation without the fall-off); ``fixed:<w>`` is a constant weight; ``off`` is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lipstep.config import check
from lipstep.diffusion.cond import Cond
from lipstep.diffusion.schedules import Schedule, append_dims
from lipstep.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# denoising-loss pieces


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


def blink_weights(batch: dict, strength: float) -> Tensor | float:
    """Per-frame weight [B, T, 1, 1, 1]: 1 + strength · closure, from the batch's blink labels (1.0 without them
    or at strength 0). Blinks cover a few percent of the frames and a few pixels of each, so an unweighted loss
    hardly asks for them; with `motion_weights` (the eyes move in a window that holds a blink) the weight lands
    on the eyelids of the frames that blink."""
    blink = batch.get("blink")
    if blink is None or strength <= 0:
        return 1.0
    return append_dims(1.0 + strength * blink.float(), 5)


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
                visemes=batch.get("visemes") if use_visemes else None, blink=batch.get("blink"))


# ---------------------------------------------------------------------------------------------
# distribution matching (DMD, Yin et al. 2024; DMD2; algorithms.md §2.1-2.3)


def dm_gradient(x: Tensor, fake_x0: Tensor, real_x0: Tensor) -> Tensor:
    """DMD's distribution-matching gradient on generated samples ``x`` (all [B, ...], x0 space)::

        grad = (fake_x0 − real_x0) / mean_{per sample} |x − real_x0|

    ``fake_x0`` / ``real_x0``: the fake and real scores' clean-sample estimates at the re-noised ``x``.
    Descending it moves ``x`` away from what the fake score (the generator's own distribution) expects and
    toward what the real score (the teacher) expects. The per-sample normaliser makes its size independent
    of how far each sample is from the real score's estimate (DMD2 / Self-Forcing; FastVideo's is global).
    A sample with a zero normaliser (x is the real estimate) gets 0, where DMD2's ``nan_to_num`` would turn
    0/0 into 0 but x/0 into the largest float; a NaN from the scores stays NaN, so the loop stops on it.
    """
    norm = (x.float() - real_x0.float()).abs().flatten(1).mean(1)
    inv = torch.where(norm > 0, 1.0 / norm.clamp_min(1e-30), torch.zeros_like(norm))
    return (fake_x0.float() - real_x0.float()) * append_dims(inv, x.ndim)


def dm_surrogate_loss(x: Tensor, grad: Tensor) -> Tensor:
    """Per sample [B]: ``½·mean((x − sg(x − grad))²)``, whose gradient with respect to ``x`` is ``grad`` (over
    the number of elements per sample): how a gradient computed without autograd reaches the generator."""
    target = (x.float() - grad.float()).detach()
    return 0.5 * (x.float() - target).square().flatten(1).mean(1)


# ---------------------------------------------------------------------------------------------
# FADA mixed supervision

MIXED_MODES = ("off", "fixed", "adaptive-unlimited", "adaptive")


@dataclass
class MixedConfig:
    """How the ground-truth loss is mixed in: ``mode`` is off | fixed:<w> | adaptive-unlimited | adaptive."""

    mode: str = "adaptive"
    w0: float = 0.2
    s: float = 0.25
    r_p: float = 30.0
    r_d: float = 100.0

    def validate(self) -> None:
        parse_mixed_mode(self.mode)
        check(self.w0 >= 0 and self.s >= 0, "mixed.w0 and mixed.s must be >= 0")
        check(0 < self.r_p < self.r_d, f"mixed: need 0 < r_p < r_d, got r_p={self.r_p}, r_d={self.r_d}")


def parse_mixed_mode(mode: str) -> tuple[str, float]:
    """``"fixed:0.2"`` -> ("fixed", 0.2); other modes -> (mode, 0.0); a `ConfigError` otherwise."""
    name, _, value = str(mode).partition(":")
    if name not in MIXED_MODES:
        raise ConfigError(f"mixed.mode must be off, fixed:<w>, adaptive-unlimited or adaptive, got {mode!r}")
    if name == "fixed":
        try:
            w = float(value)
        except ValueError:
            raise ConfigError(f"mixed.mode fixed needs a weight, e.g. fixed:0.2; got {mode!r}") from None
        if w < 0:
            raise ConfigError(f"mixed.mode fixed weight must be >= 0, got {w}")
        return name, w
    if value:
        raise ConfigError(f"mixed.mode {name} takes no value, got {mode!r}")
    return name, 0.0


def adaptive_weight(r: Tensor, w0: float = 0.2, s: float = 0.25, r_p: float = 30.0, r_d: float = 100.0,
                    *, limited: bool = True) -> Tensor:
    """FADA's W(R) per sample (module docstring); ``limited=False`` is ``W0·R^s`` everywhere."""
    r = torch.as_tensor(r).clamp_min(0)
    rising = w0 * r.pow(s)
    if not limited:
        return rising
    peak = w0 * r_p ** s
    falling = peak * (r_d - r) / (r_d - r_p)
    return torch.where(r < r_p, rising, torch.where(r < r_d, falling, torch.zeros_like(r)))


def mixed_weight(cfg: MixedConfig, r: Tensor) -> Tensor:
    """The ground-truth weight per sample for ``cfg.mode`` (R is only used by the adaptive modes)."""
    name, w = parse_mixed_mode(cfg.mode)
    if name == "off":
        return torch.zeros_like(r)
    if name == "fixed":
        return torch.full_like(r, w)
    return adaptive_weight(r, cfg.w0, cfg.s, cfg.r_p, cfg.r_d, limited=name == "adaptive")


__all__ = ["MIXED_MODES", "MixedConfig", "adaptive_weight", "batch_cond", "blink_weights", "dm_gradient",
           "dm_surrogate_loss", "mixed_weight", "motion_weights", "noisy_motion", "parse_mixed_mode", "sample_times",
           "snr_weight"]
