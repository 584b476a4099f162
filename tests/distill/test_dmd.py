"""TurboTalk stage 1 (DMD): the DM gradient and its normaliser, backward simulation, the two-time-scale
cadence, and the whole run (CLI, resume, teacher pairs, export, generation through the pipeline)."""

import json

import numpy as np
import pytest
import torch

from lipstep.cli import main
from lipstep.diffusion.schedules import make_schedule
from lipstep.distill.dmd import DMDConfig, DMDMethod, DMDRecipe, start_index, student_info, with_gan_head
from lipstep.distill.losses import dm_gradient, dm_surrogate_loss
from lipstep.distill.perflow import guided_copy
from lipstep.errors import ConfigError
from lipstep.modeldir import ModelInfo
from lipstep.nets.discriminator import DiscriminatorConfig, ScoreWithHeads
from lipstep.pipeline import AvatarPipeline, read_info
from lipstep.samplers import sample_fewstep
from lipstep.train.loop import TrainConfig, train
from lipstep.train.runner import run_recipe
from tests.contracts.test_methods import LatentWindows, _cfg, _net, _perturbed

pytestmark = pytest.mark.usefixtures("one_thread")


def _method(**kw) -> DMDMethod:
    teacher = _perturbed(_net()).eval().requires_grad_(False)
    cfg = DMDConfig(**{"student_steps": 3, "fake_updates": 3, **kw})
    return DMDMethod(_perturbed(guided_copy(teacher, "tokens", 4, 0), seed=2), guided_copy(teacher, "tokens", 4, 0),
                     teacher, make_schedule("vp_x0"), cfg)


def _batch(n=2):
    data = LatentWindows(n)
    return torch.utils.data.default_collate([data[i] for i in range(n)])


def _posterior_x0(schedule, x_t, t, mu, sd):
    """E[x0 | x_t] for x0 ~ N(mu, sd²) per dimension: the exact score of a Gaussian, in x0 form."""
    a, s = schedule.coeffs(t, x_t)
    return mu + a * sd**2 / (a.square() * sd**2 + s.square()) * (x_t - a * mu)


# ---------------------------------------------------------------------------------------------
# the distribution-matching gradient


def test_dm_gradient_moves_generated_samples_from_the_fake_toward_the_real_distribution():
    """1-D Gaussians per dimension, both scores in closed form; the fake score tracks the samples' own
    distribution. Descending the DM gradient carries the samples from N(-1, 1.5²) to the real N(1, 0.5²)."""
    sch = make_schedule("vp_x0")
    g = torch.Generator().manual_seed(0)
    x = -1.0 + 1.5 * torch.randn(2048, 16, generator=g)
    mu_r, sd_r = 1.0, 0.5
    for it in range(200):
        mu_f, sd_f = x.mean(), x.std()
        t = 0.02 + 0.96 * torch.rand(len(x), generator=g)
        x_t = sch.add_noise(x, torch.randn(x.shape, generator=g), t)
        grad = dm_gradient(x, _posterior_x0(sch, x_t, t, mu_f, sd_f), _posterior_x0(sch, x_t, t, mu_r, sd_r))
        if it == 0:
            assert float((-grad).mean()) > 0  # the first step already moves the mass toward mu_r
        x = x - 0.05 * grad
    assert abs(float(x.mean()) - mu_r) < 0.01 and abs(float(x.std()) - sd_r) < 0.02


def test_the_normaliser_is_per_sample_and_the_surrogate_loss_applies_the_gradient():
    g = torch.Generator().manual_seed(0)
    x, real = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    fake = real + 0.3
    x[1] = real[1] + 10 * (x[1] - real[1])      # sample 1 lies 10x farther from the real estimate
    grad = dm_gradient(x, fake, real)
    norm = (x - real).abs().flatten(1).mean(1)
    assert torch.allclose(grad, 0.3 / norm[:, None, None])
    assert torch.allclose(grad[0] / grad[1], torch.full((3, 4), float(norm[1] / norm[0])))
    assert torch.equal(dm_gradient(real, fake, real), torch.zeros_like(real))  # a zero normaliser: 0, not inf/NaN
    x.requires_grad_(True)
    dm_surrogate_loss(x, grad).mean().backward()
    assert torch.allclose(x.grad, grad / (2 * 12))  # d/dx of mean over 2 samples x 12 values


def test_the_generator_step_descends_the_dm_gradient_and_trains_the_generator_only():
    """With both scores replaced by Gaussians, the surrogate's gradient on G's sample is the DM gradient,
    and the generator's loss gives gradients to the generator alone."""
    m = _method()
    sch = m.schedule
    m.fake_fn = lambda x_t, t, cond: _posterior_x0(sch, x_t, t, -1.0, 1.0)  # vp_x0: native = x0
    m.real_fn = lambda x_t, t, cond: _posterior_x0(sch, x_t, t, 1.0, 1.0)
    x = torch.zeros(2, 4, 4, 8, 8, requires_grad=True)
    cond, _ = m.conditions(_batch(), torch.Generator().manual_seed(0))
    loss, grad = m.dm_loss(x, cond, torch.ones(2, 2), torch.Generator().manual_seed(1))
    loss.mean().backward()
    assert torch.allclose(x.grad, grad / x.numel()) and float((-x.grad).mean()) > 0  # toward the real mean 1

    m = _method()
    loss, logs = m.loss("generator", _batch(), 0, torch.Generator().manual_seed(0))
    loss.backward()
    assert logs["l_dm"] > 0 and any(p.grad is not None for p in m.generator.parameters())
    assert all(p.grad is None for p in m.fake_score.parameters()) and all(p.grad is None for p in m.teacher.parameters())


