"""Euler sampling of the probability-flow ODE; reduces to ``ddim_step`` for every schedule.

For ``FlowSchedule`` the Euler step ``x_{t'} = x_t + (t' − t)·u`` is literally
``a_{t'}·x0 + s_{t'}·eps`` with ``a = 1 − t, s = t``. For ``VPSchedule`` Euler on the ODE in the
coordinates ``(x/a, s/a)`` (k-diffusion / EDM's sigma space) gives ``x_{t'}/a_{t'} = x0 + (s_{t'}/a_{t'})·eps``,
the same update. So this is ``sample_ddim`` with ``eta = 0``; ``generator`` is accepted for the
common sampler signature and unused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lipstep.config import check
from lipstep.diffusion.cond import Cond
from lipstep.diffusion.schedules import SPACINGS, Schedule
from lipstep.samplers.ddim import Callback, sample_ddim


@dataclass
class EulerOptions:
    """Euler's options as a model directory records them (``sampler.options``)."""

    spacing: str = "trailing"       # the schedule's timestep grid (`Schedule.timesteps`)

    def validate(self) -> None:
        check(self.spacing in SPACINGS, f"sampler.options.spacing must be one of {SPACINGS}, got '{self.spacing}'")

    def timesteps(self, schedule: Schedule, steps: int) -> Tensor:
        return schedule.timesteps(steps, spacing=self.spacing)

    def kwargs(self) -> dict:
        return {}


def sample_euler(denoiser: Callable[[Tensor, Tensor, Cond], Tensor], noise: Tensor, timesteps: Tensor,
                 cond: Cond, *, schedule: Schedule, generator: torch.Generator | None = None,
                 callback: Callback | None = None) -> Tensor:
    """Deterministic Euler steps along ``timesteps``; same contract as ``sample_ddim``."""
    del generator
    return sample_ddim(denoiser, noise, timesteps, cond, schedule=schedule, eta=0.0, callback=callback)
