"""The eyelid renderer (`lipstep.nets.eyes.EyeNet`): open frames pass untouched, its directory round-trips."""

import json

import pytest
import torch

from lipstep.errors import ConfigError, LipstepError
from lipstep.nets.eyes import EyeConfig, EyeNet, load_eye_net, save_eye_net


def _net(seed=0, **kw) -> EyeNet:
    net = EyeNet(EyeConfig(latent_channels=4, latent_size=8, hidden=8, dilations=(1, 2), **kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # the output layer starts at zero (a new net changes nothing): make it draw
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net.eval()


def test_a_new_net_changes_nothing_and_closure_zero_never_changes_anything():
    z = torch.randn(3, 4, 8, 8)
    fresh = EyeNet(EyeConfig(latent_channels=4, latent_size=8, hidden=8))
    assert torch.equal(fresh(z, torch.ones(3)), z)
    net = _net()
    out = net(z, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.equal(out[0], z[0])
    assert not torch.allclose(out[1], z[1]) and not torch.allclose(out[2], z[2])
    assert not torch.allclose(out[1] - z[1], out[2] - z[2])  # how far the lids come down follows the closure


def test_close_eyes_touches_only_blink_frames_and_returns_the_input_without_any():
    net, z = _net(), torch.randn(5, 4, 8, 8)
    none = torch.zeros(5)
    assert net.close_eyes(z, none) is z
    closure = torch.tensor([0.0, 1.0, 0.0, 0.35, 0.0])
    out = net.close_eyes(z, closure)
    assert torch.equal(out[[0, 2, 4]], z[[0, 2, 4]])
    assert torch.allclose(out[[1, 3]], net(z[[1, 3]], closure[[1, 3]]))


def test_wrong_shapes_are_one_line_errors():
    net = _net()
    with pytest.raises(ValueError, match=r"latents \[N, 4, h, w\]"):
        net(torch.randn(2, 3, 8, 8), torch.ones(2))
    with pytest.raises(ValueError, match="one closure per frame"):
        net(torch.randn(2, 4, 8, 8), torch.ones(3))
    with pytest.raises(ConfigError, match="dilations"):
        EyeNet(EyeConfig(dilations=()))


def test_directory_round_trip_and_refusals(tmp_path):
    net, z, c = _net(), torch.randn(2, 4, 8, 8), torch.tensor([1.0, 0.7])
    save_eye_net(net, tmp_path / "eyes", train={"blinks_per_second": 0.3})
    back = load_eye_net(tmp_path / "eyes")
    assert torch.equal(back(z, c), net(z, c)) and not any(p.requires_grad for p in back.parameters())
    assert json.loads((tmp_path / "eyes" / "train.json").read_text())["blinks_per_second"] == 0.3
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(LipstepError, match="not an eye net directory; refusing"):
        save_eye_net(net, tmp_path / "other")
    with pytest.raises(LipstepError, match="eye net directory not found"):
        load_eye_net(tmp_path / "missing")
    (tmp_path / "eyes" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(LipstepError, match="damaged|cannot read"):
        load_eye_net(tmp_path / "eyes")
