"""Few-step sampling with re-noising: predict x0, diffuse it afresh to the next time (DMD2; algorithms.md §2.2, §3.5).

The sampler of a few-step student (a DMD generator), per step i of the grid ``timesteps`` [n + 1]::

    x0_i    = schedule.to_x0(denoiser(x_i, t_i, cond))         one network evaluation
    x_{i+1} = a_{t_{i+1}}·x0_i + s_{t_{i+1}}·z_i,   z_i ~ N(0, I) from ``generator``

Each step forgets the noise of the one before (DDIM instead carries its noise estimate forward), so
every step's x0 must itself be a sample of the data distribution: what distribution matching trains.
When the grid ends at t = 0 the last step returns x0 itself (no noise is drawn for it).

The grid is the schedule's `Schedule.timesteps` (``trailing`` by default: 1, 0.75, 0.5, 0.25 for four
steps, DMD2's [999, 749, 499, 249]; a flow schedule warps it by its shift, as FastVideo warps its
generator list). Trailing grids nest: the 2-step grid is every other time of the 4-step one and the
1-step grid its first, as progressive 4 → 2 → 1 distillation needs.

Running the sampler on the first ``k + 1`` times of a grid returns the state ``x_k`` at ``t_k`` (the
last step re-noises to ``t_k`` instead of returning x0): the DMD recipe's backward simulation is exactly
that call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lipstep.config import check
from lipstep.diffusion.cond import Cond
from lipstep.diffusion.schedules import SPACINGS, Schedule
from lipstep.samplers.ddim import Callback


@dataclass
class FewStepOptions:
    """The re-noising few-step sampler's options as a model directory records them (``sampler.options``)."""

    spacing: str = "trailing"       # the schedule's timestep grid (`Schedule.timesteps`); the student's training grid

    def validate(self) -> None:
        check(self.spacing in SPACINGS, f"sampler.options.spacing must be one of {SPACINGS}, got '{self.spacing}'")

    def timesteps(self, schedule: Schedule, steps: int) -> Tensor:
        return schedule.timesteps(steps, spacing=self.spacing)

    def kwargs(self) -> dict:
        return {}


def sample_fewstep(denoiser: Callable[[Tensor, Tensor, Cond], Tensor], noise: Tensor, timesteps: Tensor,
                   cond: Cond, *, schedule: Schedule, generator: torch.Generator | None = None,
                   callback: Callback | None = None) -> Tensor:
    """Run the grid ``timesteps`` from ``noise`` (x at ``timesteps[0]``); returns x at ``timesteps[-1]``.

    Same contract as `lipstep.samplers.ddim.sample_ddim`; the fresh noise of every re-noising comes from
    ``generator`` (required when a step ends above t = 0). ``callback(i, t, x_t, x0_hat)`` runs once per
    network evaluation. Runs under the caller's grad mode.
    """
    x = noise.to(torch.promote_types(noise.dtype, torch.float32))
    ts = timesteps.to(device=x.device, dtype=torch.float32)
    b = x.shape[0]
    for i in range(len(ts) - 1):
        t, t_next = ts[i].expand(b), ts[i + 1].expand(b)
        x0 = schedule.to_x0(denoiser(x, t, cond), x, t)
        if callback is not None:
            callback(i, t, x, x0)
        if float(ts[i + 1]) == 0.0:
            x = x0.to(x.dtype)
            continue
        if generator is None:
            raise ValueError("sample_fewstep: re-noising needs a torch.Generator (no global RNG)")
        z = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
        x = schedule.renoise(x0, t_next, z).to(x.dtype)
    return x


__all__ = ["FewStepOptions", "sample_fewstep"]
