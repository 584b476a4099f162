"""FADA recipe: student construction, targets, one step of every mode, the pair bank, the whole run."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from lipstep.data.dataset import WindowConfig, WindowDataset
from lipstep.diffusion.cond import Cond
from lipstep.diffusion.schedules import make_schedule
from lipstep.distill.losses import MixedConfig
from lipstep.distill.perflow import (
    PairBank,
    PerflowConfig,
    PerflowMethod,
    PerflowRecipe,
    build_pair_bank,
    build_student,
    pair_settings,
    perflow_targets,
    teacher_window_solve,
)
from lipstep.errors import IntegrityError, LipstepError
from lipstep.nets.dit import CFGTokens
from lipstep.pipeline import AvatarPipeline, read_info
from lipstep.samplers.perflow import window_end_estimate
from lipstep.train.loop import TrainConfig
from lipstep.train.mouth_head import MouthHeadConfig
from lipstep.train.runner import run_recipe
from lipstep.train.teacher import TeacherConfig, train_teacher
from tests.mediafixtures import make_tiny_avatar_data

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny world and a tiny teacher trained for a few steps (mechanics, not quality)."""
    root = make_tiny_avatar_data(tmp_path_factory.mktemp("perflow_world"))
    cfg = TeacherConfig(preset="tiny", window=WindowConfig(frames=4, motion_frames=2), val_clips=0,
                        mouth_head=MouthHeadConfig(steps=30, batch_size=32, min_corr=-1))  # mechanics, not fit
    cfg.train = TrainConfig(steps=3, batch_size=2, checkpoint_every=3)
    cfg.sampler.steps = 3
    train_teacher(root / "prepared", root / "codec", root / "teacher", cfg, progress=False)
    return root


@pytest.fixture(scope="module")
def teacher(world):
    pipe = AvatarPipeline.from_pretrained(world / "teacher" / "model")
    # give the zero-initialised parts of the tiny teacher weights, so outputs depend on everything
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pipe.denoiser.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return pipe


def _batch(world, teacher, n=2):
    from lipstep.codecs.cache import encode_prepared

    cache = encode_prepared(world / "prepared", teacher.codec, progress=False)
    ds = WindowDataset(world / "prepared", "train", WindowConfig(frames=4, motion_frames=2), latents=cache,
                       pixels=False)
    return torch.utils.data.default_collate([ds[i] for i in range(n)]), ds


def _inputs(teacher, b=2):
    g = torch.Generator().manual_seed(3)
    c, s = teacher.denoiser.cfg.latent_channels, teacher.denoiser.cfg.latent_size
    x = torch.randn(b, 4, c, s, s, generator=g)
    cond = Cond(reference=torch.randn(b, c, s, s, generator=g), audio=torch.randn(b, 4, 16, 80, generator=g),
                motion=torch.randn(b, 2, c, s, s, generator=g))
    return x, torch.tensor([700.0, 200.0]), cond


def test_cfg_tokens_reduce_to_gamma_a_at_unit_scales():
    tok = CFGTokens(3, 8)
    emb = tok(torch.tensor([[1.0, 1.0], [2.0, 1.0]]))
    assert torch.allclose(emb[0], tok.gamma_a)
    assert torch.allclose(emb[1], 2 * tok.gamma_a - tok.gamma_r)


@pytest.mark.parametrize("mode", ["none", "time", "plain", "tokens"])
def test_student_starts_equal_to_the_teacher(teacher, mode):
    student = build_student(teacher.denoiser, PerflowConfig(cfg_mode=mode)).eval()
    x, t, cond = _inputs(teacher)
    scaled = dataclasses.replace(cond, cfg_scales=torch.tensor([[4.0, 2.0], [1.0, 1.0]]) if mode != "none" else None)
    with torch.no_grad():
        assert torch.equal(student(x, t, scaled), teacher.denoiser(x, t, cond))


def test_teacher_window_solve_with_one_step_is_one_ddim_step(teacher):
    sch = teacher.schedule
    x, _, cond = _inputs(teacher)
    start, end = torch.tensor([1.0, 0.5], dtype=torch.float64), torch.tensor([0.75, 0.25], dtype=torch.float64)
    ones = torch.ones(2, 2)
    z = teacher_window_solve(teacher.model_fn(), x, start, end, cond, ones, 1)
    pred = teacher.denoiser(x, sch.model_time(start.float()), cond)
    a1, s1 = sch.coeffs(end, x)
    expect = a1 * sch.to_x0(pred, x, start.float()) + s1 * sch.to_eps(pred, x, start.float())
    assert torch.allclose(z, expect.float(), atol=1e-5)


