"""PeRFlow sampling (piecewise rectified flow; Yan et al. 2024; algorithms.md §2.9).

The time axis ``t ∈ [0, 1]`` (1 = noise) is cut into ``K`` equal windows ``[start_k, end_k]``,
``start_k = 1 − k/K``, ``end_k = 1 − (k + 1)/K``. Inside a window a PeRFlow student's trajectory is a
straight line from ``z_start`` to ``z_end``, so a few Euler steps per window follow it exactly.

Two parametrisations of the student's output (the ``target`` it was trained on):

- ``"ddim_eps"`` (FADA; keeps the teacher's parametrisation): the network's native prediction is read
  as a noise estimate ``ê = schedule.to_eps(pred, z_c, t_c)``, and the window end it implies is
  ``ẑ_end = λ_c·z_c + η_c·ê`` with ::

      λ = sqrt(abar_end / abar_start),  η = sqrt(1 − abar_end) − sqrt(abar_end / abar_start · (1 − abar_start))
      D = λ·(t_c − start) + (end − t_c)
      λ_c = λ·(end − start) / D,        η_c = η·(end − t_c) / D

  (at ``t_c = start`` this is one DDIM step start → end: ``ẑ_end = λ·z_start + η·ê``);
- ``"velocity"``: the native output is the straight-line velocity itself,
  ``ẑ_end = z_c + (end − t_c)·pred``.

Either way the update is the Euler step ``z ← z_c + (t_next − t_c)·(ẑ_end − z_c)/(end − t_c)``.

``perflow_timesteps(n, K)`` gives the grid: ``n ≥ K`` steps, ``n // K`` per window and the ``n % K``
extra steps to the earliest (noisiest) windows (6 over 4 = 2, 2, 1, 1), equally spaced inside each
window. ``sample_perflow`` finds each step's window from its time, so any grid whose steps never cross
a window boundary works (a 1-window grid with Euler steps is a plain rectified-flow student).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lipstep.config import check
from lipstep.diffusion.cond import Cond
from lipstep.diffusion.schedules import Schedule, append_dims
from lipstep.errors import LipstepError
from lipstep.samplers.ddim import Callback

TARGETS = ("ddim_eps", "velocity")


@dataclass
class PerflowOptions:
    """The PeRFlow sampler's options as a model directory records them (``sampler.options``)."""

    windows: int = 4                # K time windows; a student needs at least one step per window
    target: str = "ddim_eps"        # how the network output is read (ddim_eps | velocity)

    def validate(self) -> None:
        check(self.windows >= 1, f"sampler.options.windows must be >= 1, got {self.windows}")
        check(self.target in TARGETS, f"sampler.options.target must be one of {TARGETS}, got '{self.target}'")

    def timesteps(self, schedule: Schedule, steps: int) -> Tensor:
        if steps < self.windows:
            raise LipstepError(f"this PeRFlow student needs at least {self.windows} steps (one per window), got {steps}")
        return perflow_timesteps(steps, self.windows)

    def kwargs(self) -> dict:
        return {"windows": self.windows, "target": self.target}


def window_bounds(k, windows: int) -> tuple[Tensor, Tensor]:
    """(start, end) of window index ``k`` (tensor or int) out of ``windows``; start > end."""
    k = torch.as_tensor(k, dtype=torch.float64)
    return 1.0 - k / windows, 1.0 - (k + 1) / windows


def window_index(t: Tensor, windows: int) -> Tensor:
    """Index of the window holding ``t`` [B] (start ≥ t > end; t = 0 belongs to the last window)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    k = torch.floor((1.0 - t) * windows + 1e-6)  # t = start_k exactly -> k (float32 grids: tolerance)
    return k.clamp(0, windows - 1).long()


def steps_per_window(n: int, windows: int) -> list[int]:
    """``n`` steps over ``windows`` windows: ``n // K`` each, extra steps to the earliest windows."""
    if windows < 1 or n < windows:
        raise ValueError(f"PeRFlow needs at least one step per window: steps={n}, windows={windows}")
    base, extra = divmod(n, windows)
    return [base + (1 if k < extra else 0) for k in range(windows)]


