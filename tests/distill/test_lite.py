"""TempoSyncDiff's lightweight student: its size, the grid draw, the identity and temporal regularisers, the
targets (source chain, teacher output matching, data), and a whole run through the CLI and the pipeline."""

import dataclasses

import numpy as np
import pytest
import torch

from lipstep.audio.visemes import save_viseme_classifier
from lipstep.cli import main
from lipstep.codecs.vae import CodecConfig, build_codec
from lipstep.diffusion.denoiser import Denoiser
from lipstep.diffusion.guidance import multi_cfg
from lipstep.diffusion.schedules import make_schedule
from lipstep.distill.lite import (
    ANCHOR_IDENTITY,
    LiteConfig,
    LiteMethod,
    build_lite,
    decode_chunk,
    draw_index,
    flops_ratio,
    identity_loss,
    kept_blocks,
    lite_dit,
    temporal_loss,
)
from lipstep.distill.losses import batch_cond
from lipstep.distill.perflow import guided_copy
from lipstep.errors import ConfigError, LipstepError
from lipstep.modeldir import BUNDLED_ROOT, ModelInfo
from lipstep.nets.dit import AvatarDiT, DiTConfig, forward_flops
from lipstep.nets.eyes import EyeConfig, EyeNet, save_eye_net
from lipstep.nets.identity import IdentityNet, IdentityNetConfig, load_identity
from lipstep.pipeline import AvatarPipeline, read_info
from lipstep.samplers import SamplerInfo
from tests.audio.test_visemes import tiny_net
from tests.contracts.test_methods import LatentWindows, _net, _perturbed

pytestmark = pytest.mark.usefixtures("one_thread")
SCH = make_schedule("vp_x0")


def _frames(b=2, t=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, 3, size, size, generator=g) * 2 - 1


def _anchor():
    torch.manual_seed(0)
    return IdentityNet(IdentityNetConfig(image_size=16, width=4, levels=2, embed_dim=8)).eval()


def _codec():
    torch.manual_seed(0)
    return build_codec(CodecConfig(image_size=16, latent_channels=4, block_out_channels=(8, 8), norm_num_groups=4))


def _source_info(guidance="embedded", name="fewstep"):
    return ModelInfo(kind="student", recipe="dmd", schedule="vp_x0",
                     sampler=SamplerInfo(name=name, steps=2, cfg_audio=3.0, cfg_ref=1.5, guidance=guidance))


def _method(**kw) -> LiteMethod:
    source = _perturbed(guided_copy(_net(), "tokens", 4, 0)).eval().requires_grad_(False)
    cfg = LiteConfig(student_steps=2, **{"id_weight": 0.1, "identity_net": "x", **kw})
    return LiteMethod(_perturbed(build_lite(source, cfg, 0)), source, _source_info(), SCH, cfg, codec=_codec(),
                      anchor=_anchor(), scales=(3.0, 1.5))


def _batch(n=2):
    data = LatentWindows(n)
    return torch.utils.data.default_collate([data[i] for i in range(n)])


# ---------------------------------------------------------------------------------------------
# the student network


def test_the_student_is_a_fraction_of_the_source_in_flops_with_its_layout():
    src = DiTConfig(latent_channels=12, latent_size=32, patch=4, width=192, depth=6, heads=6, out_head=64,
                    cfg_layer="tokens", mouth_state=3)
    default = lite_dit(src, LiteConfig())
    assert (default.width, default.heads, default.depth, default.out_head) == (192, 6, 1, 32)
    lite = lite_dit(src, LiteConfig(width_factor=0.5, depth_factor=0.5, init="scratch"))
    assert (lite.width, lite.heads, lite.depth, lite.out_head, lite.cfg_layer) == (96, 3, 3, 32, "none")
    assert lite.width // lite.heads == src.width // src.heads  # the same head width
    assert (lite.latent_channels, lite.patch, lite.mouth_state, lite.audio_window) == (12, 4, 3, 16)
    source = _net()
    student = build_lite(source, LiteConfig(width_factor=0.5, depth_factor=0.5), 0)
    batch = _batch(1)
    g_student, g_source = flops_ratio(student, source)
    assert 0 < g_student < 0.6 * g_source
    assert forward_flops(source, batch["latents"], torch.ones(1), _cond(batch)) == round(g_source * 1e9)
    short = dataclasses.replace(_cond(batch), audio=batch["audio"][:, :2])
    assert forward_flops(source, batch["latents"][:, :2], torch.ones(1), short) < g_source * 1e9  # fewer frames


