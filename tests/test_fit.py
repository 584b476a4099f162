"""`lipstep.fit`: the small AdamW loop of the codec, the evaluators and the mouth-state head."""

import math

import numpy as np
import pytest
import torch

from lipstep.errors import LipstepError
from lipstep.fit import fit, lr_factor, pearson

pytestmark = pytest.mark.usefixtures("one_thread")


def _regression(seed: int = 0, **kw):
    """Fit y = x @ w_true + 0.5 with a linear layer on seeded random batches; (model, history)."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 1)
    gen = torch.Generator().manual_seed(seed)
    w_true = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])

    def step(_):
        x = torch.randn(16, 4, generator=gen)
        return torch.nn.functional.mse_loss(model(x), x @ w_true + 0.5)

    return model, fit(model.parameters(), step, **({"steps": 150, "lr": 0.05, "progress": False} | kw))


def test_the_loss_falls_on_a_tiny_regression():
    _, history = _regression()
    assert len(history.losses) == 150 and all(math.isfinite(v) for v in history.losses)
    assert np.mean(history.losses[-10:]) < 0.01 * np.mean(history.losses[:10])
    assert history.seconds > 0


def test_a_seeded_fit_is_reproducible_and_leaves_no_gradients():
    kw = {"schedule": "cosine", "warmup_steps": 10, "floor": 0.1, "grad_clip": 1.0, "weight_decay": 0.0}
    a, ha = _regression(**kw)
    b, hb = _regression(**kw)
    assert ha.losses == hb.losses
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert all(p.grad is None for p in a.parameters())
    _, other = _regression(seed=1, **kw)
    assert other.losses != ha.losses


def test_schedule_warms_up_linearly_then_follows_the_cosine_to_the_floor():
    steps, warm, floor = 110, 10, 0.1
    f = [lr_factor(k, steps=steps, schedule="cosine", warmup_steps=warm, floor=floor) for k in range(steps + 1)]
    assert f[:warm] == pytest.approx([(k + 1) / warm for k in range(warm)])
    assert f[warm] == 1.0                                           # the peak right after the warm-up
    assert f[warm + 50] == pytest.approx(floor + (1 - floor) / 2)   # half-way down the cosine
    assert f[steps] == pytest.approx(floor)                         # reached at the end, never below
    assert all(a >= b for a, b in zip(f[warm:], f[warm + 1:]))      # decays monotonically
    assert [lr_factor(k, steps=20, warmup_steps=4) for k in range(20)] == [0.25, 0.5, 0.75] + [1.0] * 17


def test_fit_applies_the_schedule_to_adamw():
    seen = []
    p = torch.nn.Parameter(torch.zeros(2))

    def step(k):
        return (p - 1).square().sum(), {"k": k}

    real = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return real(self, *args, **kwargs)

    torch.optim.AdamW.step = spy
    try:
        history = fit([p], step, steps=8, lr=0.5, schedule="cosine", warmup_steps=2, floor=0.2, progress=False)
    finally:
        torch.optim.AdamW.step = real
    expected = [0.5 * lr_factor(k, steps=8, schedule="cosine", warmup_steps=2, floor=0.2) for k in range(8)]
    assert seen == expected
    assert history.scalars == {"k": [float(k) for k in range(8)]}


def test_gradient_clipping_bounds_the_update():
    p = torch.nn.Parameter(torch.zeros(3))
    fit([p], lambda _: (1e6 * p).sum(), steps=1, lr=0.1, grad_clip=1.0, progress=False)
    assert torch.allclose(p.detach(), torch.full((3,), -0.1), atol=1e-6)   # AdamW's first step is lr x sign


def test_periodic_evaluation_runs_without_gradients():
    p = torch.nn.Parameter(torch.ones(1))
    calls = []

    def evaluate(done):
        calls.append((done, torch.is_grad_enabled()))
        return {"value": float(p)}

    history = fit([p], lambda _: p.square().sum(), steps=7, lr=0.1, evaluate=evaluate, eval_every=3, progress=False)
    assert calls == [(3, False), (6, False)]
    assert [done for done, _ in history.evals] == [3, 6] and "value" in history.evals[0][1]


def test_a_non_finite_loss_is_a_one_line_error():
    p = torch.nn.Parameter(torch.ones(1))

    def step(k):
        return p.sum() * (float("nan") if k == 2 else 1.0)

    with pytest.raises(LipstepError) as err:
        fit([p], step, steps=5, lr=0.1, progress=False, desc="toy head", hint="lower toy.lr")
    message = str(err.value)
    assert "\n" not in message and message.startswith("toy head:") and "step 3 of 5" in message
    assert message.endswith("lower toy.lr")


def test_bad_arguments_are_refused():
    p = torch.nn.Parameter(torch.ones(1))
    for kw in ({"steps": 0}, {"lr": 0.0}, {"schedule": "linear"}, {"floor": 1.5}, {"grad_clip": -1.0}):
        with pytest.raises(ValueError):
            fit([p], lambda _: p.sum(), **({"steps": 2, "lr": 0.1, "progress": False} | kw))


def test_pearson():
    x = np.arange(10.0)
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert pearson(x, np.ones(10)) == 0.0
