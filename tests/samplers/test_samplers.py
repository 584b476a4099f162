"""Sampler contract: shapes, callback/NFE count, seeded determinism, exactness on a Gaussian toy."""

import pytest
import torch

from lipstep.diffusion.cond import Cond
from lipstep.diffusion.schedules import make_schedule
from lipstep.samplers import SAMPLERS, sample_ddim

SCHEDULE_KW = {"vp_eps": {}, "vp_v": {}, "flow": {"shift": 3.0}}
# Samplers of an ordinary diffusion model. PeRFlow's sampler reads its net as a PeRFlow student (its
# own tests: tests/samplers/test_perflow.py, including its equality with DDIM at one step per window);
# the few-step sampler re-noises with fresh noise, right for a DMD student only (tests/samplers/test_fewstep.py).
ODE_SAMPLERS = sorted(k for k in SAMPLERS if k not in ("perflow", "fewstep"))


def _cond(b):
    return Cond(reference=torch.zeros(b, 1, 1, 1), audio=torch.zeros(b, 1, 1, 1))


def gaussian_denoiser(schedule, mu, sd):
    """Closed-form optimal denoiser for x0 ~ N(mu, sd²) per dimension, as the schedule's native prediction."""
    def denoise(x_t, t, cond):
        a, s = schedule.coeffs(t, x_t)
        var = a.square() * sd**2 + s.square()  # Var[x_t]
        dev = x_t - a * mu
        x0_hat = mu + a * sd**2 / var * dev  # E[x0 | x_t]
        eps_hat = s / var * dev  # E[eps | x_t]
        return schedule.from_x0_eps(x0_hat, eps_hat, x_t, t)
    return denoise