def _cond(batch):
    return batch_cond(batch)


def test_a_shallower_student_can_start_from_the_source_layers():
    assert kept_blocks(6, 3) == [0, 2, 5] and kept_blocks(6, 1) == [5] and kept_blocks(2, 4) == [0, 1]
    source = _perturbed(_net())
    cfg = LiteConfig(width_factor=1, depth_factor=0.5, init="source")
    student = build_lite(source, cfg, 0)
    assert student.cfg.depth == 1
    for name, value in student.state_dict().items():
        key = name.replace("blocks.0.", "blocks.1.")
        assert torch.equal(value, source.state_dict()[key]), name
    with pytest.raises(ConfigError, match="width_factor=1"):
        LiteConfig(init="source", width_factor=0.5).validate()


def test_the_mouth_head_is_copied_and_frozen():
    cfg = DiTConfig.preset("tiny", latent_channels=4, latent_size=8, patch=4, frames=4, motion_frames=2,
                           audio_dim=80, audio_window=16, mouth_state=3, mouth_head_width=8)
    torch.manual_seed(3)
    source = AvatarDiT(cfg)
    student = build_lite(source, LiteConfig(), 0)
    for a, b in zip(student.mouth_head.state_dict().values(), source.mouth_head.state_dict().values()):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in student.mouth_head.parameters())


# ---------------------------------------------------------------------------------------------
# the grid draw and the regularisers


def test_the_grid_draw_favours_the_one_step_start_and_covers_every_index():
    ks = [draw_index(0, s, 4, 0.5) for s in range(2000)]
    share = ks.count(0) / len(ks)
    assert 0.45 < share < 0.55 and set(ks) == {0, 1, 2, 3}
    assert all(draw_index(0, s, 1, 0.0) == 0 for s in range(20))
    assert ks == [draw_index(0, s, 4, 0.5) for s in range(2000)]  # the same on every process


def test_temporal_loss_is_zero_for_the_ground_truth_motion_and_grows_with_flicker():
    real = _frames()
    assert torch.allclose(temporal_loss(real, real), torch.zeros(2))
    assert torch.allclose(temporal_loss(real + 0.3, real), torch.zeros(2), atol=1e-6)  # an offset is not motion
    g = torch.Generator().manual_seed(1)
    losses = [float(temporal_loss(real + s * torch.randn(real.shape, generator=g), real).mean())
              for s in (0.01, 0.05, 0.2)]
    assert 0 < losses[0] < losses[1] < losses[2]
    mouth = real.clone()
    mouth[:, 1::2, :, -3:] += 0.5  # flicker in the lower rows only counts more
    top = real.clone()
    top[:, 1::2, :, :3] += 0.5
    assert float(temporal_loss(mouth, real).mean()) > float(temporal_loss(top, real).mean())
    assert torch.equal(temporal_loss(real[:, :1], real[:, :1]), torch.zeros(2))


def test_identity_loss_is_zero_for_the_reference_and_grows_with_perturbation():
    anchor = _anchor()
    ref = _frames(2, 1, seed=4)[:, 0]
    same = ref[:, None].expand(2, 4, 3, 16, 16)
    assert torch.allclose(identity_loss(anchor, same, ref), torch.zeros(2), atol=1e-5)
    g = torch.Generator().manual_seed(2)
    losses = [float(identity_loss(anchor, same + s * torch.randn(same.shape, generator=g), ref).mean())
              for s in (0.05, 0.3, 1.0)]
    assert 0 < losses[0] < losses[1] < losses[2]
    big = torch.nn.functional.interpolate(same.flatten(0, 1), size=32).unflatten(0, (2, 4))
    assert torch.allclose(identity_loss(anchor, big, ref), torch.zeros(2), atol=0.05)  # resized to its size


