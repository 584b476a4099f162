"""SyncNet S loads official-format state dicts strictly; LipSyncNet shapes, norms and save/load."""

import numpy as np
import pytest
import torch

from lipstep.errors import ConfigError, LipstepError
from lipstep.nets.syncnet import LipSyncConfig, LipSyncNet, load_lipsync, load_official_syncnet, save_lipsync

pytestmark = pytest.mark.usefixtures("one_thread")

# The key layout of syncnet_v2.model, written out from metrics.md §1.4 independently of the module:
# (branch, Sequential index of the conv/linear, weight shape); the norm layer sits at index + 1.
_S_LAYERS = [
    ("netcnnaud", 0, (64, 1, 3, 3)), ("netcnnaud", 4, (192, 64, 3, 3)), ("netcnnaud", 8, (384, 192, 3, 3)),
    ("netcnnaud", 11, (256, 384, 3, 3)), ("netcnnaud", 14, (256, 256, 3, 3)), ("netcnnaud", 18, (512, 256, 5, 4)),
    ("netcnnlip", 0, (96, 3, 5, 7, 7)), ("netcnnlip", 4, (256, 96, 1, 5, 5)), ("netcnnlip", 8, (256, 256, 1, 3, 3)),
    ("netcnnlip", 11, (256, 256, 1, 3, 3)), ("netcnnlip", 14, (256, 256, 1, 3, 3)),
    ("netcnnlip", 18, (512, 256, 1, 6, 6)),
    ("netfcaud", 0, (512, 512)), ("netfclip", 0, (512, 512)),
]
_S_OUTPUT = [("netfcaud", 3, (1024, 512)), ("netfclip", 3, (1024, 512))]  # last Linear, no norm after it


