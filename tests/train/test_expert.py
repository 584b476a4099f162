"""The latent mouth expert and the teacher's lip-sync loss built on it."""

import json
from dataclasses import replace

import pytest
import torch
from tests.mediafixtures import latent_window_batch, make_encoded_tiny_world

from lipstep.data.dataset import WindowConfig
from lipstep.diffusion.schedules import make_schedule
from lipstep.errors import LipstepError
from lipstep.nets.dit import AvatarDiT, DiTConfig
from lipstep.train.expert import MouthExpert, MouthExpertConfig, train_mouth_expert
from lipstep.train.teacher import TeacherLossConfig, TeacherMethod

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_encoded_tiny_world(tmp_path_factory.mktemp("expert_world"))


def _batch(world, n=2):
    return latent_window_batch(world, n)


def test_expert_fits_the_train_split_and_is_reused(world, tmp_path):
    root, cache = world
    cfg = MouthExpertConfig(width=8, steps=60, batch_size=32, min_corr=-1.0)
    expert = train_mouth_expert(root / "prepared", cache, tmp_path / "e", cfg, progress=False)
    info = json.loads((tmp_path / "e" / "expert.json").read_text())
    assert info["channels"] == 4 and info["scores"]["train"]["frames"] > 0
    assert not any(p.requires_grad for p in expert.parameters()) and not expert.training
    out = expert(torch.zeros(5, 4, 8, 8))
    assert out.shape == (5, 3) and bool(((out > 0) & (out < 1)).all())
    # the fit lowers the training error below that of predicting 0.5 everywhere
    assert info["scores"]["train"]["openness_mae"] < 0.45
    again = train_mouth_expert(root / "prepared", cache, tmp_path / "e", cfg, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(expert.state_dict().values(), again.state_dict().values()))
    with pytest.raises(LipstepError, match="min_corr"):
        train_mouth_expert(root / "prepared", cache, tmp_path / "f", MouthExpertConfig(width=8, steps=1, min_corr=2.0),
                           progress=False)
    assert not (tmp_path / "f" / "model.safetensors").exists()  # a refused expert is not kept


def test_mouth_loss_trains_the_net_not_the_expert(world):
    torch.manual_seed(0)
    net = AvatarDiT(DiTConfig.preset("tiny", latent_size=8, frames=4, motion_frames=2))
    expert = MouthExpert(4, 8)
    for p in expert.parameters():
        p.requires_grad_(False)
    loss_cfg = TeacherLossConfig(p_drop_audio=0, p_drop_both=0, mouth_weight=1.0)
    method = TeacherMethod(net, make_schedule("vp_v"), loss_cfg, expert=expert)
    batch = _batch(world)
    loss, logs = method.loss(batch, 0, torch.Generator().manual_seed(0))
    plain, _ = TeacherMethod(net, make_schedule("vp_v"), TeacherLossConfig(p_drop_audio=0, p_drop_both=0)).loss(
        batch, 0, torch.Generator().manual_seed(0))
    assert logs["mouth"] > 0 and loss.item() == pytest.approx(plain.item() + logs["mouth"], rel=1e-5)
    loss.backward()
    assert net.final.linear.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in expert.parameters())


def test_mouth_loss_skips_samples_without_audio(world):
    net = AvatarDiT(DiTConfig.preset("tiny", latent_size=8, frames=4, motion_frames=2))
    method = TeacherMethod(net, make_schedule("vp_v"), TeacherLossConfig(mouth_weight=1.0), expert=MouthExpert(4, 8))
    batch = _batch(world)
    cond = method.cond_from_batch(batch)
    x, t = batch["latents"], torch.full((2,), 0.5)
    pred = net(x, method.schedule.model_time(t), cond)
    assert method.mouth_loss(pred, x, t, cond, batch).item() > 0
    assert method.mouth_loss(pred, x, t, cond.drop(audio=True), batch).item() == 0.0
    with pytest.raises(LipstepError, match="mouth labels"):
        method.mouth_loss(pred, x, t, cond, {k: v for k, v in batch.items() if k != "mouth"})
    with pytest.raises(LipstepError, match="needs a mouth expert"):
        TeacherMethod(net, make_schedule("vp_v"), TeacherLossConfig(mouth_weight=1.0))


def test_train_teacher_fits_the_expert_when_the_mouth_loss_is_on(world, tmp_path):
    from lipstep.train.loop import TrainConfig
    from lipstep.train.teacher import TeacherConfig, train_teacher

    root, _ = world
    cfg = TeacherConfig(preset="tiny", window=WindowConfig(frames=4, motion_frames=2, stride=4), val_clips=0,
                        loss=TeacherLossConfig(mouth_weight=0.5),
                        expert=MouthExpertConfig(width=8, steps=5, batch_size=16, min_corr=-1.0))
    cfg.train = TrainConfig(steps=2, batch_size=2, checkpoint_every=1, log_every=1)
    train_teacher(root / "prepared", root / "codec", tmp_path / "run", cfg, progress=False)
    assert (tmp_path / "run" / "mouth_expert" / "model.safetensors").is_file()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["loss"]["mouth_weight"] == 0.5 and saved["expert"]["steps"] == 5