def test_decode_chunk_undoes_the_residual_space():
    codec = _codec()
    ref, z = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 4, 8, 8)
    with torch.no_grad():
        direct = codec.decode(z.flatten(0, 1)).unflatten(0, (2, 3))
        assert torch.allclose(decode_chunk(codec, (z - ref[:, None]) * 4.0, ref, 4.0), direct, atol=1e-5)
        assert torch.equal(decode_chunk(codec, z, ref, 0.0), direct)


# ---------------------------------------------------------------------------------------------
# the method


def test_step_distillation_matches_the_source_on_its_own_chain_and_trains_only_the_student():
    m = _method()
    assert set(m.roles()) == {"student", "source", "codec", "anchor"}
    assert [n for n, r in m.roles().items() if r.trainable] == ["student"]
    batch, gen = _batch(), torch.Generator().manual_seed(0)
    cond = _cond(batch)
    x_k, target = m.state_and_target(batch["latents"], cond, 0, gen)
    t = torch.ones(2)
    assert torch.allclose(target, SCH.to_x0(m.source_pred(x_k, t, cond), x_k, t))
    assert not torch.allclose(target, batch["latents"])
    loss, logs = m.loss("student", batch, 0, torch.Generator().manual_seed(0))
    assert set(logs) >= {"l_match", "l_temp", "l_id", "k"} and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in m.source.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.student.parameters())


