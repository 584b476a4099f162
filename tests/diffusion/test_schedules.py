"""Schedules: parametrisation round trips, broadcasting, grids, shift, t = 0 / t = 1 ends, diffusers parity."""

import pytest
import torch

from lipstep.diffusion.schedules import SCHEDULES, FlowSchedule, VPSchedule, ddim_step, make_schedule
from lipstep.errors import ConfigError

NAMES = sorted(SCHEDULES)
SHAPE = (3, 2, 4, 5, 6)  # [B, T, C, h, w]


def _sample(seed=0, shape=SHAPE):
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    t = torch.rand(shape[0], generator=g)
    return x0, eps, t


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_native_target_recovers_x0_and_eps(name):
    sch = make_schedule(name)
    x0, eps, t = _sample()
    t = torch.cat([t, torch.tensor([0.999, 1.0])])
    x0, eps = torch.cat([x0, x0[:2]]), torch.cat([eps, eps[:2]])
    x_t = sch.add_noise(x0, eps, t)
    pred = sch.target(x0, eps, t)
    assert pred.shape == x0.shape and x_t.shape == x0.shape
    assert torch.allclose(sch.to_x0(pred, x_t, t), x0, atol=1e-4)
    assert torch.allclose(sch.to_eps(pred, x_t, t), eps, atol=1e-4)
    assert torch.allclose(sch.from_x0_eps(x0, eps, x_t, t), pred)
    assert torch.allclose(sch.to_v(pred, x_t, t), sch.velocity(x0, eps, t), atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_coefficients_broadcast_per_sample(name):
    sch = make_schedule(name)
    x0, eps, t = _sample()
    x_t = sch.add_noise(x0, eps, t)
    for b in range(SHAPE[0]):
        a, s = sch.alpha_sigma(t[b])
        assert torch.allclose(x_t[b], a * x0[b] + s * eps[b], atol=1e-6)
    assert torch.allclose(sch.add_noise(x0, eps, 0.3), sch.add_noise(x0, eps, torch.full((3,), 0.3)))
    assert torch.equal(sch.renoise(x0, t, eps), x_t)


def test_native_targets_are_the_documented_ones():
    x0, eps, t = _sample()
    vp_eps, vp_v, flow = VPSchedule("eps"), VPSchedule("v"), FlowSchedule()
    assert torch.equal(vp_eps.target(x0, eps, t), eps)
    a, s = vp_v.alpha_sigma(t)
    a, s = a.view(-1, 1, 1, 1, 1), s.view(-1, 1, 1, 1, 1)
    assert torch.allclose(vp_v.target(x0, eps, t), a * eps - s * x0)
    assert torch.allclose(flow.target(x0, eps, t), eps - x0)
    assert torch.equal(VPSchedule("x0").target(x0, eps, t), x0)
    assert torch.allclose((a**2 + s**2), torch.ones_like(a))
    sig = t.view(-1, 1, 1, 1, 1)
    assert torch.allclose(flow.add_noise(x0, eps, t), (1 - sig) * x0 + sig * eps)


@pytest.mark.parametrize("name", NAMES)
def test_ends_of_time(name):
    sch = make_schedule(name)
    a0, s0 = sch.alpha_sigma(torch.tensor([0.0]))
    assert a0.item() == 1.0 and s0.item() == 0.0 and str(s0.item()) == "0.0"  # exactly clean, +0
    a1, s1 = sch.alpha_sigma(torch.tensor([1.0]))
    assert s1.item() > 0.99 and a1.item() < 0.07
    snr = sch.snr(torch.linspace(0, 1, 11))
    assert torch.isinf(snr[0]) and bool((snr[1:] < snr[:-1]).all())


def test_vp_table_matches_diffusers_and_sd_indices():
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    sch = VPSchedule("eps")
    k = torch.arange(1000)
    a, _ = sch.alpha_sigma((k + 1) / 1000.0)
    assert torch.allclose(a.double() ** 2, ref.alphas_cumprod.double(), atol=1e-6)
    assert torch.allclose(sch.model_time((k + 1) / 1000.0), k.float(), atol=1e-3)
    for kind, ref_kind in (("linear", "linear"), ("cosine", "squaredcos_cap_v2")):
        a, _ = VPSchedule(kind=kind, beta_start=1e-4, beta_end=0.02).alpha_sigma((k + 1) / 1000.0)
        ref_abar = diffusers.DDPMScheduler(beta_schedule=ref_kind, beta_start=1e-4, beta_end=0.02).alphas_cumprod
        assert torch.allclose(a.double() ** 2, ref_abar.double(), atol=1e-6), kind
    for spacing in ("trailing", "leading", "linspace"):
        d = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                    timestep_spacing=spacing, steps_offset=0)
        d.set_timesteps(10)
        grid = sch.timesteps(10, spacing=spacing)
        assert torch.allclose(sch.model_time(grid[:-1]), d.timesteps.float(), atol=1e-2), spacing