# --- the audio probe: a lip-sync signal straight into the denoiser's audio pathway ---------------


def _probe_net(**kw):
    return AvatarDiT(DiTConfig.preset("tiny", latent_size=8, frames=4, motion_frames=2, **kw))


def test_audio_probe_reads_the_audio_tokens_and_leaves_the_output_alone(world):
    torch.manual_seed(0)
    net = _probe_net(audio_probe=3)
    batch = _batch(world)
    method = TeacherMethod(net, make_schedule("vp_v"), TeacherLossConfig(audio_mouth_weight=1.0))
    cond = method.cond_from_batch(batch)
    x, t = batch["latents"], torch.full((2,), 500.0)
    out, read = net(x, t, cond, probe=True)
    assert read.shape == (2, 4, 3)
    torch.testing.assert_close(out, net(x, t, cond))
    # the reading depends on the audio and on nothing else
    other = net(x.flip(0), t, replace(cond, reference=cond.reference.flip(0)), probe=True)[1]
    torch.testing.assert_close(read, other)
    assert not torch.allclose(read, net(x, t, replace(cond, audio=cond.audio.flip(0)), probe=True)[1])
    with pytest.raises(LipstepError, match="no audio probe"):
        _probe_net()(x, t, cond, probe=True)


def test_audio_mouth_loss_trains_the_audio_pathway(world):
    torch.manual_seed(0)
    net = _probe_net(audio_probe=3)
    batch = _batch(world)
    loss_cfg = TeacherLossConfig(p_drop_audio=0, p_drop_both=0, audio_mouth_weight=2.0)
    loss, logs = TeacherMethod(net, make_schedule("vp_v"), loss_cfg).loss(batch, 0, torch.Generator().manual_seed(0))
    plain, _ = TeacherMethod(net, make_schedule("vp_v"), TeacherLossConfig(p_drop_audio=0, p_drop_both=0)).loss(
        batch, 0, torch.Generator().manual_seed(0))
    assert logs["audio_mouth"] > 0 and loss.item() == pytest.approx(plain.item() + 2.0 * logs["audio_mouth"], rel=1e-5)
    loss.backward()
    assert net.audio_mlp[0].weight.grad.abs().sum() > 0 and net.audio_probe[-1].weight.grad.abs().sum() > 0
    # fitting the probe alone lowers its error: the loss is a real training signal, not a constant
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    method = TeacherMethod(net, make_schedule("vp_v"), loss_cfg)
    cond = method.cond_from_batch(batch)
    x, t = batch["latents"], torch.full((2,), 500.0)
    first = method.audio_mouth_loss(net(x, t, cond, probe=True)[1], cond, batch).item()
    for _ in range(30):
        opt.zero_grad()
        method.audio_mouth_loss(net(x, t, cond, probe=True)[1], cond, batch).backward()
        opt.step()
    assert method.audio_mouth_loss(net(x, t, cond, probe=True)[1], cond, batch).item() < 0.5 * first


def test_audio_mouth_loss_skips_dropped_audio_and_needs_a_probe_and_labels(world):
    net = _probe_net(audio_probe=3)
    method = TeacherMethod(net, make_schedule("vp_v"), TeacherLossConfig(audio_mouth_weight=1.0))
    batch = _batch(world)
    cond = method.cond_from_batch(batch)
    read = torch.rand(2, 4, 3)
    assert method.audio_mouth_loss(read, cond, batch).item() > 0
    assert method.audio_mouth_loss(read, cond.drop(audio=True), batch).item() == 0.0
    with pytest.raises(LipstepError, match="mouth labels"):
        method.audio_mouth_loss(read, cond, {k: v for k, v in batch.items() if k != "mouth"})
    with pytest.raises(LipstepError, match="audio probe"):
        TeacherMethod(_probe_net(), make_schedule("vp_v"), TeacherLossConfig(audio_mouth_weight=1.0))


def test_train_teacher_with_the_audio_probe_audio_adaln_and_channel_context_saves_a_loadable_model(world, tmp_path):
    from lipstep.pipeline import AvatarPipeline
    from lipstep.train.loop import TrainConfig
    from lipstep.train.teacher import TeacherConfig, train_teacher

    root, _ = world
    cfg = TeacherConfig(preset="tiny", window=WindowConfig(frames=4, motion_frames=2, stride=4), val_clips=0,
                        audio_adaln=True, channel_context=True,
                        loss=TeacherLossConfig(audio_mouth_weight=1.0, snr_floor=1.0))
    cfg.train = TrainConfig(steps=2, batch_size=2, checkpoint_every=1, log_every=1)
    model = train_teacher(root / "prepared", root / "codec", tmp_path / "run", cfg, progress=False)
    pipe = AvatarPipeline.from_pretrained(model)
    assert pipe.denoiser.cfg.audio_probe == 3 and pipe.denoiser.audio_probe is not None
    assert pipe.denoiser.cfg.audio_adaln and pipe.denoiser.audio_adaln is not None
    assert pipe.denoiser.cfg.channel_context and pipe.denoiser.context_embed is not None