def official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in the released file's format: plain tensors, no num_batches_tracked."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for branch, i, shape in _S_LAYERS + _S_OUTPUT:
        fan_in = int(np.prod(shape[1:]))
        state[f"{branch}.{i}.weight"] = torch.randn(shape, generator=g) / fan_in**0.5
        state[f"{branch}.{i}.bias"] = torch.randn(shape[0], generator=g) * 0.01
        if (branch, i, shape) in _S_OUTPUT:
            continue
        c = shape[0]
        state[f"{branch}.{i + 1}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        state[f"{branch}.{i + 1}.bias"] = 0.1 * torch.randn(c, generator=g)
        state[f"{branch}.{i + 1}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        state[f"{branch}.{i + 1}.running_var"] = 0.5 + torch.rand(c, generator=g)
    return state


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"
    torch.save(official_state_dict(), path)
    return path


def test_official_format_loads_with_every_key_and_embeds_1024(official_file):
    state = official_state_dict()
    model = load_official_syncnet(official_file)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    own = model.state_dict()
    assert set(own) - set(state) == {k for k in own if k.endswith("num_batches_tracked")}  # nothing else missing
    assert set(state) <= set(own)
    for k, v in state.items():
        assert torch.equal(own[k], v), k
    n_weights = sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var")))
    assert sum(p.numel() for p in model.parameters()) == n_weights == 13_631_616  # "~13.6 M" (metrics.md §1.4)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        aud = model.forward_aud(torch.randn(2, 1, 13, 20, generator=g))
        lip = model.forward_lip(torch.rand(2, 3, 5, 224, 224, generator=g) * 255)
        feat = model.forward_lipfeat(torch.rand(1, 3, 5, 224, 224, generator=g) * 255)
    assert aud.shape == lip.shape == (2, 1024) and feat.shape == (1, 512)
    assert torch.isfinite(aud).all() and torch.isfinite(lip).all()
    with pytest.raises(ValueError, match="forward_lip expects"):
        model.forward_lip(torch.zeros(1, 3, 5, 112, 112))


def test_safetensors_copy_loads_the_same_weights(official_file, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "syncnet_v2.safetensors"
    save_file(official_state_dict(), str(path))
    a, b = load_official_syncnet(official_file), load_official_syncnet(path)
    x = torch.randn(3, 1, 13, 20, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(a.forward_aud(x), b.forward_aud(x))


def _bad(state: dict, how: str) -> dict:
    state = dict(state)
    if how == "renamed":
        state["module.netfclip.3.bias"] = state.pop("netfclip.3.bias")
    elif how == "missing":
        del state["netcnnlip.19.running_var"]
    elif how == "extra":
        state["netcnnaud.21.weight"] = torch.zeros(3)
    elif how == "shape":
        state["netcnnaud.18.weight"] = torch.zeros(512, 256, 4, 4)
    elif how == "not_tensors":
        state["epoch"] = "10"
    return state


@pytest.mark.parametrize("how, message", [
    ("renamed", "keys do not match"), ("missing", "1 missing"), ("extra", "1 unexpected"),
    ("shape", "needs \\[512, 256, 5, 4\\]"), ("not_tensors", "plain dict of tensors"),
])
def test_wrong_files_give_one_line_errors_naming_the_file(tmp_path, how, message):
    path = tmp_path / f"{how}.model"
    torch.save(_bad(official_state_dict(), how), path)
    with pytest.raises(LipstepError, match=message) as err:
        load_official_syncnet(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_truncated_or_pickled_module_files_are_refused(official_file, tmp_path):
    with pytest.raises(LipstepError, match="not found"):
        load_official_syncnet(tmp_path / "nope.model")
    truncated = tmp_path / "truncated.model"
    truncated.write_bytes(official_file.read_bytes()[:1000])
    with pytest.raises(LipstepError, match="damaged or truncated"):
        load_official_syncnet(truncated)
    pickled = tmp_path / "module.model"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a whole pickled module: refused by weights_only
    with pytest.raises(LipstepError, match=f"^{pickled}: .*holds pickled Python objects"):
        load_official_syncnet(pickled)


@pytest.mark.parametrize("name, content, message", [
    ("text.model", b"not a torch file at all", "not a PyTorch weights file"),   # torch: a bare KeyError number
    ("noise.model", bytes(range(256)) * 2, "not a PyTorch weights file"),
    ("empty.model", b"", "the file is empty"),
    ("text.safetensors", b"not weights", "not a valid safetensors file"),
])
def test_garbage_weight_files_say_what_is_wrong(name, content, message, tmp_path):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(LipstepError, match=f"^{path}: cannot read SyncNet weights: {message}") as err:
        load_official_syncnet(path)
    assert "\n" not in str(err.value)


# -------------------------------------------------------------------------------------- LipSyncNet


def _tiny(**overrides) -> LipSyncConfig:
    return LipSyncConfig(**{"image_size": 32, "width": 8, "levels": 2, "embed_dim": 16, **overrides})


def _windows(cfg: LipSyncConfig, b: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, cfg.frames, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1,
            torch.randn(b, cfg.audio_steps, cfg.audio_dim, generator=g))


@pytest.mark.parametrize("cfg", [_tiny(), _tiny(audio="mfcc", audio_dim=13), LipSyncConfig()])
def test_lipsyncnet_embeddings_are_unit_norm_and_batch_independent(cfg):
    torch.manual_seed(0)
    model = LipSyncNet(cfg).eval()
    frames, feats = _windows(cfg)
    with torch.no_grad():
        lip, aud = model.forward_lip(frames), model.forward_aud(feats)
        assert lip.shape == aud.shape == (3, cfg.embed_dim)
        assert torch.allclose(lip.norm(dim=-1), torch.ones(3), atol=1e-5)
        assert torch.allclose(aud.norm(dim=-1), torch.ones(3), atol=1e-5)
        assert torch.allclose(model.forward_lip(frames[1:2]), lip[1:2], atol=1e-5)  # eval mode: no batch coupling
        assert model(frames, feats).shape == (3,)
        # only the lower half (the mouth) is read
        upper = frames.clone()
        upper[..., : cfg.image_size // 2, :] = 0
        assert torch.allclose(model.forward_lip(upper), lip, atol=1e-6)
    with pytest.raises(ValueError, match="forward_aud expects"):
        model.forward_aud(feats[:, :10])


def test_lipsyncnet_config_is_validated():
    with pytest.raises(ConfigError, match="multiple of"):
        LipSyncNet(_tiny(image_size=36))
    with pytest.raises(ConfigError, match="13 coefficients"):
        LipSyncNet(_tiny(audio="mfcc"))


def test_lipsyncnet_save_load_round_trip_and_errors(tmp_path):
    cfg = _tiny()
    torch.manual_seed(1)
    model = LipSyncNet(cfg).eval()
    save_lipsync(model, tmp_path / "sync")
    assert {p.name for p in (tmp_path / "sync").iterdir()} == {"checksums.json", "config.json", "model.safetensors"}
    loaded = load_lipsync(tmp_path / "sync")
    assert loaded.cfg == cfg and not loaded.training
    frames, feats = _windows(cfg)
    with torch.no_grad():
        assert torch.equal(loaded(frames, feats), model(frames, feats))

    with pytest.raises(LipstepError, match="not found"):
        load_lipsync(tmp_path / "missing")
    save_lipsync(LipSyncNet(_tiny(embed_dim=8)), tmp_path / "other")
    (tmp_path / "other" / "model.safetensors").replace(tmp_path / "sync" / "model.safetensors")
    with pytest.raises(LipstepError, match="is damaged"):   # not the weights its checksums.json lists
        load_lipsync(tmp_path / "sync")
    (tmp_path / "sync" / "checksums.json").unlink()
    with pytest.raises(LipstepError, match="does not match"):
        load_lipsync(tmp_path / "sync")
    (tmp_path / "sync" / "model.safetensors").unlink()
    with pytest.raises(LipstepError, match="no model.safetensors"):
        load_lipsync(tmp_path / "sync")
    (tmp_path / "sync" / "config.json").write_text('{"image_size": 32, "widht": 8}')
    with pytest.raises(LipstepError, match="did you mean 'width'"):
        load_lipsync(tmp_path / "sync")
