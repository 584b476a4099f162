"""DDIM sampling (Song et al. 2021) for any schedule: x0/eps from the native prediction, then ``ddim_step``.

Per step i (grid ``timesteps`` [n + 1], from noisy to clean)::

    pred   = denoiser(x, t_i, cond)                     one network evaluation
    x0, eps = schedule.to_x0(pred), schedule.to_eps(pred)
    x      = a_{i+1}·x0 + sqrt(s_{i+1}² − c²)·eps + c·z   (c = 0 when eta = 0; z from `generator`)

With ``timesteps[-1] = 0`` (exactly clean) the last step returns x0 itself. Stateless: everything
the loop needs is in its arguments. Runs under the caller's grad mode (wrap inference in
``torch.no_grad()``; few-step distillation may backpropagate through it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lipstep.config import check
from lipstep.diffusion.cond import Cond
from lipstep.diffusion.schedules import SPACINGS, Schedule, ddim_step

Callback = Callable[[int, Tensor, Tensor, Tensor], None]


@dataclass
class DDIMOptions:
    """DDIM's options as a model directory records them (``sampler.options``)."""

    spacing: str = "trailing"       # the schedule's timestep grid (`Schedule.timesteps`)
    eta: float = 0.0                # DDIM noise (0 = deterministic given the initial noise)

    def validate(self) -> None:
        check(self.spacing in SPACINGS, f"sampler.options.spacing must be one of {SPACINGS}, got '{self.spacing}'")
        check(self.eta >= 0, f"sampler.options.eta must be >= 0, got {self.eta}")

    def timesteps(self, schedule: Schedule, steps: int) -> Tensor:
        return schedule.timesteps(steps, spacing=self.spacing)

    def kwargs(self) -> dict:
        return {"eta": self.eta}


def _step_noise(x: Tensor, generator: torch.Generator) -> Tensor:
    """Standard normal like ``x``, drawn on the generator's device and moved to ``x``'s."""
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)


def sample_ddim(denoiser: Callable[[Tensor, Tensor, Cond], Tensor], noise: Tensor, timesteps: Tensor,
                cond: Cond, *, schedule: Schedule, generator: torch.Generator | None = None,
                eta: float = 0.0, callback: Callback | None = None) -> Tensor:
    """Integrate from ``timesteps[0]`` (``noise`` is x there) to ``timesteps[-1]``; returns x at the end.

    ``denoiser(x_t, t [B], cond)`` returns ``schedule``'s native prediction. ``eta > 0`` adds DDIM
    noise drawn from ``generator`` (required then: no global RNG). ``callback(i, t, x_t, x0_hat)``
    runs once per network evaluation (``len(timesteps) - 1`` times).
    """
    if eta > 0 and generator is None:
        raise ValueError("sample_ddim: eta > 0 needs a torch.Generator (no global RNG)")
    x = noise.to(torch.promote_types(noise.dtype, torch.float32))
    ts = timesteps.to(device=x.device, dtype=torch.float32)
    b = x.shape[0]
    for i in range(len(ts) - 1):
        t, t_next = ts[i].expand(b), ts[i + 1].expand(b)
        pred = denoiser(x, t, cond)
        x0, eps = schedule.to_x0(pred, x, t), schedule.to_eps(pred, x, t)
        if callback is not None:
            callback(i, t, x, x0)
        z = _step_noise(x, generator) if eta > 0 else None
        x = ddim_step(schedule, x, t, t_next, x0, eps, eta=eta, noise=z)
    return x
