"""A 2-process CPU DDP run of the training loop (gloo): gradients are synchronised across ranks."""

import json
import socket
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import json, sys, torch
    from torch import nn
    from lipstep.distill.method import Method, Role
    from lipstep.train.loop import TrainConfig, train

    class Data(torch.utils.data.Dataset):
        def __len__(self): return 32
        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            x = torch.randn(4, generator=g)
            return {"x": x, "y": x.sum()}

    class Toy(Method):
        def __init__(self):
            torch.manual_seed(0)
            self.model = nn.Linear(4, 1)
        def roles(self): return {"model": Role(self.model)}
        def loss(self, role, batch, step, generator):
            return ((self.modules["model"](batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean(), {}

    m = Toy()
    state = train(m, Data(), TrainConfig(steps=4, batch_size=4, lr=0.1, ema_decay=0, checkpoint_every=4,
                                         warmup_steps=0), sys.argv[1], progress=False)
    from accelerate import PartialState
    ps = PartialState()
    model = m.modules["model"]
    w = model.module.weight if hasattr(model, "module") else model.weight
    print("RESULT", json.dumps({"rank": ps.process_index, "world": ps.num_processes,
                                "weight": w.detach().flatten().tolist()}))
''')


def free_port() -> int:
    """A TCP port nobody listens on now (a fixed port made one run in four fail when it was taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(tmp_path, source: str) -> list[dict]:
    """Run ``source`` as a 2-process gloo job (its argument: an output directory); its RESULT lines, parsed."""
    script = tmp_path / "ddp_script.py"
    script.write_text(source)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(script), str(tmp_path / "out")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line.split("RESULT ", 1)[1]) for line in result.stdout.splitlines() if "RESULT " in line]


@pytest.mark.slow
def test_two_process_cpu_ddp_step(tmp_path):
    rows = run_two_processes(tmp_path, SCRIPT)
    assert sorted(r["rank"] for r in rows) == [0, 1] and all(r["world"] == 2 for r in rows)
    assert rows[0]["weight"] == rows[1]["weight"]  # DDP kept the replicas identical
    assert (tmp_path / "out" / "checkpoints" / "step_000004" / "model" / "model.safetensors").is_file()


METHODS_SCRIPT = textwrap.dedent('''
    import copy, hashlib, json, sys, torch
    from lipstep.diffusion.schedules import make_schedule
    from lipstep.distill.adversarial import AdversarialConfig, AdversarialMethod
    from lipstep.distill.dmd import DMDConfig, DMDMethod, with_gan_head
    from lipstep.nets.discriminator import FeatureDiscriminator
    from lipstep.distill.perflow import guided_copy
    from lipstep.nets.dit import AvatarDiT, DiTConfig
    from lipstep.train.loop import TrainConfig, train

    torch.set_num_threads(1)
    T, M, C, S = 4, 2, 4, 8  # frames, motion frames, latent channels, latent size (tests/contracts/test_methods.py)

    class Windows(torch.utils.data.Dataset):
        def __len__(self): return 8
        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return {"latents": 0.5 * torch.randn(T, C, S, S, generator=g),
                    "reference_latent": 0.5 * torch.randn(C, S, S, generator=g),
                    "motion_latents": 0.5 * torch.randn(M, C, S, S, generator=g),
                    "audio": torch.randn(T, 16, 80, generator=g)}

    def digest(module):
        module = getattr(module, "module", module)
        return hashlib.sha256(b"".join(v.detach().cpu().contiguous().numpy().tobytes()
                                       for _, v in sorted(module.state_dict().items()))).hexdigest()

    torch.manual_seed(0)
    teacher = AvatarDiT(DiTConfig.preset("tiny", latent_channels=C, latent_size=S, patch=4, frames=T,
                                         motion_frames=M, audio_dim=80, audio_window=16))
    with torch.no_grad():  # non-zero weights everywhere: zero-initialised gates would make the net constant
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    teacher.eval().requires_grad_(False)
    sch = make_schedule("vp_x0")

    def dmd(gan):
        cfg = DMDConfig(student_steps=2, fake_updates=1, gan_weight=5e-3 if gan else 0.0)
        fake = guided_copy(teacher, "tokens", 4, 0)
        fake = with_gan_head(fake, cfg.gan_head, 0) if gan else fake
        return DMDMethod(guided_copy(teacher, "tokens", 4, 0), fake, teacher, sch, cfg)

    def adversarial():
        start = guided_copy(teacher, "tokens", 4, 0).eval().requires_grad_(False)
        cfg = AdversarialConfig(distill_weight=0.1)
        disc = FeatureDiscriminator(cfg.discriminator, net_width=teacher.cfg.width, grid=S // 4,
                                    depth=teacher.cfg.depth)
        return AdversarialMethod(copy.deepcopy(start).train().requires_grad_(True), start, teacher, disc, sch, cfg,
                                 steps=2, motion_frames=M)

    from accelerate import PartialState
    for name, make in {"dmd": lambda: dmd(False), "dmd_gan": lambda: dmd(True), "adversarial": adversarial}.items():
        m = make()
        before = {r: digest(role.module) for r, role in m.roles().items()}
        train(m, Windows(), TrainConfig(steps=4, batch_size=2, lr=1e-3, warmup_steps=0, ema_decay=0,
                                        checkpoint_every=4), f"{sys.argv[1]}/{name}", progress=False)
        ps = PartialState()
        wrapped = sorted(r for r, mod in m.modules.items()
                         if isinstance(mod, torch.nn.parallel.DistributedDataParallel))
        print("RESULT", json.dumps({"method": name, "rank": ps.process_index, "world": ps.num_processes,
                                    "wrapped": wrapped, "before": before,
                                    "after": {r: digest(mod) for r, mod in m.modules.items()}}))
''')


@pytest.mark.slow
def test_two_process_cpu_ddp_multi_role_methods(tmp_path):
    """DMD (plain and with DMD2's GAN head on the fake score) and an adversarial round under DDP: every
    trainable role (one optimizer each) steps on both ranks and stays in sync; frozen roles are neither wrapped
    nor touched. Four steps give each role a second forward, where DDP fails on a gradient the first step left
    unreduced (an unused parameter, or a partial forward of another role with gradient)."""
    rows = run_two_processes(tmp_path, METHODS_SCRIPT)
    trained = {"dmd": ["fake_score", "generator"], "dmd_gan": ["fake_score", "generator"],
               "adversarial": ["discriminator", "student"]}
    frozen = {"dmd": ["real_score"], "dmd_gan": ["real_score"], "adversarial": ["feature_net", "reference"]}
    for name, roles in trained.items():
        mine = [r for r in rows if r["method"] == name]
        assert sorted(r["rank"] for r in mine) == [0, 1] and all(r["world"] == 2 for r in mine), name
        assert all(r["wrapped"] == roles for r in mine), name
        for role in roles:
            assert mine[0]["after"][role] == mine[1]["after"][role], (name, role)  # replicas identical
            assert all(r["after"][role] != r["before"][role] for r in mine), (name, role)  # and it trained
        for role in frozen[name]:
            assert all(r["after"][role] == r["before"][role] for r in mine), (name, role)
