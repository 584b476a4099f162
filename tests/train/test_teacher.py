"""The teacher: objective pieces, overfitting one clip, the whole `train teacher` run with resume."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.mediafixtures import make_tiny_avatar_data

from lipstep.data.dataset import WindowConfig, WindowDataset
from lipstep.diffusion.schedules import make_schedule
from lipstep.distill.losses import blink_weights, motion_weights, snr_weight
from lipstep.distill.perflow import open_teacher
from lipstep.errors import DataError, LipstepError
from lipstep.nets.dit import AvatarDiT, DiTConfig
from lipstep.train.loop import TrainConfig
from lipstep.train.mouth_head import MouthHeadConfig
from lipstep.train.teacher import (
    TeacherConfig,
    TeacherLossConfig,
    TeacherMethod,
    audio_stats,
    grown_tensors,
    resolve_patch,
    start_from,
    train_teacher,
)

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A real (tiny) synthetic world, prepared at 32 px, and an untrained tiny codec."""
    return make_tiny_avatar_data(tmp_path_factory.mktemp("teacher_world"))


def _tiny_cfg(**train) -> TeacherConfig:
    cfg = TeacherConfig(preset="tiny", window=WindowConfig(frames=4, motion_frames=2, stride=4), val_clips=1,
                        val_steps=2, val_seconds=0.4,
                        mouth_head=MouthHeadConfig(steps=30, batch_size=32, min_corr=-1))  # mechanics, not fit
    cfg.train = TrainConfig(**{"steps": 4, "batch_size": 2, "checkpoint_every": 2, "log_every": 1, **train})
    return cfg


# ------------------------------------------------------------------------------- objective pieces


def test_snr_weight_is_min_snr_gamma():
    s = make_schedule("vp_eps")
    t = torch.tensor([0.05, 0.5, 0.99])
    snr = s.snr(t)
    assert torch.allclose(snr_weight(s, t, 5.0), snr.clamp(max=5.0) / snr)
    assert torch.equal(snr_weight(s, t, 0.0), torch.ones(3))
    v = make_schedule("vp_v")
    assert torch.allclose(snr_weight(v, t, 5.0), snr.clamp(max=5.0) / (snr + 1))
    x0 = make_schedule("vp_x0")
    assert torch.allclose(snr_weight(x0, t, 5.0), (snr + 1).clamp(max=5.0))
    assert snr_weight(x0, torch.tensor([1.0]), 5.0).item() >= 1.0  # an x0 net still learns at pure noise


def test_motion_weights_favour_moving_positions():
    x0 = torch.zeros(1, 4, 2, 4, 4)
    x0[0, :, :, 1, 2] = torch.tensor([0.0, 1.0, -1.0, 2.0])[:, None]  # only (1, 2) moves
    w = motion_weights(x0, 1.0)
    assert w.shape == (1, 1, 1, 4, 4)
    assert w[0, 0, 0, 1, 2] == w.max() and w[0, 0, 0, 1, 2] > 10 and w[0, 0, 0, 0, 0] == 1.0
    assert bool((motion_weights(x0, 0.0) == 1).all())


def test_resolve_patch():
    assert resolve_patch(8, 0) == 1 and resolve_patch(16, 0) == 2 and resolve_patch(32, 0) == 4
    assert resolve_patch(16, 4) == 4
    with pytest.raises(LipstepError):
        resolve_patch(16, 3)


def test_first_chunk_training_replaces_motion_by_reference():
    net = AvatarDiT(DiTConfig.preset("tiny", latent_size=4, frames=2, motion_frames=2))
    m = TeacherMethod(net, make_schedule("vp_eps"), TeacherLossConfig(p_motion_ref=1.0, motion_noise=0.0))
    batch = {"reference_latent": torch.randn(3, 4, 4, 4), "motion_latents": torch.randn(3, 2, 4, 4, 4),
             "audio": torch.randn(3, 2, 16, 80)}
    cond = m.cond_from_batch(batch, torch.Generator().manual_seed(0))
    assert torch.equal(cond.motion, batch["reference_latent"][:, None].expand(3, 2, 4, 4, 4))
    m.cfg.p_motion_ref = 0.0
    assert torch.equal(m.cond_from_batch(batch, torch.Generator()).motion, batch["motion_latents"])


