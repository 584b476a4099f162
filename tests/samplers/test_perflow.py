"""PeRFlow sampler: grids, window lookup, and exactness of the in-window update."""

import pytest
import torch

from lipstep.diffusion.cond import Cond
from lipstep.diffusion.schedules import make_schedule
from lipstep.samplers.perflow import (
    ddim_eps_coeffs,
    perflow_timesteps,
    sample_perflow,
    steps_per_window,
    window_bounds,
    window_end_estimate,
    window_index,
)


def _cond(b=2):
    return Cond(reference=torch.zeros(b, 4, 2, 2), audio=torch.zeros(b, 3, 1, 1))


def _native(sch, eps, z, t):
    """The native prediction that `schedule.to_eps` reads back as `eps` at (z, t)."""
    a, s = sch.coeffs(t, z)
    return sch.target((z - s * eps) / a, eps, t)


def test_steps_per_window_gives_extra_steps_to_the_earliest_windows():
    assert steps_per_window(6, 4) == [2, 2, 1, 1]
    assert steps_per_window(4, 4) == [1, 1, 1, 1]
    assert steps_per_window(9, 4) == [3, 2, 2, 2]
    with pytest.raises(ValueError, match="at least one step per window"):
        steps_per_window(3, 4)


def test_perflow_grid_hits_every_window_boundary():
    grid = perflow_timesteps(6, 4).tolist()
    assert grid == pytest.approx([1.0, 0.875, 0.75, 0.625, 0.5, 0.25, 0.0])
    assert set([0.75, 0.5, 0.25]) <= set(round(v, 6) for v in grid)


def test_window_index_puts_boundaries_at_the_start_of_the_later_window():
    t = torch.tensor([1.0, 0.9, 0.75, 0.6, 0.5, 0.25, 0.1, 0.0])
    assert window_index(t, 4).tolist() == [0, 0, 1, 1, 2, 3, 3, 3]
    start, end = window_bounds(window_index(t, 4), 4)
    inside = (start >= t.double()) & ((t.double() > end) | (t == 0))
    assert bool(inside.all())


@pytest.mark.parametrize("schedule", ["vp_eps", "vp_v"])
def test_one_step_with_the_perflow_eps_target_lands_on_the_window_end(schedule):
    sch = make_schedule(schedule)
    g = torch.Generator().manual_seed(0)
    z_start = torch.randn(2, 3, 4, 2, 2, generator=g, dtype=torch.float64)
    z_end = torch.randn(2, 3, 4, 2, 2, generator=g, dtype=torch.float64)
    start = torch.tensor([1.0, 0.5], dtype=torch.float64)
    end = torch.tensor([0.75, 0.25], dtype=torch.float64)
    lam, eta = ddim_eps_coeffs(sch, start, end, z_start)
    eps_star = (z_end - lam * z_start) / eta
    # the net returns the native prediction whose eps reading at (z, t) is eps_star
    est = window_end_estimate(sch, _native(sch, eps_star, z_start, start), z_start, start, start, end, "ddim_eps")
    assert torch.allclose(est, z_end, atol=1e-8)
    # ... and from any point on the straight line too
    t = start - 0.4 * (start - end)
    z_t = z_start + 0.4 * (z_end - z_start)
    pred_t = _native(sch, eps_star, z_t, t)
    assert torch.allclose(window_end_estimate(sch, pred_t, z_t, t, start, end, "ddim_eps"), z_end, atol=1e-8)


def test_sampler_with_an_oracle_student_reproduces_the_piecewise_path():
    """A student returning each window's exact eps* follows the chain of window ends."""
    sch = make_schedule("vp_eps")
    g = torch.Generator().manual_seed(1)
    ends = {k: torch.randn(1, 3, 4, 2, 2, generator=g) for k in range(4)}  # z at the end of each window
    noise = torch.randn(1, 3, 4, 2, 2, generator=g)
    starts = {0: noise, 1: ends[0], 2: ends[1], 3: ends[2]}
    calls = []

    def oracle(z, t, cond):
        k = int(window_index(t, 4)[0])
        start, end = window_bounds(k, 4)
        lam, eta = ddim_eps_coeffs(sch, start.reshape(1), end.reshape(1), z)
        calls.append(k)
        return (ends[k] - lam * starts[k]) / eta

    out = sample_perflow(oracle, noise, perflow_timesteps(6, 4), _cond(1), schedule=sch, windows=4)
    assert calls == [0, 0, 1, 1, 2, 3]
    assert torch.allclose(out, ends[3], atol=1e-4)


def test_velocity_target_is_plain_euler_inside_a_window():
    sch = make_schedule("flow")
    z = torch.randn(1, 2, 4, 2, 2)
    v = torch.randn(1, 2, 4, 2, 2)
    out = sample_perflow(lambda x, t, c: v, z, perflow_timesteps(1, 1), _cond(1), schedule=sch, windows=1,
                         target="velocity")
    assert torch.allclose(out, z - v, atol=1e-6)


def test_sampler_rejects_steps_that_cross_a_window_end():
    sch = make_schedule("vp_eps")
    z = torch.zeros(1, 2, 4, 2, 2)
    with pytest.raises(ValueError, match="crosses the window end"):
        sample_perflow(lambda x, t, c: x, z, torch.tensor([1.0, 0.5, 0.0]), _cond(1), schedule=sch, windows=4)


@pytest.mark.parametrize("schedule", ["vp_eps", "vp_v"])
def test_one_step_per_window_is_ddim(schedule):
    """With K = n windows every step starts a window, and the PeRFlow update is exactly the DDIM step."""
    from lipstep.samplers import sample_ddim

    sch = make_schedule(schedule)
    g = torch.Generator().manual_seed(2)
    w = torch.randn(1, 3, 4, 2, 2, generator=g)

    def net(x, t, cond):  # any smooth denoiser
        return torch.tanh(x * w) * (1 + t.reshape(-1, 1, 1, 1, 1))

    noise = torch.randn(1, 3, 4, 2, 2, generator=g)
    a = sample_perflow(net, noise, perflow_timesteps(5, 5), _cond(1), schedule=sch, windows=5)
    b = sample_ddim(net, noise, sch.timesteps(5, spacing="trailing"), _cond(1), schedule=sch)
    assert torch.allclose(a, b, atol=1e-5)
