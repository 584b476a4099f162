"""The denoiser contract: ``denoiser(x_t, t, cond) -> native prediction``, in schedule time.

Every call of a diffusion network in lipstep goes through `Denoiser` (design.md §3): training losses,
teacher solves, samplers, the pipeline and validation. It pairs a network with the schedule it was
trained on, so that callers speak the schedule's time convention (t ∈ [0, 1], 1 = pure noise) and
never write ``net(x, schedule.model_time(t), cond)`` themselves, and it exposes what the prediction
means: ``prediction`` (eps | v | x0 | flow_v) and the clean sample / noise / velocity implied by it,
through the schedule (``x0``, ``eps``, ``v``).

It is also the precision boundary: whatever runs inside the network (bf16 under autocast on GPUs),
the prediction comes back as float32 (float64 stays float64).

The network's auxiliary heads are methods of the network itself (e.g. ``AvatarDiT.read_mouth_state``);
``forward`` always returns the prediction.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from lipstep.diffusion.cond import Cond
from lipstep.diffusion.schedules import Schedule

DenoiserFn = Callable[[Tensor, Tensor, Cond], Tensor]  # what samplers and guidance take: (x_t, t, cond) -> pred


class Denoiser:
    """A network + its schedule, called as ``denoiser(x_t, t [B], cond)`` with t in schedule time."""

    def __init__(self, net: nn.Module, schedule: Schedule):
        self.net, self.schedule = net, schedule

    @property
    def prediction(self) -> str:
        """The native prediction type of the schedule (eps, v, x0 or flow_v)."""
        return self.schedule.prediction

    def __call__(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        pred = self.net(x_t, self.schedule.model_time(t), cond)
        return pred.to(torch.promote_types(pred.dtype, torch.float32))

    def x0(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """The clean sample the prediction implies."""
        return self.schedule.to_x0(self(x_t, t, cond), x_t, t)

    def eps(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """The noise the prediction implies."""
        return self.schedule.to_eps(self(x_t, t, cond), x_t, t)

    def v(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """The schedule's velocity (VP v or flow velocity) the prediction implies."""
        return self.schedule.to_v(self(x_t, t, cond), x_t, t)


__all__ = ["Denoiser", "DenoiserFn"]