def test_motion_noise_perturbs_only_the_motion_latents_by_a_bounded_random_level():
    net = AvatarDiT(DiTConfig.preset("tiny", latent_size=4, frames=2, motion_frames=2))
    m = TeacherMethod(net, make_schedule("vp_eps"), TeacherLossConfig(p_motion_ref=0.0, motion_noise=0.3))
    batch = {"reference_latent": torch.randn(64, 4, 4, 4), "motion_latents": torch.randn(64, 2, 4, 4, 4),
             "audio": torch.randn(64, 2, 16, 80)}
    cond = m.cond_from_batch(batch, torch.Generator().manual_seed(0))
    assert torch.equal(cond.reference, batch["reference_latent"]) and torch.equal(cond.audio, batch["audio"])
    std = (cond.motion - batch["motion_latents"]).flatten(1).std(1)            # one level per sample
    assert float(std.max()) < 0.3 * 1.2 and float(std.min()) < 0.1 and float(std.mean()) == pytest.approx(0.15, abs=0.04)
    again = m.cond_from_batch(batch, torch.Generator().manual_seed(0))
    assert torch.equal(cond.motion, again.motion)                               # from the step's generator
    assert torch.equal(m.cond_from_batch(batch).motion, batch["motion_latents"])  # no generator: no noise
    m.cfg.motion_noise = 0.0
    assert torch.equal(m.cond_from_batch(batch, torch.Generator()).motion, batch["motion_latents"])


