"""The audio -> mouth-state head (`DiTConfig.mouth_state`): fitted first, frozen, then conditioning the denoiser."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from tests.mediafixtures import latent_window_batch, make_encoded_tiny_world

from lipstep.data.dataset import WindowConfig
from lipstep.diffusion.schedules import make_schedule
from lipstep.errors import ConfigError, LipstepError
from lipstep.nets.dit import AvatarDiT, DiTConfig
from lipstep.train.mouth_head import MouthHeadConfig, fit_mouth_head, split_windows
from lipstep.train.teacher import TeacherLossConfig, TeacherMethod

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_encoded_tiny_world(tmp_path_factory.mktemp("mouth_head_world"))


def _net(seed=0, **kw):
    torch.manual_seed(seed)
    return AvatarDiT(DiTConfig.preset("tiny", latent_size=8, frames=4, motion_frames=2, mouth_state=3,
                                      mouth_head_width=16, **kw))


def _trained_like(net):
    """Every parameter outside the head random (as after training: no zero-initialised path stays shut)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if not name.startswith("mouth_head."):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net


def _batch(world, n=2):
    return latent_window_batch(world, n)


def test_fit_learns_the_mouth_state_from_audio_and_freezes_only_the_head(world, tmp_path):
    root, _ = world
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = split_windows(root / "prepared", "train")
    assert x.shape[1:] == (16, 80) and y.shape[1] == 3 and len(x) == len(y) > 0
    scores = fit_mouth_head(net, root / "prepared", tmp_path, MouthHeadConfig(steps=200, batch_size=64, min_corr=-1),
                            progress=False)
    # it beats the best constant guess (the train median) by a clear margin on the frames it was fitted on
    constant = float(np.abs(y[:, 0] - np.median(y[:, 0])).mean())
    assert scores["train"]["openness_mae"] < 0.6 * constant
    assert json.loads((tmp_path / "mouth_head.json").read_text())["scores"] == scores
    after = net.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith("mouth_head.") for k in changed)
    assert not any(p.requires_grad for p in net.mouth_head.parameters()) and not net.mouth_head.training
    assert all(p.grad is None for p in net.mouth_head.parameters())  # nothing left for the loop's grad clipping
    assert all(p.requires_grad for n, p in net.named_parameters() if not n.startswith("mouth_head."))


def test_fit_refuses_a_head_that_learnt_nothing_and_a_net_without_one(world, tmp_path):
    root, _ = world
    with pytest.raises(LipstepError, match="min_corr"):
        fit_mouth_head(_net(), root / "prepared", tmp_path / "a", MouthHeadConfig(steps=1, min_corr=1.0),
                       progress=False)
    assert not (tmp_path / "a" / "mouth_head.json").exists()
    plain = AvatarDiT(DiTConfig.preset("tiny", latent_size=8, frames=4, motion_frames=2))
    with pytest.raises(LipstepError, match="no mouth-state head"):
        fit_mouth_head(plain, root / "prepared", tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match="no mouth-state head"):
        plain.read_mouth_state(torch.zeros(1, 4, 16, 80))


def test_the_head_reading_conditions_the_frames_unless_the_audio_is_dropped(world):
    net = _trained_like(_net())
    cond = TeacherMethod(net, make_schedule("vp_v")).cond_from_batch(_batch(world))
    x, t = torch.randn(2, 4, 4, 8, 8), torch.full((2,), 500.0)
    state = net.read_mouth_state(cond.audio)
    assert state.shape == (2, 4, 3) and bool(((state > 0) & (state < 1)).all())
    out, dropped = net(x, t, cond), net(x, t, cond.drop(audio=True))
    with torch.no_grad():
        net.mouth_head.head[-1].bias.add_(1.0)                       # another reading of the same audio
    assert not torch.allclose(out, net(x, t, cond), atol=1e-5)
    torch.testing.assert_close(dropped, net(x, t, cond.drop(audio=True)))


def test_the_denoising_loss_never_reaches_the_head(world):
    net = _trained_like(_net())
    batch = _batch(world)
    loss, _ = TeacherMethod(net, make_schedule("vp_v"), TeacherLossConfig(p_drop_audio=0, p_drop_both=0)).loss(
        "denoiser", batch, 0, torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is None for p in net.mouth_head.parameters())    # its reading enters detached
    assert net.mouth_embed[0].weight.grad.abs().sum() > 0


def test_train_teacher_fits_the_head_first_keeps_it_fixed_and_resumes_without_refitting(world, tmp_path):
    from lipstep.pipeline import AvatarPipeline, load_denoiser
    from lipstep.train.loop import TrainConfig, latest_checkpoint
    from lipstep.train.teacher import TeacherConfig, train_teacher

    root, _ = world
    cfg = TeacherConfig(preset="tiny", window=WindowConfig(frames=4, motion_frames=2, stride=4), val_clips=0,
                        mouth_state=True, mouth_head=MouthHeadConfig(steps=30, batch_size=32, min_corr=-1))
    cfg.train = TrainConfig(steps=2, batch_size=2, checkpoint_every=1, log_every=1)
    model = train_teacher(root / "prepared", root / "codec", tmp_path / "run", cfg, progress=False)
    fitted = json.loads((tmp_path / "run" / "mouth_head.json").read_text())
    pipe = AvatarPipeline.from_pretrained(model)
    assert pipe.denoiser.cfg.mouth_state == 3 and pipe.denoiser.mouth_head is not None
    head = {k: v.clone() for k, v in pipe.denoiser.mouth_head.state_dict().items()}
    # the same fit on a net built the same way gives the same head: the two denoiser steps left it alone
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        ref = AvatarDiT(pipe.denoiser.cfg)
    fit_mouth_head(ref, root / "prepared", tmp_path / "ref", cfg.mouth_head, progress=False)
    for k, v in ref.mouth_head.state_dict().items():
        torch.testing.assert_close(head[k], v, rtol=0, atol=0, msg=k)
    # resume: the checkpoint restores the head, nothing is refitted
    (tmp_path / "run" / "mouth_head.json").unlink()
    train_teacher(root / "prepared", root / "codec", tmp_path / "run", replace(cfg, train=replace(cfg.train, steps=3)),
                  resume=True, progress=False)
    assert not (tmp_path / "run" / "mouth_head.json").exists()
    assert latest_checkpoint(tmp_path / "run") is not None
    resumed = load_denoiser(tmp_path / "run" / "model" / "denoiser")
    for k, v in resumed.mouth_head.state_dict().items():
        torch.testing.assert_close(v, head[k], rtol=0, atol=0, msg=k)
    assert fitted["scores"]["train"]["frames"] > 0


def test_a_student_built_from_the_teacher_keeps_the_head_frozen():
    from lipstep.distill.perflow import PerflowConfig, build_student

    teacher = _net()
    student = build_student(teacher, PerflowConfig())
    assert not any(p.requires_grad for p in student.mouth_head.parameters())
    assert all(p.requires_grad for n, p in student.named_parameters() if not n.startswith("mouth_head."))
