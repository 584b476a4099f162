"""Noise schedules and parametrisations: the one home of the x0 / eps / v / flow-velocity algebra.

Time convention (used everywhere in lipstep): continuous ``t ∈ [0, 1]``, ``t = 1`` is (almost)
pure noise and ``t = 0`` is exactly clean. Tensors ``t`` are float ``[B]`` (a scalar is also
accepted) and broadcast over any trailing shape, e.g. video latents ``[B, T, C, h, w]``.

Every schedule noises data the same way (algorithms.md §1)::

    x_t = a_t · x0 + s_t · eps,        eps ~ N(0, I)

and differs only in ``(a_t, s_t)`` and in what its network predicts (the *native* prediction):

- ``VPSchedule`` (DDPM / SD-1.5 family): ``a_t = sqrt(abar_t)``, ``s_t = sqrt(1 − abar_t)``, with
  ``abar`` the discrete SD table ``abar_k = prod_{j<=k} (1 − beta_j)``, ``k = 0 .. N−1``.
  Continuous time sits on the table at position ``p = t·N − 1`` (so ``t = 1`` is index ``N − 1`` =
  999 and ``t = (k + 1)/N`` is index ``k``); ``log abar`` is interpolated linearly between indices,
  and the table is extended by ``abar_{−1} = 1`` at ``t = 0`` so that ``t = 0`` is exactly clean
  (diffusers' ``set_alpha_to_one=True``). The network is fed ``model_time(t) = t·N − 1``, the SD
  timestep index.
    - ``prediction="eps"``: ``pred = eps``;  ``x0 = (x_t − s·eps) / a`` (``a`` clamped ≥ 1e-4).
    - ``prediction="v"`` (Salimans & Ho 2022): ``v = a·eps − s·x0``;
      ``x0 = a·x_t − s·v``,  ``eps = s·x_t + a·v``  (uses ``a² + s² = 1``).
    - ``prediction="x0"``: ``pred = x0``;  ``eps = (x_t − a·x0) / s`` (``s`` clamped ≥ ``S_MIN``). The
      net outputs the clean sample, which lies near a low-dimensional data manifold, instead of
      full-rank noise: what works for high-dimensional pixel patches (Li & He 2025, "Back to Basics:
      Let Denoising Generative Models Denoise"), where eps / v prediction leaves uncorrected noise.
- ``FlowSchedule`` (rectified flow / flow matching, Wan-style): ``a_t = 1 − t``, ``s_t = t``
  (``t`` is the flow's sigma). Native prediction ``prediction="flow_v"``, the flow velocity
  ``u = eps − x0 = dx_t/dt``; ``x0 = x_t − t·u``,  ``eps = x_t + (1 − t)·u``. The network is fed
  ``model_time(t) = t·N`` (``N = 1000``). ``shift_time(t) = k·t / (1 + (k − 1)·t)`` warps the
  sampling grid (``timesteps``) towards the noisy end (InfiniteTalk: k = 7 at 480p, 11 at 720p).

"Velocity" is therefore schedule-specific: ``Schedule.to_v`` returns the VP ``v`` for a VP schedule
and the flow velocity ``u`` for a flow schedule (whatever that schedule's ``velocity()`` is).

``ddim_step`` is the one deterministic (or eta-stochastic) update, ``x_{t'} = a_{t'}·x0 + s_{t'}·eps``
(DDIM, Song et al. 2021, Eq. 12). For the flow schedule this is exactly the Euler step
``x_{t'} = x_t + (t' − t)·u``; for VP it is Euler on the probability-flow ODE in the coordinates
``(x/a, s/a)``. Every sampler and distillation target goes through it.

Numerics: schedule coefficients are computed in float64 (float32 where the device lacks float64)
and results are returned in ``promote(x.dtype, float32)``; x0 recovery divides by ``a`` clamped at
``A_MIN``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from lipstep.errors import ConfigError

A_MIN = 1e-4
"""Lower clamp on ``a_t`` when dividing by it (x0 recovery from eps near t = 1)."""
S_MIN = 1e-4
"""Lower clamp on ``s_t`` when dividing by it (eps recovery from x0 near t = 0)."""

SPACINGS = ("trailing", "leading", "linspace")


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Reshape ``v`` [B] (or a scalar) to broadcast against a tensor with ``ndim`` dims: [B, 1, ..., 1]."""
    if v.ndim == 0:
        return v
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def _hp_dtype(device: torch.device) -> torch.dtype:
    """Float64 where the device supports it (everything but Apple MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _out_dtype(x: Tensor) -> torch.dtype:
    """At least float32: sampler math and conversions never run in half precision."""
    return torch.promote_types(x.dtype, torch.float32)


def _as_time(t, device: torch.device) -> Tensor:
    """``t`` (float, scalar or [B] tensor) as a high-precision tensor on ``device``."""
    return torch.as_tensor(t, device=device).to(_hp_dtype(torch.device(device)))


def _grid(n: int, t_max: float, t_min: float, spacing: str, resolution: float) -> Tensor:
    """Unwarped grid of ``n + 1`` times from ``t_max`` down to ``t_min`` (see ``Schedule.timesteps``)."""
    if n < 1 or not 0.0 <= t_min < t_max <= 1.0 or spacing not in SPACINGS:
        raise ValueError(f"timesteps: need n >= 1, 0 <= t_min < t_max <= 1 and spacing in {SPACINGS}; "
                         f"got n={n}, t_max={t_max}, t_min={t_min}, spacing={spacing!r}")
    i = torch.arange(n, dtype=torch.float64)
    step = (t_max - t_min) / n
    if spacing == "trailing":
        evals = t_max - i * step
    elif spacing == "leading":
        evals = t_min + resolution + (n - 1 - i) * step
    else:  # linspace
        evals = torch.linspace(t_max, t_min + resolution, n, dtype=torch.float64)
    grid = torch.cat([evals, torch.tensor([t_min], dtype=torch.float64)])
    if not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(f"timesteps: {spacing!r} spacing with n={n} on [{t_min}, {t_max}] is not strictly "
                         f"decreasing (n too large for the training resolution {resolution})")
    return grid


class Schedule:
    """Interface shared by all schedules: ``x_t = a_t·x0 + s_t·eps`` plus a native prediction type.

    Subclasses define ``_alpha_sigma_hp``, ``model_time``, ``velocity`` and ``_split`` (native
    prediction -> (x0, eps)); everything else is written once here.
    """

    prediction: str
    train_steps: int

    # --- per-schedule pieces -------------------------------------------------------------------

    def model_time(self, t: Tensor) -> Tensor:
        """The time value the network is fed for ``t``."""
        raise NotImplementedError

    def velocity(self, x0: Tensor, eps: Tensor, t) -> Tensor:
        """This schedule's velocity from (x0, eps): VP ``v = a·eps − s·x0``; flow ``u = eps − x0``."""
        raise NotImplementedError

    def _split(self, pred: Tensor, x_t: Tensor, t) -> tuple[Tensor, Tensor]:
        """(x0, eps) implied by a native prediction at (x_t, t)."""
        raise NotImplementedError

    def _alpha_sigma_hp(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(a, s) in the dtype of ``t`` (already high precision)."""
        raise NotImplementedError

    # --- shared algebra ------------------------------------------------------------------------

    def alpha_sigma(self, t) -> tuple[Tensor, Tensor]:
        """``(a_t, s_t)`` with the shape of ``t``; float64 if ``t`` is float64, else float32."""
        t = torch.as_tensor(t)
        a, s = self._alpha_sigma_hp(_as_time(t, t.device))
        dt = torch.float64 if t.dtype == torch.float64 else torch.float32
        return a.to(dt), s.to(dt)

    def coeffs(self, t, like: Tensor) -> tuple[Tensor, Tensor]:
        """(a_t, s_t) shaped [B, 1, ..., 1] to broadcast against ``like``, in its compute dtype."""
        a, s = self._alpha_sigma_hp(_as_time(t, like.device))
        dt = _out_dtype(like)
        return append_dims(a, like.ndim).to(dt), append_dims(s, like.ndim).to(dt)

    def add_noise(self, x0: Tensor, eps: Tensor, t) -> Tensor:
        """Forward process ``x_t = a_t·x0 + s_t·eps``."""
        a, s = self.coeffs(t, x0)
        return a * x0 + s * eps

    def renoise(self, x0: Tensor, t, noise: Tensor) -> Tensor:
        """Same as ``add_noise`` with the argument order used by distillation code."""
        return self.add_noise(x0, noise, t)

    def to_x0(self, pred: Tensor, x_t: Tensor, t) -> Tensor:
        """Clean-sample estimate from a native prediction."""
        return self._split(pred, x_t, t)[0]

    def to_eps(self, pred: Tensor, x_t: Tensor, t) -> Tensor:
        """Noise estimate from a native prediction."""
        return self._split(pred, x_t, t)[1]

    def to_v(self, pred: Tensor, x_t: Tensor, t) -> Tensor:
        """This schedule's velocity (VP ``v`` or flow ``u``, see ``velocity``) from a native prediction."""
        return self.velocity(*self._split(pred, x_t, t), t)

    def from_x0_eps(self, x0: Tensor, eps: Tensor, x_t: Tensor, t) -> Tensor:
        """Native prediction implied by (x0, eps); ``x_t`` is part of the contract but unused here."""
        del x_t
        return self.target(x0, eps, t)

    def target(self, x0: Tensor, eps: Tensor, t) -> Tensor:
        """Native regression target for training at (x0, eps, t)."""
        if self.prediction == "eps":
            return eps.to(_out_dtype(eps))
        if self.prediction == "x0":
            return x0.to(_out_dtype(x0))
        return self.velocity(x0, eps, t)

    def snr(self, t) -> Tensor:
        """Signal-to-noise ratio ``a_t² / s_t²`` (inf at t = 0)."""
        a, s = self.alpha_sigma(t)
        return a.square() / s.square()

    def timesteps(self, n: int, t_max: float = 1.0, t_min: float = 0.0,
                  spacing: str = "trailing") -> Tensor:
        """Float32 grid [n + 1] from ``t_max`` down to ``t_min`` for an ``n``-step sampler.

        The first ``n`` entries are where the network is evaluated; the last is ``t_min``. With
        ``Δ = (t_max − t_min)/n`` and ``δ = 1/train_steps`` (one training index):
        ``trailing``: ``t_max − iΔ`` (starts at t_max; Lin et al. 2024); ``leading``:
        ``t_min + δ + (n − 1 − i)Δ``; ``linspace``: ``n`` points from ``t_max`` to ``t_min + δ``.
        On the VP table these are diffusers' DDIM spacings of the same names (steps_offset=0, up to
        diffusers' integer rounding); ``linspace`` before ``FlowSchedule``'s shift is InfiniteTalk's
        grid (and diffusers' FlowMatchEuler grid at shift 1).
        """
        return _grid(n, t_max, t_min, spacing, 1.0 / self.train_steps).to(torch.float32)


class VPSchedule(Schedule):
    """Discrete DDPM table (SD-1.5 by default) on continuous time; eps, v or x0 prediction."""

    def __init__(self, prediction: str = "eps", kind: str = "scaled_linear", beta_start: float = 0.00085,
                 beta_end: float = 0.012, train_steps: int = 1000):
        if prediction not in ("eps", "v", "x0"):
            raise ConfigError(f"VPSchedule prediction must be 'eps', 'v' or 'x0', got {prediction!r}")
        self.prediction, self.kind, self.train_steps = prediction, kind, int(train_steps)
        self.beta_start, self.beta_end = float(beta_start), float(beta_end)
        betas = vp_betas(kind, beta_start, beta_end, self.train_steps)
        # log abar at positions -1 .. N-1 (t = 0 .. 1); position -1 is the clean endpoint abar = 1.
        self._log_abar = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.log1p(-betas), 0)])

    def __repr__(self) -> str:
        return (f"VPSchedule(prediction={self.prediction!r}, kind={self.kind!r}, beta_start={self.beta_start}, "
                f"beta_end={self.beta_end}, train_steps={self.train_steps})")

    def _table(self, t: Tensor) -> Tensor:
        return self._log_abar.to(device=t.device, dtype=t.dtype)

    def log_abar(self, t: Tensor) -> Tensor:
        """``log abar`` at continuous ``t``: linear interpolation on the extended table at ``t·N``."""
        table = self._table(t)
        pos = (t.clamp(0.0, 1.0) * self.train_steps)
        lo = pos.floor().clamp(max=self.train_steps - 1)
        frac = pos - lo
        lo = lo.long()
        return table[lo] * (1 - frac) + table[lo + 1] * frac

    def _alpha_sigma_hp(self, t: Tensor) -> tuple[Tensor, Tensor]:
        la = self.log_abar(t)
        return torch.exp(0.5 * la), torch.sqrt(0.0 - torch.expm1(la))  # 0 - x: +0, not -0, at t = 0

    def model_time(self, t: Tensor) -> Tensor:
        """SD timestep index ``t·N − 1`` (999 at t = 1)."""
        return t * self.train_steps - 1

    def velocity(self, x0: Tensor, eps: Tensor, t) -> Tensor:
        a, s = self.coeffs(t, x0)
        return a * eps - s * x0

    def _split(self, pred: Tensor, x_t: Tensor, t) -> tuple[Tensor, Tensor]:
        a, s = self.coeffs(t, x_t)
        pred, x_t = pred.to(a.dtype), x_t.to(a.dtype)
        if self.prediction == "eps":
            return (x_t - s * pred) / a.clamp_min(A_MIN), pred
        if self.prediction == "x0":
            return pred, (x_t - a * pred) / s.clamp_min(S_MIN)
        return a * x_t - s * pred, s * x_t + a * pred


