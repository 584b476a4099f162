"""Contracts every recipe method inherits (issue 20): declared roles, frozen roles untouched, exact
resume, a tiny net learns. A new method joins by adding a factory to ``METHODS``."""

import copy

import pytest
import torch
from torch import nn

from lipstep.codecs.vae import CodecConfig, build_codec
from lipstep.diffusion.schedules import make_schedule
from lipstep.distill.adversarial import AdversarialConfig, AdversarialMethod
from lipstep.distill.dmd import DMDConfig, DMDMethod
from lipstep.distill.lite import LiteConfig, LiteMethod, build_lite
from lipstep.distill.losses import MixedConfig
from lipstep.distill.method import Method, Role
from lipstep.distill.perflow import PerflowConfig, PerflowMethod, build_student, guided_copy
from lipstep.errors import LipstepError
from lipstep.modeldir import ModelInfo
from lipstep.nets.discriminator import FeatureDiscriminator
from lipstep.nets.dit import AvatarDiT, DiTConfig
from lipstep.nets.identity import IdentityNet, IdentityNetConfig
from lipstep.samplers import SamplerInfo
from lipstep.train.loop import TrainConfig, latest_checkpoint, train
from lipstep.train.teacher import TeacherLossConfig, TeacherMethod

pytestmark = pytest.mark.usefixtures("one_thread")

T, M, C, S = 4, 2, 4, 8  # frames, motion frames, latent channels, latent size