def test_the_source_reads_its_embedded_guidance_and_a_teacher_source_is_guided_by_three_passes():
    m = _method()
    batch = _batch()
    cond = _cond(batch)
    x, t = torch.randn_like(batch["latents"]), torch.full((2,), 0.5)
    a = m.source_pred(x, t, cond)
    m.scales = (1.0, 1.0)
    assert not torch.allclose(a, m.source_pred(x, t, cond))  # the scales reach the CFG tokens
    teacher = _perturbed(_net()).eval().requires_grad_(False)
    cfg = LiteConfig(student_steps=2, id_weight=0, temp_weight=0)
    mt = LiteMethod(build_lite(teacher, cfg, 0), teacher, _source_info("cfg", "ddim"), SCH, cfg, scales=(2.0, 1.0))
    assert set(mt.roles()) == {"student", "source"} and not mt.fewstep_source
    want = multi_cfg(Denoiser(teacher, SCH), torch.full((2,), 2.0), torch.full((2,), 1.0))(x, t, cond)
    assert torch.allclose(mt.source_pred(x, t, cond), want)
    x_k, _ = mt.state_and_target(batch["latents"], cond, 1, torch.Generator().manual_seed(0))
    eps = torch.randn(batch["latents"].shape, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(x_k, SCH.add_noise(batch["latents"], eps, mt.grid[1].expand(2)).float(), atol=1e-6)


def test_without_distillation_the_target_is_the_data_and_no_source_is_needed():
    source = _net()
    cfg = LiteConfig(student_steps=2, target="data", id_weight=0, temp_weight=0)
    m = LiteMethod(build_lite(source, cfg, 0), None, None, SCH, cfg)
    assert set(m.roles()) == {"student"}
    batch = _batch()
    _, target = m.state_and_target(batch["latents"], _cond(batch), 1, torch.Generator().manual_seed(0))
    assert torch.equal(target, batch["latents"])


def test_config_and_construction_errors():
    for bad in ({"width_factor": 0}, {"depth_factor": 1.5}, {"target": "teacher"}, {"first_step_share": 2},
                {"mouth_rows": 0}, {"max_flops_ratio": 0}, {"blink_repeat": -1}):
        with pytest.raises(ConfigError):
            LiteConfig(**{"identity_net": "x", **bad}).validate()
    cfg = LiteConfig(student_steps=2, id_weight=0)
    with pytest.raises(LipstepError, match="codec"):
        LiteMethod(build_lite(_net(), cfg, 0), _net(), _source_info(), SCH, cfg)
    with pytest.raises(LipstepError, match="source"):
        LiteMethod(build_lite(_net(), cfg, 0), None, None, SCH, dataclasses.replace(cfg, temp_weight=0))


# ---------------------------------------------------------------------------------------------
# a whole run


def test_a_lite_run_through_the_cli_and_the_pipeline(world, tmp_path, capsys):
    prepared, teacher = str(world / "prepared"), str(world / "teacher" / "model")

    def run(args):
        with pytest.raises(SystemExit) as done:
            main(args)
        assert done.value.code == 0, capsys.readouterr().err

    run(["distill", "dmd", "--data", prepared, "--out", str(tmp_path / "dmd"), "--teacher", teacher, "--steps", "2",
         "--batch-size", "2", "student_steps=2", "fake_updates=1", "val_clips=0"])
    source = str(tmp_path / "dmd" / "model")
    # a source that blinks with an eye net: its student keeps the eye net and the rate
    dmd = AvatarPipeline.from_pretrained(source)
    save_eye_net(EyeNet(EyeConfig(latent_channels=dmd.codec.latent_channels, hidden=4, dilations=(1,),
                                  latent_size=dmd.info.image_size // dmd.codec.downsample)),
                 tmp_path / "eyes", train={"blinks_per_second": 0.5})
    dmd.attach_eyes(tmp_path / "eyes")
    dmd.save_pretrained(tmp_path / "dmd_eyes")
    run(["distill", "lite", "--data", prepared, "--out", str(tmp_path / "lite"), "--source",
         str(tmp_path / "dmd_eyes"), "--teacher", teacher, "--steps", "2", "--batch-size", "2", "id_weight=0",
         "student_steps=2", "val_clips=1", "val_seconds=0.5", "max_flops_ratio=1"])
    info = read_info(tmp_path / "lite" / "model")
    assert info.blinks_per_second == 0.5 and (tmp_path / "lite" / "model" / "eyes" / "model.safetensors").is_file()
    assert (info.recipe, info.sampler.name, info.sampler.steps, info.nfe_per_chunk()) == ("lite", "fewstep", 2, 2)
    assert info.trained["gflops"] < info.trained["source_gflops"] and info.trained["target"] == "source"
    res = AvatarPipeline.from_pretrained(tmp_path / "lite" / "model")(np.zeros((32, 32, 3), np.uint8),
                                                                        np.zeros(8000, np.float32), steps=1)
    assert res.frames.shape == (12, 32, 32, 3) and res.nfe == 3
    save_viseme_classifier(tiny_net(), tmp_path / "vis")  # untrained: the mechanics of a viseme student
    run(["distill", "lite", "--data", prepared, "--out", str(tmp_path / "lite_vis"), "--source", source, "--teacher",
         teacher, "--steps", "2", "--batch-size", "2", "id_weight=0", "student_steps=2", "val_clips=0",
         "max_flops_ratio=1", "audio=viseme", f"viseme_classifier={tmp_path / 'vis'}"])
    vis = AvatarPipeline.from_pretrained(tmp_path / "lite_vis" / "model")
    assert vis.eyes is None and vis.info.blinks_per_second == 0  # from the source without one
    assert (vis.denoiser.cfg.audio_dim, vis.denoiser.cfg.audio_window, vis.audio_encoder.cfg.kind) == (15, 5, "viseme-audio")
    res = vis(np.zeros((32, 32, 3), np.uint8), np.zeros(8000, np.float32), steps=1)
    assert res.frames.shape == (12, 32, 32, 3)
    capsys.readouterr()
    with pytest.raises(SystemExit) as bad:  # too many FLOPs for the bar
        main(["distill", "lite", "--data", prepared, "--out", str(tmp_path / "x"), "--source", source,
              "--teacher", teacher, "--steps", "1", "id_weight=0", "width_factor=1", "depth_factor=1"])
    err = capsys.readouterr().err
    assert bad.value.code != 0 and "FLOPs" in err and len(err.strip().splitlines()) == 1


def test_the_default_anchor_is_bundled_and_is_not_the_evaluators_encoder():
    anchor = load_identity(ANCHOR_IDENTITY)
    evaluator = BUNDLED_ROOT / "evaluators" / "identity"
    assert anchor.cfg.name != load_identity(evaluator).cfg.name
    assert (ANCHOR_IDENTITY / "model.safetensors").read_bytes() != (evaluator / "model.safetensors").read_bytes()
    with pytest.raises(LipstepError):
        load_identity(BUNDLED_ROOT / "no-such-encoder")