def test_student_with_the_exact_target_lands_on_the_teacher_window_end(teacher):
    """If the student outputs eps*, one PeRFlow step from the window start reproduces the teacher's solve."""
    sch = teacher.schedule
    x, _, cond = _inputs(teacher)
    start, end = torch.tensor([1.0, 0.5], dtype=torch.float64), torch.tensor([0.75, 0.25], dtype=torch.float64)
    scales = torch.tensor([[3.0, 1.5], [2.0, 1.0]])
    z_start = sch.add_noise(x, torch.randn_like(x), start).float()
    z_end = teacher_window_solve(teacher.model_fn(), z_start, start, end, cond, scales, 4)
    eps_star = perflow_targets(sch, z_start, z_end, start, end, "ddim_eps")
    a, s = sch.coeffs(start, z_start)
    native = sch.target((z_start - s * eps_star) / a, eps_star, start)  # the v whose eps reading is eps*
    est = window_end_estimate(sch, native, z_start, start.float(), start, end, "ddim_eps")
    assert torch.allclose(est, z_end, atol=1e-4)


@pytest.mark.parametrize("mode, mixed", [("tokens", "adaptive"), ("tokens", "off"), ("plain", "fixed:0.2"),
                                         ("time", "adaptive-unlimited"), ("none", "fixed:1.0")])
def test_one_step_changes_only_the_student_and_the_teacher_stays_bit_identical(world, teacher, mode, mixed):
    batch, _ = _batch(world, teacher)
    cfg = PerflowConfig(cfg_mode=mode, solver_steps=2, mixed=MixedConfig(mode=mixed))
    before_teacher = {k: v.clone() for k, v in teacher.denoiser.state_dict().items()}
    student = build_student(teacher.denoiser, cfg)
    before_student = {k: v.clone() for k, v in student.state_dict().items()}
    method = PerflowMethod(student, teacher.denoiser, teacher.schedule, cfg)
    opt = torch.optim.SGD(student.parameters(), lr=1e-2)
    loss, logs = method.loss("student", batch, 0, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and "l_distill" in logs and (mixed == "off") == ("l_gt" not in logs)
    loss.backward()
    assert all(p.grad is None for p in teacher.denoiser.parameters())
    opt.step()
    after_teacher = teacher.denoiser.state_dict()
    assert all(torch.equal(before_teacher[k], after_teacher[k]) for k in before_teacher)
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, before_student[k])]
    assert changed
    if mode in ("tokens", "plain"):
        assert any("cfg" in k for k in changed)  # the new guidance layers learn from the first step


def test_mixed_weight_at_the_start_is_w0(world, teacher):
    """At step 0 the student is the teacher, so R = 1 and the adaptive weight is W0 = 0.2."""
    batch, _ = _batch(world, teacher)
    cfg = PerflowConfig(solver_steps=1)
    method = PerflowMethod(build_student(teacher.denoiser, cfg), teacher.denoiser, teacher.schedule, cfg)
    _, logs = method.loss("student", batch, 0, torch.Generator().manual_seed(0))
    assert logs["ratio"] == pytest.approx(1.0, rel=1e-4)
    assert logs["w_gt"] == pytest.approx(0.2, rel=1e-4)


def test_pair_bank_is_resumable_and_refuses_other_settings(world, teacher, tmp_path):
    _, ds = _batch(world, teacher)
    cfg = PerflowConfig(solver_steps=1)
    method = PerflowMethod(build_student(teacher.denoiser, cfg), teacher.denoiser, teacher.schedule, cfg)
    settings = pair_settings(cfg, teacher.path, world / "prepared")
    build_pair_bank(method, ds, 70, tmp_path / "bank", settings, batch_size=16, progress=False)
    parts = sorted((tmp_path / "bank").glob("part_*.safetensors"))
    assert len(parts) == 2
    first = parts[0].stat().st_mtime_ns
    build_pair_bank(method, ds, 70, tmp_path / "bank", settings, progress=False)  # nothing to redo
    assert parts[0].stat().st_mtime_ns == first
    bank = PairBank(tmp_path / "bank", 70)
    assert len(bank) == 70 and bank[0]["z_end"].shape == bank[0]["latents"].shape
    loss, _ = method.loss("student", torch.utils.data.default_collate([bank[i] for i in range(3)]), 0,
                          torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    with pytest.raises(LipstepError, match="other settings .*solver_steps"):
        build_pair_bank(method, ds, 70, tmp_path / "bank", {**settings, "solver_steps": 2}, progress=False)
    # a damaged bank is one error naming the file: flipped or truncated parts, a garbage index
    assert sorted(json.loads((tmp_path / "bank" / "checksums.json").read_text())["sha256"]) == [p.name for p in parts]
    data = bytearray(parts[1].read_bytes())
    data[-1] ^= 1
    parts[1].write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"part_00001.safetensors is damaged \(sha256 mismatch\)"):
        PairBank(tmp_path / "bank", 70)
    (tmp_path / "bank" / "checksums.json").unlink()   # a bank from before checksums: its parts are still read
    parts[1].write_bytes(bytes(data[:200]))
    with pytest.raises(IntegrityError, match=r"part_00001.safetensors is damaged or truncated"):
        PairBank(tmp_path / "bank", 70)
    for garbage in ("{not json", "[1, 2]", '{"settings": 3}'):
        (tmp_path / "bank" / "bank.json").write_text(garbage)
        with pytest.raises(IntegrityError, match=r"bank.json is damaged"):
            build_pair_bank(method, ds, 70, tmp_path / "bank", settings, progress=False)


