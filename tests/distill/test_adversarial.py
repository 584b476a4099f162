"""TurboTalk stage 2 (progressive adversarial distillation): nested grids, each round halves the steps, the
curriculum, the self-compare references, the discriminator's conditioning, the losses, own chained chunks,
and whole rounds (DMD 4 → adversarial 2 → 1) through the CLI and the pipeline."""

import copy

import numpy as np
import pytest
import torch

from lipstep.cli import main
from lipstep.diffusion.cond import Cond
from lipstep.diffusion.schedules import make_schedule
from lipstep.distill.adversarial import (
    AdversarialConfig,
    AdversarialMethod,
    d_losses,
    d_noise_mean,
    draw_jump,
    g_losses,
    new_grid_share,
    round_grids,
)
from lipstep.distill.perflow import guided_copy
from lipstep.errors import ConfigError, LipstepError
from lipstep.nets.discriminator import DiscriminatorConfig, FeatureDiscriminator, default_blocks
from lipstep.pipeline import AvatarPipeline, read_info
from lipstep.samplers import sample_fewstep
from lipstep.train.loop import TrainConfig
from tests.contracts.test_methods import LatentWindows, _net, _perturbed

pytestmark = pytest.mark.usefixtures("one_thread")
SCH = make_schedule("vp_x0")


def _method(steps=4, **kw) -> AdversarialMethod:
    teacher = _perturbed(_net()).eval().requires_grad_(False)
    start = _perturbed(guided_copy(teacher, "tokens", 4, 0), seed=2).eval().requires_grad_(False)
    cfg = AdversarialConfig(**kw)
    disc = FeatureDiscriminator(cfg.discriminator, net_width=teacher.cfg.width,
                                grid=teacher.cfg.latent_size // teacher.cfg.patch, depth=teacher.cfg.depth)
    return AdversarialMethod(copy.deepcopy(start).train().requires_grad_(True), start, teacher, disc, SCH, cfg,
                             steps=steps, motion_frames=teacher.cfg.motion_frames)


def _batch(n=2, data=None):
    data = data or LatentWindows(n)
    return torch.utils.data.default_collate([data[i] for i in range(n)])


# ---------------------------------------------------------------------------------------------
# grids, rounds and the curriculum


def test_each_round_halves_the_steps_on_a_nested_grid():
    old, new, idx = round_grids(SCH, "trailing", 4, 2)
    assert old.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0] and new.tolist() == [1.0, 0.5, 0.0] and idx == [0, 2, 4]
    assert round_grids(SCH, "trailing", 2, 1)[2] == [0, 2]
    assert round_grids(SCH, "trailing", 4, 1)[2] == [0, 4]          # the direct 4 -> 1 ablation
    with pytest.raises(LipstepError, match="not a subset"):
        round_grids(SCH, "trailing", 4, 3)
    with pytest.raises(ConfigError):
        round_grids(SCH, "trailing", 2, 2)
    assert _method(4).target == 2 and _method(2).target == 1 and _method(4, target_steps=1).target == 1


def test_the_jump_curriculum_moves_from_the_old_grid_to_the_new_one():
    assert new_grid_share("jumps", 0, 100, 0.3) == 0.0
    assert new_grid_share("jumps", 15, 100, 0.3) == pytest.approx(0.5)
    assert new_grid_share("jumps", 30, 100, 0.3) == new_grid_share("jumps", 99, 100, 0.3) == 1.0
    assert new_grid_share("d_noise", 0, 100, 0.3) == new_grid_share("none", 0, 100, 0.3) == 1.0
    new = [0, 2, 4]
    early = {draw_jump(0, s, 0.0, 4, new) for s in range(200)}
    late = {draw_jump(0, s, 1.0, 4, new) for s in range(200)}
    assert early == {(0, 1, False), (1, 2, False), (2, 3, False), (3, 4, False)}
    assert late == {(0, 2, True), (2, 4, True)}
    assert {draw_jump(0, s, 1.0, 2, [0, 2]) for s in range(50)} == {(0, 2, True)}  # last round: from pure noise
    assert draw_jump(3, 17, 0.5, 4, new) == draw_jump(3, 17, 0.5, 4, new)        # equal on every process


def test_the_other_reading_anneals_the_discriminator_noise_level():
    cfg = AdversarialConfig(curriculum="d_noise", d_t_mean_start=2.0, d_t_mean=0.0, ramp=0.5)
    assert [d_noise_mean(cfg, s, 100) for s in (0, 25, 50, 90)] == [2.0, 1.0, 0.0, 0.0]
    assert d_noise_mean(AdversarialConfig(d_t_mean=1.0), 0, 100) == 1.0


def test_losses_hinge_and_non_saturating():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.5])
    assert d_losses("hinge", real, fake).tolist() == [0.0, 2.5]
    assert g_losses("hinge", fake).tolist() == [2.0, -0.5]
    assert torch.allclose(d_losses("nonsaturating", real, fake),
                          torch.nn.functional.softplus(-real) + torch.nn.functional.softplus(fake))
    assert torch.allclose(g_losses("nonsaturating", fake), torch.nn.functional.softplus(-fake))


