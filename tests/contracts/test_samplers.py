"""Contracts every sampler inherits (issue 20): it owns its options and time grid, the grid is
monotone in time, the sampler is deterministic under a seed and calls its denoiser once per step, and
the chunked generation runs it without knowing its name. A new sampler joins by being registered in
``lipstep.samplers.SAMPLERS``."""

import pytest
import torch

from lipstep.diffusion.cond import Cond
from lipstep.diffusion.denoiser import Denoiser
from lipstep.diffusion.schedules import make_schedule
from lipstep.errors import ConfigError
from lipstep.samplers import SAMPLERS, SamplerInfo, legacy_sampler, sample_chunks
from lipstep.samplers.chunks import ChunkLayout

NAMES = sorted(SAMPLERS)


class Toy(torch.nn.Module):
    """A denoiser net with the AvatarDiT call signature (x [B, T, C, h, w], model time, cond)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.3))
        self.calls = 0

    def forward(self, x, t, cond):
        self.calls += 1
        return self.w * x + 0.01 * cond.audio.mean() + 0.001 * t.reshape(-1, *([1] * (x.ndim - 1)))


def _options(name):
    return {"ddim": {"eta": 0.5}, "euler": {}, "fewstep": {"spacing": "trailing"}, "perflow": {"windows": 2}}[name]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", [2, 5])
def test_grid_is_monotone_from_noise_to_clean(name, steps):
    info = SamplerInfo(name=name, steps=steps, options=_options(name))
    info.validate()
    grid = info.timesteps(make_schedule("vp_x0"))
    assert grid.shape == (steps + 1,) and grid.dtype == torch.float32
    assert bool((grid[1:] < grid[:-1]).all()) and float(grid[0]) <= 1.0 and float(grid[-1]) >= 0.0


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_a_seed_and_one_call_per_step(name):
    sch = make_schedule("vp_x0")
    info = SamplerInfo(name=name, steps=4, options=_options(name))
    opts = info.sampler_options()
    cond = Cond(reference=torch.zeros(1, 2, 4, 4), audio=torch.ones(1, 3, 16, 80))
    outs = []
    for _ in range(2):
        net = Toy()
        noise = torch.randn(1, 3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
        seen: list[int] = []
        x = info.kind(Denoiser(net, sch), noise, info.timesteps(sch), cond, schedule=sch,
                      generator=torch.Generator().manual_seed(1), callback=lambda i, *_, seen=seen: seen.append(i),
                      **opts.kwargs())
        assert net.calls == 4 and seen == [0, 1, 2, 3]
        outs.append(x)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("name", NAMES)
def test_sample_chunks_runs_every_sampler_from_its_record(name):
    net = Toy()
    info = SamplerInfo(name=name, steps=2, cfg_audio=2.0, cfg_ref=1.0, options=_options(name))
    lat, nfe = sample_chunks(Denoiser(net, make_schedule("vp_x0")), torch.zeros(1, 2, 4, 4),
                             torch.randn(7, 16, 80), sampler=info, layout=ChunkLayout(frames=3, motion_frames=1))
    assert lat.shape == (7, 2, 4, 4) and torch.isfinite(lat).all()
    assert nfe == 3 * 2 * 3  # 3 chunks x 2 steps x 3 guidance patterns (batched: one forward per step)
    assert net.calls == 3 * 2


@pytest.mark.parametrize("name", NAMES)
def test_unknown_or_bad_options_are_errors(name):
    with pytest.raises(ConfigError, match="unknown config key 'sampler.options.nope'"):
        SamplerInfo(name=name, options={"nope": 1}).validate()


def test_format_1_sampler_records_still_load():
    old = {"name": "perflow", "steps": 6, "cfg_audio": 3.0, "cfg_ref": 1.5, "spacing": "trailing", "eta": 0.0,
           "windows": 4, "target": "ddim_eps", "guidance": "embedded"}
    new = legacy_sampler(old)
    assert new["options"] == {"windows": 4, "target": "ddim_eps"} and "eta" not in new
    assert legacy_sampler({"name": "ddim", "steps": 25, "eta": 1.0, "windows": 4})["options"] == {"eta": 1.0}
    assert legacy_sampler(new) == new  # today's form passes unchanged