def perflow_timesteps(n: int, windows: int) -> Tensor:
    """Float32 grid [n + 1] from 1 to 0: equal steps inside each window (``steps_per_window``)."""
    grid = []
    for k, m in enumerate(steps_per_window(n, windows)):
        start, end = (float(v) for v in window_bounds(k, windows))
        grid += [start - (start - end) * j / m for j in range(m)]
    return torch.tensor(grid + [0.0], dtype=torch.float32)


def ddim_eps_coeffs(schedule: Schedule, start, end, like: Tensor) -> tuple[Tensor, Tensor]:
    """(λ, η) of the "ddim_eps" parametrisation for window(s) ``start → end``, broadcast like ``like``."""
    a0, s0 = schedule.coeffs(start, like)
    a1, s1 = schedule.coeffs(end, like)
    lam = a1 / a0
    return lam, s1 - lam * s0


def window_end_estimate(schedule: Schedule, pred: Tensor, z: Tensor, t: Tensor, start: Tensor, end: Tensor,
                        target: str) -> Tensor:
    """The window end ``ẑ_end`` a student prediction at ``(z, t)`` implies (module docstring)."""
    dt = torch.promote_types(z.dtype, torch.float32)
    z = z.to(dt)
    t_, s_, e_ = (append_dims(torch.as_tensor(v, device=z.device, dtype=torch.float64), z.ndim).to(dt)
                  for v in (t, start, end))
    if target == "velocity":
        return z + (e_ - t_) * pred.to(dt)
    if target != "ddim_eps":
        raise ValueError(f"PeRFlow target must be one of {TARGETS}, got {target!r}")
    lam, eta = ddim_eps_coeffs(schedule, start, end, z)
    den = lam * (t_ - s_) + (e_ - t_)
    eps = schedule.to_eps(pred, z, t)
    return (lam * (e_ - s_) / den) * z + (eta * (e_ - t_) / den) * eps


def sample_perflow(denoiser: Callable[[Tensor, Tensor, Cond], Tensor], noise: Tensor, timesteps: Tensor,
                   cond: Cond, *, schedule: Schedule, windows: int = 4, target: str = "ddim_eps",
                   generator: torch.Generator | None = None, callback: Callback | None = None) -> Tensor:
    """Integrate a PeRFlow student from ``timesteps[0]`` to ``timesteps[-1]`` (same contract as DDIM).

    ``callback(i, t, z, ẑ_end)`` runs once per network evaluation. ``generator`` is unused (the
    sampler is deterministic given the noise) and accepted for the common signature.
    """
    del generator
    if target not in TARGETS:
        raise ValueError(f"PeRFlow target must be one of {TARGETS}, got {target!r}")
    z = noise.to(torch.promote_types(noise.dtype, torch.float32))
    ts = timesteps.to(device=z.device, dtype=torch.float32)
    b = z.shape[0]
    for i in range(len(ts) - 1):
        t, t_next = ts[i].expand(b), ts[i + 1].expand(b)
        k = window_index(t.cpu(), windows)
        start, end = (v.to(z.device) for v in window_bounds(k, windows))
        if bool((t_next.double().cpu() < end.cpu() - 1e-6).any()):
            raise ValueError(f"PeRFlow step {float(ts[i]):.4f} -> {float(ts[i + 1]):.4f} crosses the window end "
                             f"{float(end[0]):.4f}; use perflow_timesteps(n, windows)")
        pred = denoiser(z, t, cond)
        z_end = window_end_estimate(schedule, pred, z, t, start, end, target)
        if callback is not None:
            callback(i, t, z, z_end)
        frac = append_dims(((t_next.double() - t.double()) / (end - t.double().to(end.device))), z.ndim).to(z.dtype)
        z = z + frac * (z_end - z)
    return z


__all__ = ["TARGETS", "PerflowOptions", "ddim_eps_coeffs", "perflow_timesteps", "sample_perflow", "steps_per_window",
           "window_bounds", "window_end_estimate", "window_index"]