def test_distill_perflow_writes_a_student_that_generates(world, tmp_path):
    cfg = PerflowConfig(solver_steps=1, student_steps=6, pairs=8, val_clips=1, val_seconds=0.4)
    cfg.train = TrainConfig(steps=2, batch_size=2, checkpoint_every=2, log_every=1)
    model = run_recipe(PerflowRecipe(world / "teacher" / "model", cfg), world / "prepared", tmp_path / "run", progress=False)
    info = read_info(model)
    assert (info.kind, info.recipe, info.sampler.name, info.sampler.options["windows"]) == ("student", "perflow", "perflow", 4)
    assert info.sampler.guidance == "embedded" and info.nfe_per_chunk() == 6
    assert json.loads((tmp_path / "run" / "distill.json").read_text())["steps"] == 2
    pipe = AvatarPipeline.from_pretrained(model)
    res = pipe(np.zeros((32, 32, 3), np.uint8), np.zeros(8000, np.float32))
    assert res.frames.shape == (12, 32, 32, 3) and res.nfe == 6 * 3  # 0.5 s = 12 frames = 3 chunks of 4
    with pytest.raises(LipstepError, match="at least 4 steps"):
        pipe(np.zeros((32, 32, 3), np.uint8), np.zeros(8000, np.float32), steps=3)
    with pytest.raises(LipstepError, match="needs a teacher"):
        run_recipe(PerflowRecipe(model, cfg), world / "prepared", tmp_path / "again", progress=False)
    with pytest.raises(LipstepError, match="already holds a training run"):
        run_recipe(PerflowRecipe(world / "teacher" / "model", cfg), world / "prepared", tmp_path / "run", progress=False)


def test_config_checks():
    from lipstep.errors import ConfigError

    with pytest.raises(ConfigError, match="student_steps"):
        PerflowConfig(student_steps=3).validate()
    with pytest.raises(ConfigError, match="needs target=ddim_eps"):
        PerflowConfig(target="velocity").validate()
    PerflowConfig(target="velocity", mixed=MixedConfig(mode="off")).validate()
    with pytest.raises(ConfigError, match="cfg_audio_range"):
        PerflowConfig(cfg_audio_range=(3.0, 1.0)).validate()
    assert make_schedule("vp_v").prediction == "v"


@pytest.mark.parametrize("extra, message", [
    ([], "is not a prepared directory"),
    (["windows=0"], "windows must be >= 1"),
    (["cfg_mod=tokens"], "did you mean"),
    (["mixed.mode=sometimes"], "mixed.mode must be"),
])
def test_cli_errors_are_one_line(tmp_path, extra, message):
    from tests.test_cli import run_cli

    r = run_cli("distill", "perflow", "--data", tmp_path / "missing", "--out", tmp_path / "run", *extra)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def test_distill_perflow_resumes_with_its_pair_bank(world, tmp_path):
    cfg = PerflowConfig(solver_steps=1, pairs=6, val_clips=0, mixed=MixedConfig(mode="off"))
    cfg.train = TrainConfig(steps=2, batch_size=2, checkpoint_every=1, log_every=1)
    run_recipe(PerflowRecipe(world / "teacher" / "model", cfg), world / "prepared", tmp_path / "run", progress=False)
    bank = sorted((tmp_path / "run" / "pairs").glob("part_*.safetensors"))
    stamp = bank[0].stat().st_mtime_ns
    cfg.train.steps = 3
    model = run_recipe(PerflowRecipe(world / "teacher" / "model", cfg), world / "prepared", tmp_path / "run", resume=True,
                            progress=False)
    assert json.loads((tmp_path / "run" / "distill.json").read_text())["steps"] == 3
    assert bank[0].stat().st_mtime_ns == stamp  # the bank was reused, not solved again
    assert read_info(model).trained["steps"] == 3