def test_log_abar_is_interpolated_between_table_entries():
    sch = VPSchedule("v", kind="linear", beta_start=1e-4, beta_end=0.02)
    t = torch.tensor([0.5, 0.5005, 0.501], dtype=torch.float64)  # indices 499, 499.5, 500
    la = sch.log_abar(t)
    assert torch.allclose(la[1], 0.5 * (la[0] + la[2]))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
def test_timesteps_grid_monotone_and_ends_at_t_min(name, spacing):
    sch = make_schedule(name, **({"shift": 3.0} if name == "flow" else {}))
    for n in (1, 2, 7, 50):
        g = sch.timesteps(n, spacing=spacing)
        assert g.shape == (n + 1,) and g.dtype == torch.float32
        assert bool((g[1:] < g[:-1]).all()) and g[-1].item() == 0.0 and g[0].item() <= 1.0
    g = sch.timesteps(4, t_max=0.75, t_min=0.5, spacing=spacing)
    assert g[-1].item() == pytest.approx(sch.shift_time(0.5) if name == "flow" else 0.5)
    assert g[0].item() <= (sch.shift_time(0.75) if name == "flow" else 0.75) + 1e-6
    with pytest.raises(ValueError):
        sch.timesteps(0)


def test_trailing_grid_is_uniform_and_flow_shift_formula():
    assert torch.allclose(VPSchedule().timesteps(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    flow = FlowSchedule(shift=5.0)
    t = torch.tensor([0.0, 0.2, 0.5, 1.0])
    assert torch.allclose(flow.shift_time(t), 5 * t / (1 + 4 * t))
    assert torch.allclose(flow.timesteps(4), flow.shift_time(torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])))
    assert torch.equal(FlowSchedule().timesteps(4), VPSchedule().timesteps(4))
    assert float(flow.model_time(torch.tensor(0.25))) == 250.0


