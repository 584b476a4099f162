"""lipstep.samplers: stateless samplers ``(denoiser, noise, timesteps, cond, *, schedule, ...) -> x``.

``denoiser(x_t, t, cond)`` returns the native prediction of ``schedule``; ``timesteps`` is a grid
from ``Schedule.timesteps``. No sampler keeps step state or touches torch's global RNG.
"""

from lipstep.samplers.ddim import sample_ddim
from lipstep.samplers.euler import sample_euler
from lipstep.samplers.perflow import sample_perflow

SAMPLERS = {"ddim": sample_ddim, "euler": sample_euler, "perflow": sample_perflow}

__all__ = ["SAMPLERS", "sample_ddim", "sample_euler", "sample_perflow"]