def vp_betas(kind: str, beta_start: float, beta_end: float, n: int) -> Tensor:
    """Float64 betas [n] for ``kind`` in {scaled_linear (SD), linear (DDPM), cosine (squaredcos_cap_v2)}."""
    if kind == "scaled_linear":
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=torch.float64) ** 2
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    if kind == "cosine":
        abar = [math.cos((i / n + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(n + 1)]
        return torch.tensor([min(1 - abar[i + 1] / abar[i], 0.999) for i in range(n)], dtype=torch.float64)
    raise ConfigError(f"unknown VP schedule kind {kind!r}; expected scaled_linear, linear or cosine")


class FlowSchedule(Schedule):
    """Rectified flow ``x_t = (1 − t)·x0 + t·eps`` with flow-velocity prediction ``u = eps − x0``."""

    prediction = "flow_v"

    def __init__(self, shift: float = 1.0, train_steps: int = 1000):
        if shift <= 0:
            raise ConfigError(f"FlowSchedule shift must be > 0, got {shift}")
        self.shift, self.train_steps = float(shift), int(train_steps)

    def __repr__(self) -> str:
        return f"FlowSchedule(shift={self.shift}, train_steps={self.train_steps})"

    def shift_time(self, t):
        """Timestep shift ``k·t / (1 + (k − 1)·t)``; identity at k = 1, fixes 0 and 1."""
        k = self.shift
        return k * t / (1 + (k - 1) * t)

    def timesteps(self, n: int, t_max: float = 1.0, t_min: float = 0.0,
                  spacing: str = "trailing") -> Tensor:
        """The base-class grid, then warped by ``shift_time``."""
        grid = _grid(n, t_max, t_min, spacing, 1.0 / self.train_steps)
        return self.shift_time(grid).to(torch.float32)

    def _alpha_sigma_hp(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = t.clamp(0.0, 1.0)
        return 1 - t, t

    def model_time(self, t: Tensor) -> Tensor:
        """``1000·t`` (``train_steps·t``), the Wan / InfiniteTalk timestep."""
        return t * self.train_steps

    def velocity(self, x0: Tensor, eps: Tensor, t) -> Tensor:
        del t
        dt = _out_dtype(x0)
        return eps.to(dt) - x0.to(dt)

    def _split(self, pred: Tensor, x_t: Tensor, t) -> tuple[Tensor, Tensor]:
        a, s = self.coeffs(t, x_t)
        pred, x_t = pred.to(a.dtype), x_t.to(a.dtype)
        return x_t - s * pred, x_t + a * pred


def ddim_step(schedule: Schedule, x_t: Tensor, t, t_next, x0: Tensor, eps: Tensor, *,
              eta: float = 0.0, noise: Tensor | None = None) -> Tensor:
    """One DDIM update t -> t_next: ``a'·x0 + sqrt(s'² − c²)·eps + c·noise`` (c = 0 when eta = 0).

    ``c² = eta²·s'²·(1 − (a·s')² / (a'·s)²)`` is the posterior std of DDIM (Song et al. 2021,
    Eq. 16) written for any (a, s); eta = 1 is ancestral (DDPM) sampling. With eta = 0 this is
    the deterministic DDIM step, and for ``FlowSchedule`` exactly the Euler step.
    """
    a1, s1 = schedule.coeffs(t_next, x0)
    x0, eps = x0.to(a1.dtype), eps.to(a1.dtype)
    if eta == 0:
        return a1 * x0 + s1 * eps
    if noise is None:
        raise ValueError("ddim_step: eta > 0 needs `noise`")
    a0, s0 = schedule.coeffs(t, x_t)
    den = a1 * s0
    ratio = torch.where(den > 0, (a0 * s1) / den.clamp_min(1e-30), torch.ones_like(den))
    c = eta * s1 * (1 - ratio.square()).clamp_min(0).sqrt()
    return a1 * x0 + (s1.square() - c.square()).clamp_min(0).sqrt() * eps + c * noise.to(a1.dtype)


SCHEDULES = {
    "vp_eps": functools.partial(VPSchedule, prediction="eps"),
    "vp_v": functools.partial(VPSchedule, prediction="v"),
    "vp_x0": functools.partial(VPSchedule, prediction="x0"),
    "flow": FlowSchedule,
}


def make_schedule(name: str, **kw) -> Schedule:
    """Build a schedule by registry name (``SCHEDULES``) with keyword overrides."""
    if name not in SCHEDULES:
        raise ConfigError(f"unknown schedule {name!r}; expected one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](**kw)