class LatentWindows(torch.utils.data.Dataset):
    """Random latent windows with the keys of `lipstep.data.dataset.WindowDataset` (latent mode)."""

    def __init__(self, n=8):
        g = torch.Generator().manual_seed(0)
        self.items = [{"latents": 0.5 * torch.randn(T, C, S, S, generator=g),
                       "reference_latent": 0.5 * torch.randn(C, S, S, generator=g),
                       "motion_latents": 0.5 * torch.randn(M, C, S, S, generator=g),
                       "audio": torch.randn(T, 16, 80, generator=g)} for _ in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _net(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AvatarDiT(DiTConfig.preset("tiny", latent_channels=C, latent_size=S, patch=4, frames=T,
                                          motion_frames=M, audio_dim=80, audio_window=16))


def _perturbed(net, seed=1):
    """Non-zero weights everywhere (the zero-initialised gates would make a fresh net constant)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net


def teacher_method():
    return TeacherMethod(_net(), make_schedule("vp_x0"), TeacherLossConfig())


def perflow_method():
    teacher = _perturbed(_net()).eval().requires_grad_(False)
    cfg = PerflowConfig(solver_steps=1, mixed=MixedConfig(mode="adaptive"))
    return PerflowMethod(build_student(teacher, cfg), teacher, make_schedule("vp_x0"), cfg)


def dmd_method():
    teacher = _perturbed(_net()).eval().requires_grad_(False)
    cfg = DMDConfig(student_steps=2, fake_updates=2)
    return DMDMethod(guided_copy(teacher, "tokens", 4, 0), guided_copy(teacher, "tokens", 4, 0), teacher,
                     make_schedule("vp_x0"), cfg)


def adversarial_method():
    teacher = _perturbed(_net()).eval().requires_grad_(False)
    start = _perturbed(guided_copy(teacher, "tokens", 4, 0), seed=2).eval().requires_grad_(False)
    cfg = AdversarialConfig(distill_weight=0.1)
    disc = FeatureDiscriminator(cfg.discriminator, net_width=teacher.cfg.width,
                                grid=teacher.cfg.latent_size // teacher.cfg.patch, depth=teacher.cfg.depth)
    return AdversarialMethod(copy.deepcopy(start).train().requires_grad_(True), start, teacher, disc,
                             make_schedule("vp_x0"), cfg, steps=2, motion_frames=M)


def lite_method():
    source = _perturbed(guided_copy(_net(), "tokens", 4, 0)).eval().requires_grad_(False)
    cfg = LiteConfig(student_steps=2, id_weight=0.1, identity_net="anchor")
    torch.manual_seed(0)
    codec = build_codec(CodecConfig(image_size=16, latent_channels=C, block_out_channels=(8, 8), norm_num_groups=4))
    anchor = IdentityNet(IdentityNetConfig(image_size=16, width=4, levels=2, embed_dim=8))
    info = ModelInfo(kind="student", recipe="dmd", schedule="vp_x0",
                     sampler=SamplerInfo(name="fewstep", steps=2, cfg_audio=3.0, cfg_ref=1.5, guidance="embedded"))
    return LiteMethod(build_lite(source, cfg, 0), source, info, make_schedule("vp_x0"), cfg, codec=codec,
                      anchor=anchor, scales=(3.0, 1.5))


class TwoTimeScale(Method):
    """A toy with a fast role (3 updates per cycle), a slow one and a frozen one."""

    def __init__(self):
        torch.manual_seed(0)
        self.fast, self.slow, self.frozen = nn.Linear(C, 1), nn.Linear(C, 1), nn.Linear(C, 1)
        self.seen = []

    def roles(self):
        return {"fast": Role(self.fast, updates=3, lr=1e-2, betas=(0.0, 0.9)), "slow": Role(self.slow, weight_decay=0.0),
                "frozen": Role(self.frozen, trainable=False)}

    def loss(self, role, batch, step, generator):
        self.seen.append(role)
        x = batch["latents"].mean(dim=(1, 3, 4))                       # [B, C]
        target = self.modules["frozen"](x).detach()
        return (self.modules[role](x) - target).square().mean(), {}


METHODS = {"teacher": teacher_method, "perflow": perflow_method, "dmd": dmd_method, "adversarial": adversarial_method,
           "lite": lite_method, "two_time_scale": TwoTimeScale}


def _cfg(steps, **kw):
    return TrainConfig(steps=steps, batch_size=2, lr=1e-3, warmup_steps=0, ema_decay=0.9, checkpoint_every=2,
                       log_every=1, **kw)


def _weights(modules):
    return {r: {k: v.detach().clone() for k, v in getattr(m, "module", m).state_dict().items()}
            for r, m in modules.items()}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_roles_are_declared(name):
    method = METHODS[name]()
    roles = method.roles()
    assert roles and all(isinstance(r, Role) for r in roles.values())
    assert any(r.trainable for r in roles.values())
    assert method.phase(0) in {n for n, r in roles.items() if r.trainable}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_frozen_roles_get_no_gradient_and_stay_bit_identical(name, tmp_path):
    method = METHODS[name]()
    frozen = {n: r.module for n, r in method.roles().items() if not r.trainable}
    before = _weights(frozen)
    state = train(method, LatentWindows(), _cfg(3), tmp_path, progress=False)
    assert set(state.optimizers) == {n for n, r in method.roles().items() if r.trainable}
    for n, m in frozen.items():
        assert not m.training and all(p.grad is None and not p.requires_grad for p in m.parameters())
        assert all(torch.equal(before[n][k], v) for k, v in m.state_dict().items())
        assert not (tmp_path / "checkpoints" / "step_000003" / n).exists()  # frozen roles are not checkpointed


@pytest.mark.parametrize("name", sorted(METHODS))
def test_resume_is_exact(name, tmp_path):
    whole = METHODS[name]()
    train(whole, LatentWindows(), _cfg(4), tmp_path / "whole", progress=False)
    first = METHODS[name]()
    train(first, LatentWindows(), _cfg(2), tmp_path / "split", progress=False)
    second = METHODS[name]()
    state = train(second, LatentWindows(), _cfg(4), tmp_path / "split", resume=True, progress=False)
    assert state.step == 4
    a, b = _weights(whole.modules), _weights(second.modules)
    for role in a:
        assert all(torch.equal(a[role][k], b[role][k]) for k in a[role]), role


@pytest.mark.parametrize("name, steps, term", [("teacher", 40, None), ("perflow", 40, None), ("dmd", 40, None),
                                               ("lite", 40, "l_match")])
def test_a_tiny_net_loss_falls(name, steps, term, tmp_path):
    """The loss on one batch, at fixed draws of noise / time / guidance, falls when the loop trains on it
    (per-step losses are too noisy to compare: every step draws new times). For DMD, the first phase's role
    is the fake score, whose denoising loss on the generator's samples falls. For lite, its matching term
    (the distillation): its temporal term compares the prediction's frame-to-frame change with that of
    random ground-truth windows, a floor no student reaches here. Not for `adversarial`: a discriminator's
    and a generator's losses are a game, neither need fall (`tests/distill/test_adversarial.py` checks it)."""
    method = METHODS[name]()
    data = LatentWindows(n=2)
    batch = torch.utils.data.default_collate([data[0], data[1]])
    role = method.phase(0)

    def fixed_loss():
        with torch.no_grad():
            out = [method.loss(role, batch, 0, torch.Generator().manual_seed(s)) for s in range(8)]
            return sum(float(loss) if term is None else logs[term] for loss, logs in out)

    before = fixed_loss()
    train(method, data, _cfg(steps), tmp_path, progress=False)
    after = fixed_loss()
    assert after < 0.8 * before, (before, after)


def test_update_cadence_and_role_optimizer_settings(tmp_path):
    method = TwoTimeScale()
    state = train(method, LatentWindows(), _cfg(8), tmp_path, progress=False)
    assert method.seen == ["fast", "fast", "fast", "slow"] * 2
    fast, slow = state.optimizers["fast"].param_groups[0], state.optimizers["slow"].param_groups[0]
    assert (fast["betas"], fast["weight_decay"]) == ((0.0, 0.9), 0.01)
    assert (slow["lr"], slow["betas"], slow["weight_decay"]) == (1e-3, (0.9, 0.99), 0.0)
    assert fast["initial_lr"] == 1e-2
    assert latest_checkpoint(tmp_path) is not None


def test_a_method_without_trainable_roles_or_with_an_undeclared_phase_is_refused(tmp_path):
    class Frozen(TwoTimeScale):
        def roles(self):
            return {"frozen": Role(self.frozen, trainable=False)}

    class Stray(TwoTimeScale):
        def phase(self, step):
            return "frozen"

    with pytest.raises(LipstepError, match="no trainable role"):
        train(Frozen(), LatentWindows(), _cfg(1), tmp_path / "a", progress=False)
    with pytest.raises(LipstepError, match="not a trainable role"):
        train(Stray(), LatentWindows(), _cfg(1), tmp_path / "b", progress=False)
