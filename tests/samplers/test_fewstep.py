"""The re-noising few-step sampler (DMD students): x0 then fresh noise, chaining, the exact last step."""

import pytest
import torch

from lipstep.diffusion.cond import Cond
from lipstep.diffusion.schedules import make_schedule
from lipstep.samplers import FewStepOptions, sample_fewstep

COND = Cond(reference=torch.zeros(2, 1, 1, 1), audio=torch.zeros(2, 1, 1, 1))


def _x0_net(schedule, x0):
    """A denoiser that always predicts ``x0`` (as the schedule's native prediction)."""
    def denoise(x_t, t, cond):
        a, s = schedule.coeffs(t, x_t)
        return schedule.from_x0_eps(x0, (x_t - a * x0) / s, x_t, t)
    return denoise


@pytest.mark.parametrize("name", ["vp_x0", "vp_eps", "flow"])
def test_each_step_renoises_the_prediction_with_fresh_noise_and_the_last_returns_it(name):
    sch = make_schedule(name)
    x0 = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    grid = FewStepOptions().timesteps(sch, 4)
    assert torch.allclose(grid, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))  # DMD2's [999, 749, 499, 249]
    seen = []
    noise = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    out = sample_fewstep(_x0_net(sch, x0), noise, grid, COND, schedule=sch, generator=torch.Generator().manual_seed(2),
                         callback=lambda i, t, x, x0_hat: seen.append((x.clone(), x0_hat.clone())))
    assert torch.allclose(out, x0, atol=1e-4)          # t = 0: the prediction itself, no noise
    gen = torch.Generator().manual_seed(2)
    for i in range(1, 4):                               # x_i = a_i·x0 + s_i·z_i, z_i drawn in order
        z = torch.randn(2, 3, generator=gen)
        assert torch.allclose(seen[i][0], sch.renoise(x0, grid[i], z), atol=1e-4)


def test_a_partial_grid_stops_at_its_state_and_chaining_equals_one_run():
    """Running the first k + 1 times returns x_k (backward simulation); continuing from it with the same
    generator gives the full run's output."""
    sch = make_schedule("vp_x0")
    net = lambda x, t, cond: 0.5 * x + 0.1 * t.reshape(-1, 1)  # a toy x0 predictor
    grid = sch.timesteps(4)
    noise = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    full = sample_fewstep(net, noise, grid, COND, schedule=sch, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    x_2 = sample_fewstep(net, noise, grid[:3], COND, schedule=sch, generator=gen)
    chained = sample_fewstep(net, x_2, grid[2:], COND, schedule=sch, generator=gen)
    assert torch.equal(full, chained)
    assert torch.equal(sample_fewstep(net, noise, grid[:1], COND, schedule=sch), noise)  # k = 0: the noise
    with pytest.raises(ValueError, match="needs a torch.Generator"):
        sample_fewstep(net, noise, grid, COND, schedule=sch)
