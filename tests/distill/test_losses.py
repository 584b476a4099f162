"""FADA's adaptive mixed-supervision weight W(R) and its modes."""

import pytest
import torch

from lipstep.distill.losses import MixedConfig, adaptive_weight, mixed_weight, parse_mixed_mode
from lipstep.errors import ConfigError

W0, S, RP, RD = 0.2, 0.25, 30.0, 100.0
PEAK = W0 * RP ** S


@pytest.mark.parametrize("r, expected", [
    (0.0, 0.0),
    (1.0, W0),
    (29.99, W0 * 29.99 ** S),
    (30.0, PEAK),
    (65.0, PEAK * (RD - 65.0) / (RD - RP)),
    (99.99, PEAK * 0.01 / 70.0),
    (100.0, 0.0),
    (150.0, 0.0),
])
def test_adaptive_weight_at_the_branch_points(r, expected):
    got = float(adaptive_weight(torch.tensor([r], dtype=torch.float64))[0])
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_adaptive_weight_is_continuous_at_r_p_and_r_d():
    eps = 1e-7
    below, at = adaptive_weight(torch.tensor([RP - eps, RP], dtype=torch.float64))
    assert float(below) == pytest.approx(float(at), abs=1e-7)
    assert float(at) == pytest.approx(0.2 * 30 ** 0.25)  # ≈ 0.468
    just_below_rd = adaptive_weight(torch.tensor([RD - eps], dtype=torch.float64))
    assert float(just_below_rd) == pytest.approx(0.0, abs=1e-7)


def test_unlimited_weight_keeps_rising():
    r = torch.tensor([1.0, 30.0, 100.0, 150.0], dtype=torch.float64)
    w = adaptive_weight(r, limited=False)
    assert torch.allclose(w, W0 * r ** S)
    assert bool((w[1:] > w[:-1]).all())


def test_modes():
    r = torch.tensor([0.5, 40.0, 200.0])
    assert torch.equal(mixed_weight(MixedConfig(mode="off"), r), torch.zeros(3))
    assert torch.equal(mixed_weight(MixedConfig(mode="fixed:0.2"), r), torch.full((3,), 0.2))
    assert torch.allclose(mixed_weight(MixedConfig(mode="adaptive"), r), adaptive_weight(r))
    assert torch.allclose(mixed_weight(MixedConfig(mode="adaptive-unlimited"), r), adaptive_weight(r, limited=False))
    assert parse_mixed_mode("fixed:1.0") == ("fixed", 1.0)


@pytest.mark.parametrize("mode", ["fixed", "fixed:x", "fixed:-1", "adaptive:2", "sometimes"])
def test_bad_modes_are_config_errors(mode):
    with pytest.raises(ConfigError, match="mixed.mode"):
        MixedConfig(mode=mode).validate()


def test_bad_thresholds():
    with pytest.raises(ConfigError, match="r_p"):
        MixedConfig(r_p=100, r_d=30).validate()