def test_config_checks():
    for bad in ({"reference": "mirror"}, {"curriculum": "x"}, {"loss": "wgan"}, {"ramp": 0.0},
                {"adv_weight": 0.0, "distill_weight": 0.0}, {"chain": 0}, {"cfg_audio_range": (3.0, 1.0)},
                {"blink_repeat": -1}):
        with pytest.raises(ConfigError):
            AdversarialConfig(**bad).validate()


# ---------------------------------------------------------------------------------------------
# the discriminator


def test_default_feature_blocks_spread_over_the_depth():
    assert default_blocks(6) == [1, 3, 5] and default_blocks(40) == [12, 26, 39] and default_blocks(2) == [0, 1]


def test_the_discriminator_heads_see_the_conditioning():
    teacher = _perturbed(_net()).eval()
    disc = _perturbed(FeatureDiscriminator(DiscriminatorConfig(conditional=True), net_width=teacher.cfg.width,
                                           grid=teacher.cfg.latent_size // teacher.cfg.patch,
                                           depth=teacher.cfg.depth), seed=3)
    batch = _batch()
    cond = Cond(reference=batch["reference_latent"], audio=batch["audio"], motion=batch["motion_latents"])
    x, t = batch["latents"], torch.full((2,), 500.0)
    blocks = disc.blocks
    with torch.no_grad():
        end, start = teacher.features(x, t, cond, blocks), teacher.features(x * 0.5, t, cond, blocks)
        base = disc(end, start)
        other_audio = Cond(reference=cond.reference, audio=cond.audio.flip(0), motion=cond.motion)
        end_a = teacher.features(x, t, other_audio, blocks)
        assert not torch.allclose(disc(end_a, start), base)                     # the audio
        other_ref = Cond(reference=cond.reference.flip(0), audio=cond.audio, motion=cond.motion)
        assert not torch.allclose(disc(teacher.features(x, t, other_ref, blocks), start), base)  # the reference
        assert not torch.allclose(disc(teacher.features(x, t * 0.2, cond, blocks), start), base)  # the noise level
        assert not torch.allclose(disc(end, teacher.features(x * 0.1, t, cond, blocks)), base)  # the start point
        # the projection terms alone: same tokens, other audio tokens -> other logits
        swapped = copy.copy(end)
        swapped.audio = end.audio.flip(0)
        assert not torch.allclose(disc(swapped, start), base)
    with pytest.raises(ValueError, match="conditional form"):
        disc(end)


def test_features_match_the_forward_pass_and_stop_early():
    net = _perturbed(_net()).eval()
    batch = _batch()
    cond = Cond(reference=batch["reference_latent"], audio=batch["audio"], motion=batch["motion_latents"])
    t = torch.full((2,), 300.0)
    feats = net.features(batch["latents"], t, cond, [0, net.cfg.depth - 1])
    assert feats.blocks == [0, net.cfg.depth - 1] and len(feats.tokens) == 2
    # the trunk is the forward pass's: the final layer applied to the last block's tokens gives the output
    with torch.no_grad():
        y = net.unpatchify(net.final(feats.tokens[-1], feats.time))
        if net.out_head is None:
            assert torch.allclose(y, net(batch["latents"], t, cond), atol=1e-5)
    with pytest.raises(ConfigError, match="feature blocks"):
        net.features(batch["latents"], t, cond, [net.cfg.depth])


# ---------------------------------------------------------------------------------------------
# the method


@pytest.mark.parametrize("reference", ["prev_student", "self_more_steps", "teacher", "data"])
def test_every_reference_trains_the_discriminator_then_the_student(reference):
    m = _method(4, reference=reference, distill_weight=0.5, train=TrainConfig(steps=10, seed=0))
    roles = m.roles()
    assert list(roles)[:2] == ["discriminator", "student"] and not roles["feature_net"].trainable
    assert ("reference" in roles) == (reference == "prev_student")
    batch, gen = _batch(), torch.Generator().manual_seed(0)
    d_loss, d_logs = m.loss("discriminator", batch, 9, gen)
    assert torch.isfinite(d_loss) and d_loss.requires_grad and {"d_real", "d_fake", "p_new"} <= set(d_logs)
    s_loss, s_logs = m.loss("student", batch, 9, gen)
    assert torch.isfinite(s_loss) and {"l_adv", "l_dist"} <= set(s_logs)
    s_loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.student.parameters())
    assert all(p.grad is None for p in m.teacher.parameters()) and all(p.grad is None for p in m.start.parameters())