@pytest.mark.slow
def test_tiny_teacher_overfits_one_clip(world):
    """Fixed (t, eps) draws on one window: the loss must fall at least 10x."""
    from lipstep.codecs.cache import encode_prepared
    from lipstep.codecs.vae import load_codec

    codec = load_codec(world / "codec")
    cache = encode_prepared(world / "prepared", codec, progress=False)
    ds = WindowDataset(world / "prepared", "train", WindowConfig(frames=4, motion_frames=2), latents=cache,
                       pixels=False)
    batch = {k: torch.stack([ds[0][k]] * 4) for k in ("latents", "reference_latent", "motion_latents", "audio")}
    torch.manual_seed(0)
    net = AvatarDiT(DiTConfig.preset("tiny", latent_size=8, frames=4, motion_frames=2))
    method = TeacherMethod(net, make_schedule("vp_eps"), TeacherLossConfig(p_drop_audio=0, p_drop_both=0,
                                                                            p_motion_ref=0, min_snr_gamma=0))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for step in range(250):
        loss, _ = method.loss("denoiser", batch, step, torch.Generator().manual_seed(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


# ------------------------------------------------------------------------------- the whole run


def test_audio_stats_are_the_train_split_log_mel_moments(world):
    from lipstep.data.dataset import open_shard, read_manifest

    prepared = world / "prepared"
    rows = [r for r in read_manifest(prepared) if r["split"] == "train"]
    mel = torch.cat([torch.from_numpy(open_shard(prepared / r["shard"])["mel"].astype("float64")).reshape(-1)
                     for r in rows])
    mean, std = audio_stats(prepared)
    assert mean == pytest.approx(mel.mean().item(), abs=1e-6) and std == pytest.approx(mel.std().item(), rel=1e-3)
    assert mean < -1 and std > 0.5  # log-mel of real speech is far from zero mean / unit variance
    with pytest.raises(LipstepError, match="no nosuch clips"):
        audio_stats(prepared, split="nosuch")


def test_train_teacher_writes_a_model_and_resumes(world, tmp_path):
    out = tmp_path / "run"
    cfg = _tiny_cfg(steps=2)
    model = train_teacher(world / "prepared", world / "codec", out, cfg, progress=False)
    assert (model / "lipstep.json").is_file() and (model / "denoiser" / "model.safetensors").is_file()
    info = json.loads((model / "lipstep.json").read_text())
    assert info["kind"] == "teacher" and info["frames"] == 4 and info["image_size"] == 32
    assert info["trained"]["steps"] == 2
    assert sorted(p.name for p in (out / "val").iterdir())  # validation video(s) written
    assert json.loads((out / "config.json").read_text())["preset"] == "tiny"
    dit = json.loads((model / "denoiser" / "config.json").read_text())
    assert (dit["audio_mean"], dit["audio_std"]) == tuple(round(v, 4) for v in audio_stats(world / "prepared"))
    with pytest.raises(LipstepError, match="already holds a training run"):
        train_teacher(world / "prepared", world / "codec", out, cfg, progress=False)
    cfg.train.steps = 4
    train_teacher(world / "prepared", world / "codec", out, cfg, resume=True, progress=False)
    assert json.loads((model / "lipstep.json").read_text())["trained"]["steps"] == 4
    assert (out / "checkpoints" / "step_000004").is_dir()


def test_resumed_teacher_repeats_uninterrupted_losses(world, tmp_path):
    """Kill after 2 steps, resume to 4: the same EMA weights as 4 uninterrupted steps."""
    from safetensors.torch import load_file

    cfg = _tiny_cfg(steps=4)
    cfg.val_clips = 0
    train_teacher(world / "prepared", world / "codec", tmp_path / "a", cfg, progress=False)
    cfg.train.steps = 2
    train_teacher(world / "prepared", world / "codec", tmp_path / "b", cfg, progress=False)
    cfg.train.steps = 4
    train_teacher(world / "prepared", world / "codec", tmp_path / "b", cfg, resume=True, progress=False)
    a = load_file(str(tmp_path / "a" / "model" / "denoiser" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model" / "denoiser" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _relabelled_copy(prepared: Path, dest: Path, edit) -> Path:
    """The prepared world with each shard's arrays passed through ``edit(arrays, row)``."""
    from lipstep.data.dataset import open_shard, read_manifest
    from lipstep.data.prepare import write_shard

    shutil.copytree(prepared, dest, ignore=shutil.ignore_patterns("latents"))
    for row in read_manifest(dest):
        arrays = {k: np.array(v) for k, v in open_shard(dest / row["shard"]).items()}
        write_shard(dest / row["shard"], edit(arrays, row))
    return dest


def _unlabelled_copy(prepared: Path, dest: Path) -> Path:
    """The prepared world without its mouth track, as real video is prepared."""
    return _relabelled_copy(prepared, dest, lambda arrays, row: {k: v for k, v in arrays.items() if k != "mouth"})


def _one_blink(arrays, row):
    """The tiny world's 1.2-s train clip has no blink of its own: give it one."""
    from lipstep.data.blinks import PROFILE

    if row["split"] == "train":
        arrays["blink"][:] = 0
        arrays["blink"][5:10] = PROFILE
    return arrays


def test_blink_teacher_learns_the_labels_rate_and_generates_with_blinks(world, tmp_path):
    from lipstep.pipeline import load_denoiser

    prepared = _relabelled_copy(world / "prepared", tmp_path / "prepared", _one_blink)
    cfg = _tiny_cfg(steps=1)
    cfg.blink = True
    model = train_teacher(prepared, world / "codec", tmp_path / "a", cfg, progress=False)   # + a validation video
    info = json.loads((model / "lipstep.json").read_text())
    assert info["blinks_per_second"] == round(25 / 30, 4)              # one blink in 30 labelled frames
    assert load_denoiser(model / "denoiser").cfg.blink
    no_blinks = _relabelled_copy(world / "prepared", tmp_path / "none",
                                 lambda arrays, row: {**arrays, "blink": np.zeros_like(arrays["blink"])})
    with pytest.raises(DataError, match="hold no blink"):
        train_teacher(no_blinks, world / "codec", tmp_path / "b", cfg, progress=False)
    unlabelled = _relabelled_copy(world / "prepared", tmp_path / "unlabelled",
                                  lambda arrays, row: {k: v for k, v in arrays.items() if k != "blink"})
    with pytest.raises(DataError, match="pass blink=false"):
        train_teacher(unlabelled, world / "codec", tmp_path / "c", cfg, progress=False)


def test_init_fine_tunes_a_trained_teacher_and_may_switch_blinks_on(world, tmp_path):
    from lipstep.codecs.vae import CodecConfig, build_codec, save_codec
    from lipstep.pipeline import load_denoiser

    prepared = _relabelled_copy(world / "prepared", tmp_path / "prepared", _one_blink)
    cfg = _tiny_cfg(steps=1)
    cfg.val_clips = 0
    base = train_teacher(prepared, world / "codec", tmp_path / "base", cfg, progress=False)
    trained = load_denoiser(base / "denoiser")
    grown = AvatarDiT(dataclasses.replace(trained.cfg, blink=True))
    added = start_from(grown, base)
    assert {name.split(".")[0] for name in added} == {"blink_embed", "blink_space", "out_head"}  # + the head's map
    assert sorted(grown_tensors(grown)) == sorted(added) and grown_tensors(trained) == []  # what grown_lr_scale moves
    mine = grown.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in trained.state_dict().items())   # every trained tensor, the head too
    assert not grown.blink_space.any() and not grown.blink_embed[2].weight.any()     # new paths start at zero
    assert not grown.out_head.blink_map.any()
    with pytest.raises(LipstepError, match=r"not this run's net: width=64 \(this run: 128\)"):
        start_from(AvatarDiT(dataclasses.replace(trained.cfg, width=128, heads=4)), base)

    cfg.init, cfg.blink, cfg.grown_lr_scale, cfg.blink_repeat = str(base), True, 10.0, 2  # the whole run
    tuned = train_teacher(prepared, world / "codec", tmp_path / "tuned", cfg, progress=False)
    info = json.loads((tuned / "lipstep.json").read_text())
    assert info["trained"]["init"] == str(base.resolve()) and info["blinks_per_second"] > 0
    after = load_denoiser(tuned / "denoiser")
    assert after.cfg.blink and torch.equal(after.mouth_head.state_dict()["head.2.weight"],
                                           trained.mouth_head.state_dict()["head.2.weight"])  # brought, not refitted
    repeated = {name: open_teacher(model, prepared, "distill dmd", progress=False, blink_repeat=2).dataset
                for name, model in (("base", base), ("tuned", tuned))}
    assert repeated["tuned"].blink_windows > 0 and repeated["tuned"].blink_repeat == 2  # a distiller's windows
    assert repeated["base"].blink_windows == 0  # ignored for a teacher that does not read blinks
    cfg.blink = False                                                                # a blink model into a run without
    with pytest.raises(LipstepError, match="blink=true"):
        train_teacher(prepared, world / "codec", tmp_path / "shrunk", dataclasses.replace(cfg, init=str(tuned)),
                      progress=False)
    with torch.random.fork_rng(devices=[]):                                          # latents of another codec
        torch.manual_seed(7)
        save_codec(build_codec(CodecConfig(image_size=32, block_out_channels=(8, 8, 8), norm_num_groups=8)),
                   tmp_path / "other_codec")
    with pytest.raises(LipstepError, match="does not make this run's latents"):
        train_teacher(prepared, tmp_path / "other_codec", tmp_path / "recoded", dataclasses.replace(cfg, init=str(base)),
                      progress=False)
    assert not (tmp_path / "recoded" / "checkpoints").exists()
    with pytest.raises(LipstepError, match="init=.*neither a directory nor a bundled model"):
        train_teacher(prepared, world / "codec", tmp_path / "nowhere", dataclasses.replace(cfg, init=str(tmp_path / "no")),
                      progress=False)


def test_blink_frames_weigh_more_in_the_loss():
    blink = torch.tensor([[0.0, 0.3, 1.0]])
    w = blink_weights({"blink": blink}, 4.0)
    assert w.shape == (1, 3, 1, 1, 1) and torch.allclose(w.flatten(), torch.tensor([1.0, 2.2, 5.0]))
    assert blink_weights({}, 4.0) == 1.0 and blink_weights({"blink": blink}, 0.0) == 1.0


def test_unlabelled_data_needs_mouth_state_off(world, tmp_path):
    from lipstep.pipeline import load_denoiser

    prepared = _unlabelled_copy(world / "prepared", tmp_path / "prepared")
    cfg = _tiny_cfg(steps=1)
    cfg.val_clips = 0
    assert cfg.mouth_state  # the default needs mouth labels
    with pytest.raises(DataError, match="pass mouth_state=false to train on unlabelled"):
        train_teacher(prepared, world / "codec", tmp_path / "a", cfg, progress=False)
    assert not (prepared / "latents").exists()  # refused before any latent was encoded
    cfg.mouth_state = False
    model = train_teacher(prepared, world / "codec", tmp_path / "b", cfg, progress=False)
    assert load_denoiser(model / "denoiser").mouth_head is None


def test_teacher_config_rejects_bad_settings(world, tmp_path):
    from lipstep.config import apply_overrides
    from lipstep.errors import ConfigError

    cfg = TeacherConfig()
    with pytest.raises(ConfigError, match="did you mean"):
        apply_overrides(cfg, ["loss.motion_weigth=1"])
    with pytest.raises(ConfigError):
        TeacherLossConfig(p_drop_audio=0.7, p_drop_both=0.5).validate()
    for removed in ("loss.snr_floor=1", "loss.mouth_weight=1", "loss.audio_mouth_weight=1", "audio_adaln=true",
                    "expert.steps=5"):  # removed on 2026-12-05 (experiments/teacher/README.md)
        with pytest.raises(ConfigError, match="unknown config key"):
            apply_overrides(TeacherConfig(), [removed])
    with pytest.raises(ConfigError, match="motion_noise"):
        TeacherLossConfig(motion_noise=-0.1).validate()
    with pytest.raises(LipstepError):
        train_teacher(world / "prepared", tmp_path / "no_codec", tmp_path / "out", _tiny_cfg(), progress=False)