def _standardised_noise(n, d, seed, b=4):
    """[b, n // b, d] noise whose empirical mean / std per last dim are exactly 0 / 1."""
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return ((z - z.mean(0)) / z.std(0)).float().reshape(b, n // b, d)


def _moments(x):
    """Per-dimension mean and std over all samples of [b, n, d]."""
    x = x.reshape(-1, x.shape[-1])
    return x.mean(0), x.std(0)


def _prior(schedule, mu, sd, z):
    """x at t = 1 drawn from the exact marginal N(a mu, a² sd² + s²) (VP's a_1 is not 0)."""
    a, s = schedule.coeffs(torch.ones(z.shape[0]), z)
    return a * mu + (a.square() * sd**2 + s.square()).sqrt() * z


MU, SD = torch.tensor([1.5, -0.5, 0.0]), torch.tensor([0.5, 2.0, 1.0])


@pytest.mark.parametrize("sampler", ODE_SAMPLERS)
@pytest.mark.parametrize("name", sorted(SCHEDULE_KW))
def test_gaussian_toy_many_steps_reaches_the_data_distribution(sampler, name):
    """The ODE map is affine per dimension, so with standardised noise the output moments are exact up
    to discretisation error, which is first order: ~3.5% std error at 100 steps, ~0.35% at 1000."""
    sch = make_schedule(name, **SCHEDULE_KW[name])
    z = _standardised_noise(4096, 3, seed=0)
    errors = []
    for n in (100, 1000):
        x = SAMPLERS[sampler](gaussian_denoiser(sch, MU, SD), _prior(sch, MU, SD, z), sch.timesteps(n),
                              _cond(z.shape[0]), schedule=sch)
        mean, std = _moments(x)
        assert torch.allclose(mean, MU, atol=1e-3)
        errors.append((std / SD - 1).abs().max().item())
    assert errors[1] < 5e-3 and errors[0] / errors[1] > 7  # converges, at first order
@pytest.mark.parametrize("sampler", ODE_SAMPLERS)
@pytest.mark.parametrize("name", sorted(SCHEDULE_KW))
def test_one_step_from_t1_returns_the_posterior_mean(sampler, name):
    sch = make_schedule(name, **SCHEDULE_KW[name])
    x1 = _prior(sch, MU, SD, _standardised_noise(64, 3, seed=1))
    seen = []
    x = SAMPLERS[sampler](gaussian_denoiser(sch, MU, SD), x1, sch.timesteps(1), _cond(4), schedule=sch,
                          callback=lambda i, t, x_t, x0: seen.append((i, t, x0)))
    a, s = sch.coeffs(torch.ones(4), x1)
    posterior_mean = MU + a * SD**2 / (a.square() * SD**2 + s.square()) * (x1 - a * MU)
    assert torch.allclose(x, posterior_mean, atol=1e-5)
    assert len(seen) == 1 and torch.equal(seen[0][2], x)  # the returned sample is x0_hat itself
    assert torch.equal(seen[0][1], torch.ones(4))


@pytest.mark.parametrize("sampler", ODE_SAMPLERS)
def test_shapes_callback_count_and_partial_solve(sampler):
    sch = make_schedule("vp_v")
    shape = (2, 3, 4, 5, 5)  # [B, T, C, h, w]
    den = gaussian_denoiser(sch, 0.3, 0.7)
    steps = []
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    out = SAMPLERS[sampler](den, noise, sch.timesteps(6), _cond(2), schedule=sch,
                            callback=lambda i, t, x_t, x0: steps.append((i, t.shape, x_t.shape, x0.shape)))
    assert out.shape == shape and out.dtype == torch.float32
    assert [s[0] for s in steps] == list(range(6))
    assert all(s[1] == (2,) and s[2] == shape and s[3] == shape for s in steps)
    # A window solve (t = 0.5 -> 0.25) stops at a noisy latent, not at x0.
    grid = sch.timesteps(4, t_max=0.5, t_min=0.25)
    x_mid = SAMPLERS[sampler](den, noise, grid, _cond(2), schedule=sch)
    chained = SAMPLERS[sampler](den, noise, grid[:3], _cond(2), schedule=sch)
    chained = SAMPLERS[sampler](den, chained, grid[2:], _cond(2), schedule=sch)
    assert torch.allclose(x_mid, chained)


@pytest.mark.parametrize("name", sorted(SCHEDULE_KW))
def test_stochastic_ddim_is_deterministic_given_the_generator(name):
    sch = make_schedule(name, **SCHEDULE_KW[name])
    den = gaussian_denoiser(sch, MU, SD)
    noise, ts = torch.randn(8, 3, generator=torch.Generator().manual_seed(5)), sch.timesteps(10)
    run = lambda seed: sample_ddim(den, noise, ts, _cond(8), schedule=sch, eta=1.0,
                                   generator=torch.Generator().manual_seed(seed))
    before = torch.get_rng_state()
    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is never touched
    assert not torch.allclose(run(0), sample_ddim(den, noise, ts, _cond(8), schedule=sch))
    with pytest.raises(ValueError):
        sample_ddim(den, noise, ts, _cond(8), schedule=sch, eta=0.5)


def test_stochastic_ddim_samples_the_gaussian_toy():
    sch = make_schedule("vp_eps")
    z = _standardised_noise(8192, 3, seed=2)
    x = sample_ddim(gaussian_denoiser(sch, MU, SD), _prior(sch, MU, SD, z), sch.timesteps(500), _cond(4),
                    schedule=sch, eta=1.0, generator=torch.Generator().manual_seed(0))
    mean, std = _moments(x)  # Monte-Carlo error of 8192 samples: ~0.011 sd on the mean, ~0.8% on the std
    assert torch.allclose(mean, MU, atol=0.04 * SD.max().item())
    assert torch.allclose(std, SD, rtol=0.03)


def test_euler_equals_deterministic_ddim_and_flow_euler_formula():
    sch = make_schedule("flow", shift=2.0)
    den = gaussian_denoiser(sch, MU, SD)
    noise, ts = torch.randn(16, 3, generator=torch.Generator().manual_seed(3)), sch.timesteps(5)
    out = SAMPLERS["euler"](den, noise, ts, _cond(16), schedule=sch)
    assert torch.equal(out, sample_ddim(den, noise, ts, _cond(16), schedule=sch))
    x = noise
    for i in range(5):
        t = ts[i].expand(16)
        x = x + (ts[i + 1] - ts[i]) * den(x, t, None)  # explicit Euler on dx/dt = u
    assert torch.allclose(out, x, atol=1e-5)


class _BlinkRecorder(torch.nn.Module):
    """A stand-in net that records the eyelid closure each call sees and predicts zeros."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, x_t, t, cond):
        self.seen.append(None if cond.blink is None else cond.blink.clone())
        return torch.zeros_like(x_t)


def test_chunk_sampler_drives_blinks_by_frame_index():
    from lipstep.data.blinks import BlinkSchedule
    from lipstep.diffusion.denoiser import Denoiser
    from lipstep.samplers.chunks import ChunkLayout, ChunkSampler
    from lipstep.samplers.registry import SamplerInfo

    info = SamplerInfo(name="ddim", steps=1, cfg_audio=1.0, cfg_ref=1.0)
    audio = torch.zeros(4, 2, 3)
    for rate in (0.0, 3.0):
        net = _BlinkRecorder()
        core = ChunkSampler(Denoiser(net, make_schedule("vp_x0")), torch.zeros(1, 2, 4, 4), sampler=info,
                            layout=ChunkLayout(frames=4, motion_frames=1, blinks_per_second=rate), seed=5)
        for _ in range(60):
            core.trial(audio)                      # a preview sees the blinks its chunk will see
            core.step(audio)
        if rate == 0:
            assert all(b is None for b in net.seen)    # a model without a blink input gets none
            continue
        want = torch.from_numpy(BlinkSchedule(rate, 25.0, seed=5).frames(0, 240))
        got = torch.cat([b[0] for b in net.seen[1::2]])
        assert torch.equal(got, want) and got.max() == 1.0
        assert all(torch.equal(a, b) for a, b in zip(net.seen[0::2], net.seen[1::2], strict=True))


class _MotionRecorder(_BlinkRecorder):
    """Records the motion context of each call too, and predicts a constant latent."""

    def forward(self, x_t, t, cond):
        self.seen.append(cond.motion.clone())
        return torch.full_like(x_t, 0.5)


def test_an_eye_net_draws_the_scheduled_blinks_after_sampling_and_never_feeds_back():
    from lipstep.data.blinks import BlinkSchedule
    from lipstep.diffusion.denoiser import Denoiser
    from lipstep.nets.eyes import EyeConfig, EyeNet
    from lipstep.samplers.chunks import ChunkLayout, ChunkSampler
    from lipstep.samplers.registry import SamplerInfo

    eyes = EyeNet(EyeConfig(latent_channels=2, latent_size=4, hidden=4, dilations=(1,)))
    with torch.no_grad():
        eyes.out.bias.fill_(1.0)  # a net that draws: +closure everywhere
    info = SamplerInfo(name="ddim", steps=1, cfg_audio=1.0, cfg_ref=1.0)
    layout = ChunkLayout(frames=4, motion_frames=2, blinks_per_second=3.0)
    audio = torch.zeros(4, 2, 3)
    plain_net, eyed_net = _MotionRecorder(), _MotionRecorder()
    plain = ChunkSampler(Denoiser(plain_net, make_schedule("vp_x0")), torch.zeros(1, 2, 4, 4), sampler=info,
                         layout=layout, seed=5)
    eyed = ChunkSampler(Denoiser(eyed_net, make_schedule("vp_x0")), torch.zeros(1, 2, 4, 4), sampler=info,
                        layout=layout, seed=5, eyes=eyes)
    a = torch.cat([plain.step(audio) for _ in range(30)])
    b = torch.cat([eyed.step(audio) for _ in range(30)])
    closure = torch.from_numpy(BlinkSchedule(3.0, 25.0, seed=5).frames(0, 120))
    assert closure.max() == 1.0 and (closure == 0).any()
    assert torch.allclose(b - a, closure[:, None, None, None].expand_as(a))   # exactly the told frames, that far
    assert all(torch.equal(m, n) for m, n in zip(plain_net.seen, eyed_net.seen, strict=True))  # motion: pre-eyes
