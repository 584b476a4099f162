"""The training loop on a toy method: learning, exact resume, NaN stop, checkpoints, data order."""

import pytest
import torch
from torch import nn

from lipstep.data.dataset import batch_indices
from lipstep.distill.method import Method, Role
from lipstep.train.loop import (
    NonFiniteLoss,
    TrainConfig,
    latest_checkpoint,
    train,
)


class ToyData(torch.utils.data.Dataset):
    def __init__(self, n=40):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class ToyMethod(Method):
    """Regression with noise drawn from the step generator (so resume must restore randomness)."""

    def __init__(self, nan_at=None):
        torch.manual_seed(0)
        self.model = nn.Linear(4, 1)
        self.nan_at = nan_at
        self.losses = []

    def roles(self):
        return {"model": Role(self.model)}

    def loss(self, role, batch, step, generator):
        noise = 0.01 * torch.randn(batch["y"].shape, generator=generator)
        loss = ((self.modules["model"](batch["x"]).squeeze(-1) - batch["y"] - noise) ** 2).mean()
        if self.nan_at is not None and step >= self.nan_at:
            loss = loss * float("nan")
        self.losses.append(float(loss.detach()))
        return loss, {}


CFG = {"batch_size": 8, "lr": 0.05, "warmup_steps": 2, "ema_decay": 0.9, "log_every": 5, "seed": 3}


def test_loss_falls(tmp_path):
    method = ToyMethod()
    train(method, ToyData(), TrainConfig(steps=60, checkpoint_every=60, **CFG), tmp_path, progress=False)
    assert method.losses[-1] < method.losses[0] / 10


def test_resume_repeats_uninterrupted_losses(tmp_path):
    full = ToyMethod()
    train(full, ToyData(), TrainConfig(steps=20, checkpoint_every=10, **CFG), tmp_path / "a", progress=False)
    first = ToyMethod()
    train(first, ToyData(), TrainConfig(steps=10, checkpoint_every=10, **CFG), tmp_path / "b", progress=False)
    second = ToyMethod()  # a fresh process would start from scratch weights: resume must restore them
    train(second, ToyData(), TrainConfig(steps=20, checkpoint_every=10, **CFG), tmp_path / "b", resume=True,
          progress=False)
    assert first.losses + second.losses == pytest.approx(full.losses, rel=1e-6, abs=1e-7)


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    method = ToyMethod(nan_at=7)
    with pytest.raises(NonFiniteLoss, match="step 7.*last good checkpoint.*step_000005"):
        train(method, ToyData(), TrainConfig(steps=20, checkpoint_every=5, **CFG), tmp_path, progress=False)
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt.name == "step_000005" and (ckpt / "model" / "model.safetensors").is_file()
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_old_checkpoints_are_pruned(tmp_path):
    train(ToyMethod(), ToyData(), TrainConfig(steps=12, checkpoint_every=3, keep_checkpoints=2, **CFG), tmp_path,
          progress=False)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert names == ["step_000009", "step_000012"]


def test_resume_without_checkpoint_is_an_error(tmp_path):
    from lipstep.errors import LipstepError

    with pytest.raises(LipstepError, match="no complete checkpoint"):
        train(ToyMethod(), ToyData(), TrainConfig(steps=2, **CFG), tmp_path, resume=True, progress=False)


def test_batch_order_is_resumable_and_sharded():
    a = batch_indices(10, 3, seed=1)
    seq = [next(a) for _ in range(7)]
    b = batch_indices(10, 3, seed=1, start_step=4)
    assert [next(b) for _ in range(3)] == seq[4:]
    r0 = batch_indices(12, 3, seed=1, rank=0, world=2)
    r1 = batch_indices(12, 3, seed=1, rank=1, world=2)
    first, second = next(r0), next(r1)
    assert not set(first) & set(second)


class FastSlow(Method):
    """Two roles on a 5 : 1 cycle (a fake score and a generator)."""

    def __init__(self):
        torch.manual_seed(0)
        self.fast, self.slow = nn.Linear(4, 1), nn.Linear(4, 1)

    def roles(self):
        return {"fast": Role(self.fast, updates=5), "slow": Role(self.slow)}

    def loss(self, role, batch, step, generator):
        return ((self.modules[role](batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean(), {}


def test_each_role_is_logged_every_log_every_of_its_own_updates(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(FastSlow(), ToyData(), TrainConfig(steps=36, **{**CFG, "log_every": 3}), tmp_path, progress=False)
    events = EventAccumulator(str(tmp_path / "logs"))
    events.Reload()
    fast = [e.step for e in events.Scalars("fast/loss")]
    slow = [e.step for e in events.Scalars("slow/loss")]
    assert len(slow) == 3 and slow == [6, 18, 36]   # its 1st, 3rd and 6th update (every 6th step)
    assert len(fast) == 11 and fast[:3] == [1, 3, 7]  # its 1st, 3rd, 6th update (steps 1-5 are updates 1-5)...


class TwoRates(Method):
    """One role whose bias learns at 10x the weight's lr (Role.lr_scale)."""

    def __init__(self, scale):
        torch.manual_seed(0)
        self.model = nn.Linear(4, 1)
        self.scale = scale

    def roles(self):
        return {"model": Role(self.model, lr_scale=self.scale)}

    def loss(self, role, batch, step, generator):
        return ((self.modules["model"](batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean(), {}


def test_lr_scale_gives_named_tensors_their_own_rate_and_resumes(tmp_path):
    cfg = dict(CFG, warmup_steps=0)
    state = train(TwoRates({"bias": 10.0}), ToyData(), TrainConfig(steps=4, checkpoint_every=2, **cfg), tmp_path,
                  progress=False)
    groups = state.optimizers["model"].param_groups
    assert [g["lr"] for g in groups] == pytest.approx([0.05, 0.5]) and [len(g["params"]) for g in groups] == [1, 1]
    state = train(TwoRates({"bias": 10.0}), ToyData(), TrainConfig(steps=6, checkpoint_every=2, **cfg), tmp_path,
                  resume=True, progress=False)
    assert state.step == 6 and [g["lr"] for g in state.optimizers["model"].param_groups] == pytest.approx([0.05, 0.5])
    one = train(TwoRates({}), ToyData(), TrainConfig(steps=1, **cfg), tmp_path / "plain", progress=False)
    assert len(one.optimizers["model"].param_groups) == 1


def test_lr_scale_of_a_tensor_the_module_lacks_is_an_error(tmp_path):
    from lipstep.errors import ConfigError

    with pytest.raises(ConfigError, match="lr_scale names tensors the module lacks: beta"):
        train(TwoRates({"beta": 2.0}), ToyData(), TrainConfig(steps=1, **CFG), tmp_path, progress=False)