def test_the_optional_gan_head_judges_on_the_fake_scores_features_and_trains_with_it():
    """DMD2's head: the fake score role becomes net + heads; its step trains both on real vs generated samples,
    the generator's step pushes its samples toward 'real' through the (not stepped) fake score."""
    teacher = _perturbed(_net()).eval().requires_grad_(False)
    cfg = DMDConfig(student_steps=2, fake_updates=1, gan_weight=5e-3, gan_d_weight=1e-2)
    fake = with_gan_head(guided_copy(teacher, "tokens", 4, 0), cfg.gan_head, 0)
    m = DMDMethod(_perturbed(guided_copy(teacher, "tokens", 4, 0), seed=2), fake, teacher, make_schedule("vp_x0"), cfg)
    assert isinstance(m.roles()["fake_score"].module, ScoreWithHeads)
    loss, logs = m.loss("fake_score", _batch(), 0, torch.Generator().manual_seed(0))
    loss.backward()
    assert {"l_gan_d", "d_real", "d_fake"} <= set(logs)
    assert all(p.grad is not None for p in fake.disc.parameters())
    assert all(p.grad is None for p in m.generator.parameters())
    fake.zero_grad(set_to_none=True)
    loss, logs = m.loss("generator", _batch(), 1, torch.Generator().manual_seed(0))
    loss.backward()
    assert logs["l_gan_g"] > 0 and any(p.grad is not None for p in m.generator.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    with pytest.raises(ConfigError, match="conditional"):
        DMDConfig(gan_head=DiscriminatorConfig(conditional=True)).validate()


# ---------------------------------------------------------------------------------------------
# backward simulation and the two-time-scale cadence


def test_backward_simulation_feeds_the_generator_its_own_current_states_without_gradient():
    m = _method()
    batch = _batch()
    cond, scales = m.conditions(batch, torch.Generator().manual_seed(0))
    g_cond = m._with_scales(cond, scales, True)
    x0 = batch["latents"]
    x_2 = m.generator_input(x0, g_cond, 2, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    noise = torch.randn(x0.shape, generator=gen)
    with torch.no_grad():
        own = sample_fewstep(m.generator_fn, noise, m.grid[:3], g_cond, schedule=m.schedule, generator=gen)
    assert torch.equal(x_2, own) and not x_2.requires_grad
    assert torch.equal(m.generator_input(x0, g_cond, 0, torch.Generator().manual_seed(5)), noise)  # k = 0: noise
    with torch.no_grad():
        for p in m.fake_score.parameters():   # the fake score and the teacher play no part in it
            p.add_(1.0)
    assert torch.equal(m.generator_input(x0, g_cond, 2, torch.Generator().manual_seed(5)), x_2)
    with torch.no_grad():
        for p in m.generator.parameters():    # the *current* generator
            p.mul_(1.1)
    assert not torch.equal(m.generator_input(x0, g_cond, 2, torch.Generator().manual_seed(5)), x_2)
    real = _method(backward_simulation=False)  # the ablation: real latents diffused to t_k
    assert torch.allclose(real.generator_input(x0, g_cond, 2, torch.Generator().manual_seed(5)),
                          real.schedule.add_noise(x0, noise, real.grid[2]))


def test_grid_indices_cover_the_grid_and_do_not_depend_on_the_process():
    assert {start_index(0, s, 4) for s in range(200)} == {0, 1, 2, 3}
    assert [start_index(3, s, 4) for s in range(20)] == [start_index(3, s, 4) for s in range(20)]


def test_fake_score_updates_fake_updates_times_per_generator_step(tmp_path):
    m = _method(student_steps=2, fake_updates=3)
    seen = []
    loss = m.loss

    def recording(role, batch, step, generator):
        total = {r: float(sum(p.detach().double().sum() for p in m.modules[r].parameters()))
                 for r in ("generator", "fake_score")}
        seen.append((role, total))
        return loss(role, batch, step, generator)

    m.loss = recording
    train(m, LatentWindows(), _cfg(5), tmp_path, progress=False)
    assert [r for r, _ in seen] == ["fake_score"] * 3 + ["generator", "fake_score"]
    gen = [s["generator"] for _, s in seen]
    fake = [s["fake_score"] for _, s in seen]
    assert gen[0] == gen[1] == gen[2] == gen[3] != gen[4]          # only the generator step moves G
    assert fake[0] != fake[1] != fake[2] != fake[3] and fake[3] == fake[4]


def test_regression_on_a_teacher_pair_is_the_first_step_against_the_ode_solution():
    m = _method(reg_weight=0.25, pairs=2)
    batch = _batch()
    g = torch.Generator().manual_seed(0)
    batch.update(eps=torch.randn(batch["latents"].shape, generator=g), z_end=torch.randn(batch["latents"].shape, generator=g),
                 scales=torch.tensor([[2.0, 1.5], [3.0, 1.0]]), window=torch.zeros(2, dtype=torch.long))
    _, logs = m.loss("generator", batch, 0, torch.Generator().manual_seed(1))
    cond, scales = m.conditions(batch, g)
    assert torch.equal(scales, batch["scales"])  # a pair keeps the scales the teacher solved it with
    one = torch.ones(2)
    z = m.schedule.add_noise(batch["latents"], batch["eps"], one.double()).float()
    with torch.no_grad():
        pred = m.generator_fn.x0(z, one, m._with_scales(cond, scales, True))
    assert logs["l_reg"] == pytest.approx(float((pred - batch["z_end"]).square().mean()), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# config and export record


def test_config_checks_and_the_exported_sampler_record():
    with pytest.raises(ConfigError, match="needs teacher pairs"):
        DMDConfig(reg_weight=0.25).validate()
    with pytest.raises(ConfigError, match="t_min < t_max"):
        DMDConfig(t_min=0.5, t_max=0.4).validate()
    with pytest.raises(ConfigError, match="fake_updates"):
        DMDConfig(fake_updates=0).validate()
    with pytest.raises(ConfigError, match="blink_repeat must be >= 0"):
        DMDConfig(blink_repeat=-1).validate()
    info = student_info(ModelInfo(schedule="vp_x0"), DMDConfig())
    assert (info.kind, info.recipe, info.sampler.name, info.sampler.guidance) == ("student", "dmd", "fewstep", "embedded")
    assert info.nfe_per_chunk() == 4 and info.nfe_per_chunk(cfg_audio=5.0) == 4  # one pass at any scales
    baked = student_info(ModelInfo(schedule="vp_x0"), DMDConfig(cfg_mode="none"))
    assert (baked.sampler.guidance, baked.sampler.cfg_audio, baked.nfe_per_chunk()) == ("cfg", 1.0, 4)


# ---------------------------------------------------------------------------------------------
# the whole run


def test_distill_dmd_runs_resumes_and_writes_a_student_that_generates(world, tmp_path):
    cfg = DMDConfig(student_steps=2, fake_updates=1, val_clips=1, val_seconds=0.4, gan_weight=5e-3)
    cfg.train = TrainConfig(steps=2, batch_size=2, checkpoint_every=1, log_every=1)
    teacher = world / "teacher" / "model"
    assert read_info(teacher).residual > 0 and read_info(teacher).schedule == "vp_x0"
    run_recipe(DMDRecipe(teacher, cfg), world / "prepared", tmp_path / "run", progress=False)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints" / "step_000002").iterdir() if p.is_dir()) == [
        "fake_score", "generator"]  # the frozen teacher is not checkpointed
    cfg.train.steps = 3
    model = run_recipe(DMDRecipe(teacher, cfg), world / "prepared", tmp_path / "run", resume=True, progress=False)
    assert json.loads((tmp_path / "run" / "distill.json").read_text())["steps"] == 3
    info = read_info(model)
    assert (info.recipe, info.sampler.name, info.sampler.steps, info.nfe_per_chunk()) == ("dmd", "fewstep", 2, 2)
    pipe = AvatarPipeline.from_pretrained(model)
    res = pipe(np.zeros((32, 32, 3), np.uint8), np.zeros(8000, np.float32))
    assert res.frames.shape == (12, 32, 32, 3) and res.nfe == 2 * 3  # 0.5 s = 12 frames = 3 chunks of 4
    assert list((tmp_path / "run" / "val").glob("step_000003_*.mp4"))


def test_distill_dmd_command_with_teacher_pairs(world, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["distill", "dmd", "--data", str(world / "prepared"), "--out", str(out), "--teacher",
            str(world / "teacher" / "model"), "--steps", "2", "--batch-size", "2", "student_steps=2",
            "fake_updates=1", "pairs=3", "reg_weight=0.25", "solver_steps=2", "val_clips=0"]
    with pytest.raises(SystemExit) as done:
        main(args)
    first = capsys.readouterr()
    assert done.value.code == 0, first.err
    assert len(list((out / "pairs").glob("part_*.safetensors"))) == 1
    assert read_info(out / "model").trained["reg_weight"] == 0.25
    with pytest.raises(SystemExit) as bad:
        main(["distill", "dmd", "--data", str(world / "prepared"), "--out", str(tmp_path / "x"), "fake_update=2"])
    err = capsys.readouterr().err
    assert bad.value.code == 2 and "did you mean" in err and len(err.strip().splitlines()) == 1