def test_flow_ddim_step_is_the_euler_step():
    flow = FlowSchedule(shift=2.0)
    x0, eps, t = _sample(1)
    t_next = t * 0.6
    x_t = flow.add_noise(x0, eps, t)
    u = flow.target(x0, eps, t)
    euler = x_t + (t_next - t).view(-1, 1, 1, 1, 1) * u
    assert torch.allclose(ddim_step(flow, x_t, t, t_next, x0, eps), euler, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_ddim_step_with_true_x0_eps_lands_on_the_forward_process(name):
    sch = make_schedule(name)
    x0, eps, t = _sample(2)
    x_t = sch.add_noise(x0, eps, t)
    assert torch.allclose(ddim_step(sch, x_t, t, t * 0.3, x0, eps), sch.add_noise(x0, eps, t * 0.3), atol=1e-6)
    assert torch.equal(ddim_step(sch, x_t, t, torch.zeros_like(t), x0, eps), x0)
    with pytest.raises(ValueError):
        ddim_step(sch, x_t, t, t * 0.3, x0, eps, eta=0.5)


@pytest.mark.parametrize("name", NAMES)
def test_stochastic_ddim_step_keeps_the_marginal(name):
    """eta > 0 splits s'^2 between eps and fresh noise: x_{t'} | x0 stays N(a' x0, s'^2)."""
    sch = make_schedule(name)
    g = torch.Generator().manual_seed(4)
    eps, z = torch.randn(2, 200_000, generator=g), torch.randn(2, 200_000, generator=g)
    t, t_next = torch.tensor([0.9, 0.5]), torch.tensor([0.4, 0.2])
    x0 = torch.full_like(eps, 0.7)
    out = ddim_step(sch, sch.add_noise(x0, eps, t), t, t_next, x0, eps, eta=1.0, noise=z)
    a1, s1 = sch.alpha_sigma(t_next)
    assert torch.allclose(out.mean(1), 0.7 * a1, atol=1e-2)
    assert torch.allclose(out.std(1), s1, rtol=1e-2)
    assert not torch.allclose(out, ddim_step(sch, out, t, t_next, x0, eps))


def test_half_precision_inputs_compute_in_float32():
    sch = VPSchedule("eps")
    x0, eps, t = _sample(3)
    x_t = sch.add_noise(x0.bfloat16(), eps.bfloat16(), t)
    assert x_t.dtype == torch.float32
    assert sch.to_x0(eps.bfloat16(), x_t, t).dtype == torch.float32
    assert sch.alpha_sigma(t)[0].dtype == torch.float32
    assert sch.alpha_sigma(t.double())[0].dtype == torch.float64


def test_x0_recovery_is_guarded_where_alpha_vanishes():
    sch = VPSchedule("eps", kind="cosine")
    a, _ = sch.alpha_sigma(torch.tensor([1.0]))
    assert a.item() < 1e-3
    x_t, pred = torch.randn(1, 4), torch.randn(1, 4)
    assert torch.isfinite(sch.to_x0(pred, x_t, torch.tensor([1.0]))).all()


def test_registry_and_errors():
    assert isinstance(make_schedule("vp_v"), VPSchedule) and make_schedule("vp_v").prediction == "v"
    assert make_schedule("vp_eps").prediction == "eps"
    assert make_schedule("vp_x0").prediction == "x0"
    assert make_schedule("flow", shift=3.0).shift == 3.0
    with pytest.raises(ConfigError):
        make_schedule("edm")
    with pytest.raises(ConfigError):
        VPSchedule("sample")
    with pytest.raises(ConfigError):
        VPSchedule(kind="quadratic")


def test_min_snr_weights_the_x0_error_alike_for_eps_and_v():
    """min-SNR-γ is one weight on the x0 error, min(SNR, γ), for eps and v, each in its own units; an x0
    net gets the capped v-loss weight min(SNR + 1, γ), which keeps a floor of 1 at high noise."""
    from lipstep.distill.losses import snr_weight

    x0, eps, t = _sample(3)
    t = t.clamp(0.02, 0.98)
    per = {}
    for name in ("vp_eps", "vp_v", "vp_x0"):
        sch = make_schedule(name)
        if name == "vp_x0":
            t = torch.cat([t, torch.tensor([0.999])])
            x0, eps = torch.cat([x0, x0[:1]]), torch.cat([eps, eps[:1]])
        x_t = sch.add_noise(x0, eps, t)
        x0w = x0 + 0.1 * torch.randn_like(x0)  # a prediction consistent with x_t whose x0 is off
        a, s = sch.coeffs(t, x0)
        wrong = sch.target(x0w, (x_t - a * x0w) / s, t)
        native = sch.target(x0, eps, t)
        # native error -> x0 error: rescale by the prediction's own units, then weight
        x0_err = (sch.to_x0(wrong, x_t, t) - x0).square().flatten(1).mean(1)
        nat_err = (wrong - native).square().flatten(1).mean(1)
        per[name] = snr_weight(sch, t, 5.0) * nat_err / x0_err.clamp_min(1e-12)
    snr = make_schedule("vp_x0").snr(t)
    for name, w in per.items():
        expected = (snr + 1).clamp(max=5.0) if name == "vp_x0" else snr[:len(w)].clamp(max=5.0)
        assert torch.allclose(w.float(), expected.float(), rtol=1e-3), name
    assert per["vp_x0"][-1] > 0.99  # the floor at high noise (min(SNR, γ) would be 0.005 there)