def test_the_self_compare_references_are_the_student_family_one_level_up_without_gradient():
    m = _method(4, reference="prev_student")
    batch = _batch()
    x0 = batch["latents"]
    cond = Cond(reference=batch["reference_latent"], audio=batch["audio"], motion=batch["motion_latents"],
                cfg_scales=torch.full((2, 2), 2.0))
    scales = cond.cfg_scales
    x_s = torch.randn_like(x0)
    ref = m.reference_x0(x_s, x0, cond, scales, 0, 2, torch.Generator().manual_seed(5))
    # the frozen starting student's two steps on its own grid (1 -> 0.75 -> x0), the same noise
    prev = sample_fewstep(m.reference_fn, x_s, m.old[:2], cond, schedule=SCH, generator=torch.Generator().manual_seed(5))
    t = m.old[1].expand(2)
    with torch.no_grad():
        expect = SCH.to_x0(m.reference_fn(prev, t, cond), prev, t)
    assert torch.allclose(ref, expect, atol=1e-6) and ref.grad_fn is None
    m2 = _method(4, reference="self_more_steps")
    with torch.no_grad():  # make the current student differ from the starting one
        next(m2.student.parameters()).add_(0.1)
    ref2 = m2.reference_x0(x_s, x0, cond, scales, 0, 2, torch.Generator().manual_seed(5))
    ref2_prev = m2.reference_fn  # None: no frozen reference role
    assert ref2_prev is None and ref2.grad_fn is None
    assert not torch.allclose(ref2, m.reference_x0(x_s, x0, cond, scales, 0, 2, torch.Generator().manual_seed(5)))


def test_training_on_its_own_chained_chunks_puts_its_own_output_in_the_motion_context():
    m = _method(2, chain=3, p_motion_ref=0.0)
    long = LatentWindows(2)
    for it in long.items:  # three chunks of T frames per sample
        it["latents"] = torch.cat([it["latents"]] * 3)
        it["audio"] = torch.cat([it["audio"]] * 3)
    batch = _batch(2, long)
    gen = torch.Generator().manual_seed(0)
    x0, cond, _ = m.chained(batch, gen)
    t = batch["latents"].shape[1] // 3
    assert x0.shape[1] == t and cond.audio.shape[1] == t
    assert not torch.allclose(cond.motion, batch["motion_latents"])        # not the ground truth's context
    assert cond.motion.grad_fn is None
    _, cond_1, _ = _method(2, chain=1, p_motion_ref=0.0).chained(_batch(), torch.Generator().manual_seed(0))
    assert torch.equal(cond_1.motion, _batch()["motion_latents"])


# ---------------------------------------------------------------------------------------------
# whole rounds


def test_dmd_then_progressive_rounds_through_the_cli_and_the_pipeline(world, tmp_path, capsys):
    prepared, teacher = str(world / "prepared"), str(world / "teacher" / "model")

    def run(args):
        with pytest.raises(SystemExit) as done:
            main(args)
        assert done.value.code == 0, capsys.readouterr().err

    run(["distill", "dmd", "--data", prepared, "--out", str(tmp_path / "dmd"), "--teacher", teacher, "--steps", "2",
         "--batch-size", "2", "student_steps=4", "fake_updates=1", "val_clips=0"])
    start = tmp_path / "dmd" / "model"
    run(["distill", "adversarial", "--data", prepared, "--out", str(tmp_path / "r2"), "--student", str(start),
         "--teacher", teacher, "--steps", "2", "--batch-size", "2", "val_clips=0", "train.checkpoint_every=1"])
    r2 = read_info(tmp_path / "r2" / "model")
    assert (r2.recipe, r2.sampler.name, r2.sampler.steps) == ("adversarial", "fewstep", 2)
    assert r2.trained["round"] == [4, 2] and r2.trained["reference"] == "prev_student"
    run(["distill", "adversarial", "--data", prepared, "--out", str(tmp_path / "r2"), "--student", str(start),
         "--teacher", teacher, "--steps", "3", "--batch-size", "2", "--resume"])
    run(["distill", "adversarial", "--data", prepared, "--out", str(tmp_path / "r1"), "--student",
         str(tmp_path / "r2" / "model"), "--teacher", teacher, "--steps", "2", "--batch-size", "2", "val_clips=0",
         "reference=self_more_steps", "chain=2", "discriminator.conditional=false"])
    r1 = read_info(tmp_path / "r1" / "model")
    assert r1.sampler.steps == 1 and r1.nfe_per_chunk() == 1 and r1.trained["round"] == [2, 1]
    res = AvatarPipeline.from_pretrained(tmp_path / "r1" / "model")(np.zeros((32, 32, 3), np.uint8),
                                                                      np.zeros(8000, np.float32))
    assert res.frames.shape == (12, 32, 32, 3) and res.nfe == 3
    capsys.readouterr()
    with pytest.raises(SystemExit) as bad:  # a round needs a few-step student, not a teacher
        main(["distill", "adversarial", "--data", prepared, "--out", str(tmp_path / "x"), "--student", teacher,
              "--teacher", teacher, "--steps", "1"])
    err = capsys.readouterr().err
    assert bad.value.code != 0 and "few-step student" in err and len(err.strip().splitlines()) == 1
