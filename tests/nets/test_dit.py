"""AvatarDiT: shapes, zero-init, the CFG-layer slot, per-frame audio, null conditions, checkpointing, sizes."""

import pytest
import torch

from lipstep.config import from_dict, to_dict
from lipstep.diffusion.cond import Cond
from lipstep.errors import ConfigError
from lipstep.nets import PRESETS, AvatarDiT, DiTConfig, describe_presets, param_count

B, T, K, D, M, S = 2, 6, 16, 80, 2, 8  # batch, frames (< cfg.frames = 8), audio window/dim, motion, latent


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**overrides) -> DiTConfig:
    return DiTConfig.preset("tiny", **overrides)


def _inputs(batch: int = B, frames: int = T, motion: int | None = M, seed: int = 0):
    """(x_t, t, cond) with random values; motion=None leaves motion frames out."""
    g = torch.Generator().manual_seed(seed)
    cond = Cond(reference=torch.randn(batch, 4, S, S, generator=g),
                audio=torch.randn(batch, frames, K, D, generator=g),
                motion=None if motion is None else torch.randn(batch, motion, 4, S, S, generator=g),
                visemes=torch.randint(0, 15, (batch, frames), generator=g))
    return torch.randn(batch, frames, 4, S, S, generator=g), torch.rand(batch, generator=g) * 1000, cond


def _randomise(model: AvatarDiT, seed: int = 0, keep_zero: str = "cfg_attn.attn.proj") -> AvatarDiT:
    """'Trained-ish' weights: every parameter random, except the CFG layers' zero-init output projection."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if keep_zero not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def _trained(seed: int = 0, **overrides) -> AvatarDiT:
    torch.manual_seed(seed)
    return _randomise(AvatarDiT(_cfg(**overrides)), seed)


@pytest.mark.parametrize("attention", ["full", "factorized"])
@pytest.mark.parametrize("motion", [M, 1, None])
def test_output_shape_short_clip_and_optional_motion(attention, motion):
    model = _trained(attention=attention, use_visemes=True)
    x_t, t, cond = _inputs(frames=T, motion=motion)
    out = model(x_t, t, cond)
    assert out.shape == x_t.shape and torch.isfinite(out).all()
    assert model(x_t[:, :1], t, _inputs(frames=1, motion=motion)[2]).shape == (B, 1, 4, S, S)


@pytest.mark.parametrize("patch", [1, 2])
def test_patchify_round_trip(patch):
    model = AvatarDiT(_cfg(patch=patch))
    z = torch.randn(B, T, 4, S, S)
    tokens = model.patchify(z)
    assert tokens.shape == (B, T, (S // patch) ** 2, 4 * patch * patch)
    assert torch.equal(model.unpatchify(tokens), z)


@pytest.mark.parametrize("attention", ["full", "factorized"])
def test_untrained_net_outputs_zero_but_final_layer_gets_gradients(attention):
    torch.manual_seed(0)
    model = AvatarDiT(_cfg(attention=attention, cfg_layer="tokens"))
    x_t, t, cond = _inputs()
    out = model(x_t, t, cond)
    assert torch.equal(out, torch.zeros_like(out))
    (out - x_t).pow(2).mean().backward()
    assert model.final.linear.weight.grad.abs().sum() > 0
    assert model.final.ada[1].weight.grad is not None


def test_gates_and_cfg_output_start_at_zero():
    model = AvatarDiT(_cfg(attention="factorized", cfg_layer="tokens"))
    for block in model.blocks:
        assert not block.ada[1].weight.any() and not block.ada[1].bias.any()
        assert not block.cfg_attn.attn.proj.weight.any() and not block.cfg_attn.attn.proj.bias.any()


@pytest.mark.parametrize("attention", ["full", "factorized"])
@pytest.mark.parametrize("cfg_layer", ["tokens", "plain", "time"])
def test_zero_init_cfg_layer_leaves_a_trained_net_unchanged(attention, cfg_layer):
    base = _trained(attention=attention, cfg_layer="none")
    with_cfg = AvatarDiT(_cfg(attention=attention, cfg_layer=cfg_layer)).eval()
    result = with_cfg.load_state_dict(base.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all("cfg" in k for k in result.missing_keys)
    x_t, t, cond = _inputs()
    cond.cfg_scales = torch.tensor([[4.5, 2.0], [1.0, 1.0]])
    with torch.no_grad():
        assert torch.equal(with_cfg(x_t, t, cond), base(x_t, t, cond))


def test_trained_cfg_layer_changes_output_with_the_scales():
    model = _randomise(AvatarDiT(_cfg(cfg_layer="tokens")), keep_zero="<nothing>")
    x_t, t, cond = _inputs()
    with torch.no_grad():
        default = model(x_t, t, cond)                         # cfg_scales None -> (1, 1)
        cond.cfg_scales = torch.ones(B, 2)
        assert torch.equal(model(x_t, t, cond), default)
        cond.cfg_scales = torch.tensor([[4.0, 2.0], [1.0, 3.0]])
        assert not torch.allclose(model(x_t, t, cond), default)


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_folded_cfg_attention_equals_plain_cross_attention(heads):
    """The CFG layer's inference path (projections folded into the n keys) is the same attention."""
    from lipstep.nets.dit import CFGCrossAttention

    torch.manual_seed(heads)
    layer = CFGCrossAttention(16, heads)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape) * 0.3)                  # non-zero proj and biases
    h, emb = torch.randn(3, 40, 16), torch.randn(3, 5, 16)
    torch.testing.assert_close(layer.folded(h, emb), layer.attn(h, emb), atol=1e-5, rtol=1e-5)
    x = torch.randn(3, 40, 16)
    torch.testing.assert_close(layer.eval()(x, emb), x + layer.attn(layer.norm(x), emb), atol=1e-5, rtol=1e-5)
    # the folded path is differentiable and gives the plain path's gradients
    grads = []
    for fn in (layer.folded, layer.attn):
        layer.zero_grad()
        fn(h, emb).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in layer.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-4)


def test_cfg_tokens_embedding_algebra():
    model = _randomise(AvatarDiT(_cfg(cfg_layer="tokens")), keep_zero="<nothing>")
    emb = model.cfg_embed
    g_a, g_r, g_b = emb.gamma_a, emb.gamma_r, emb.gamma_b
    scales = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [3.0, 2.0]])
    out = emb(scales)                                                      # [4, n_tokens, W]
    assert out.shape == (4, model.cfg.cfg_tokens, model.cfg.width)
    torch.testing.assert_close(out[0], g_a, atol=1e-6, rtol=0)            # (1, 1) -> γ_a
    torch.testing.assert_close(out[1], g_r, atol=1e-6, rtol=0)            # (0, 1) -> γ_r
    torch.testing.assert_close(out[2], g_b, atol=1e-6, rtol=0)            # (0, 0) -> γ_b
    torch.testing.assert_close(out[3], 3 * (g_a - g_r) + 2 * (g_r - g_b) + g_b)
    assert torch.equal(model.guidance_embedding(None, 2), emb(torch.ones(2, 2)))


@pytest.mark.parametrize("attention", ["full", "factorized"])
def test_audio_of_a_frame_reaches_only_that_frame_in_one_block(attention):
    # Audio enters after self-attention; everything after it is per token, so with depth 1 a frame's
    # audio can only move that frame's output (with depth > 1 self-attention would spread it).
    model = _trained(attention=attention, depth=1, cfg_layer="tokens", use_visemes=True)
    x_t, t, cond = _inputs()
    with torch.no_grad():
        before = model(x_t, t, cond)
        cond.audio[:, 3] += torch.randn_like(cond.audio[:, 3])
        changed = (model(x_t, t, cond) - before).abs().amax(dim=(2, 3, 4))  # [B, T]
    assert (changed[:, 3] > 1e-4).all()
    assert torch.equal(changed[:, [0, 1, 2, 4, 5]], torch.zeros(B, T - 1))


@pytest.mark.parametrize("attention", ["full", "factorized"])
def test_zero_init_channel_context_leaves_a_trained_net_unchanged(attention):
    base = _trained(attention=attention)
    with_ctx = AvatarDiT(_cfg(attention=attention, channel_context=True)).eval()
    result = with_ctx.load_state_dict(base.state_dict(), strict=False)
    assert not result.unexpected_keys and sorted(result.missing_keys) == ["context_embed.bias", "context_embed.weight"]
    x_t, t, cond = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(with_ctx(x_t, t, cond), base(x_t, t, cond), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["full", "factorized"])
@pytest.mark.parametrize("motion", [M, None])
def test_channel_context_carries_the_last_motion_frame_and_the_reference(attention, motion):
    # Cut every context token out of the self-attention (the null context for all samples would also
    # blank the aligned path), so reference and motion can only arrive through the aligned embedding.
    model = _trained(attention=attention, channel_context=True)
    x_t, t, cond = _inputs(motion=motion)
    with torch.no_grad():
        model.embed_context = lambda ref, mot, drop: torch.zeros(ref.shape[0], 1, model.cfg.tokens_per_frame,
                                                                 model.cfg.width)
        before = model(x_t, t, cond)
        if motion:  # only the LAST motion frame enters the aligned path
            earlier = Cond(**{**cond.__dict__, "motion": cond.motion.clone()})
            earlier.motion[:, :-1] += 1.0
            torch.testing.assert_close(model(x_t, t, earlier), before)
            last = Cond(**{**cond.__dict__, "motion": cond.motion.clone()})
            last.motion[:, -1] += 1.0
            assert (model(x_t, t, last) - before).abs().max() > 1e-3
        moved = Cond(**{**cond.__dict__, "reference": cond.reference + 1.0})
        assert (model(x_t, t, moved) - before).abs().max() > 1e-3


@pytest.mark.parametrize("mouth_state", [0, 3])  # 3: per-frame FiLM of the head
def test_zero_init_out_head_leaves_a_trained_net_unchanged(mouth_state):
    base = _trained(mouth_state=mouth_state)
    with_head = AvatarDiT(_cfg(mouth_state=mouth_state, out_head=8)).eval()
    result = with_head.load_state_dict(base.state_dict(), strict=False)
    assert not result.unexpected_keys and {k.split(".")[0] for k in result.missing_keys} == {"out_head"}
    x_t, t, cond = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(with_head(x_t, t, cond), base(x_t, t, cond), atol=1e-5, rtol=1e-5)


def test_out_head_is_local_and_sees_the_reference_and_the_noisy_input():
    # With the transformer's output frozen (final layer zero), the head alone maps (x_t, reference) to
    # a correction with a 5×5-latent receptive field (two 3×3 convolutions).
    model = _randomise(AvatarDiT(_cfg(out_head=8, patch=2)), keep_zero="final.linear")
    x_t, t, cond = _inputs()
    with torch.no_grad():
        before = model(x_t, t, cond)
        moved = Cond(**{**cond.__dict__, "reference": cond.reference.clone()})
        moved.reference[:, :, 0, 0] += 1.0
        changed = (model(x_t, t, moved) - before).abs().amax(dim=(0, 1, 2))     # [h, w]
        assert changed[:3, :3].min() > 1e-4 and changed[3:].max() == 0 and changed[:, 3:].max() == 0
        noisy = x_t.clone()
        noisy[:, :, :, 5, 5] += 1.0
        assert (model(noisy, t, cond) - before).abs().max() > 1e-4
        assert torch.equal(model(x_t, t, cond.drop(ref=True)), model(x_t, t, moved.drop(ref=True)))


@pytest.mark.parametrize("mouth_state", [0, 3])  # 3: added to the head's per-frame conditioning
# the adaLN path, the spatial map on the tokens, the map in the convolutional output head
@pytest.mark.parametrize("path", ["blink_embed", "blink_space", "head_map"])
def test_zero_init_blink_paths_then_blinks_move_their_frame_under_any_guidance_pattern(mouth_state, path):
    head = 8 if path == "head_map" else 0
    base = _trained(mouth_state=mouth_state, out_head=head)
    model = AvatarDiT(_cfg(mouth_state=mouth_state, blink=True, out_head=head)).eval()
    assert sum(p.numel() for p in model.parameters()) == param_count(model.cfg)
    result = model.load_state_dict(base.state_dict(), strict=False)
    grown = {"blink_embed", "blink_space"} | ({"out_head.blink_map"} if head else set())
    assert {k.rsplit(".", 2)[0] if k.startswith("blink_embed") else k for k in result.missing_keys} == grown
    x_t, t, cond = _inputs()
    cond.blink = torch.zeros(B, T)
    with torch.no_grad():
        torch.testing.assert_close(model(x_t, t, cond), base(x_t, t, cond))      # zero-initialised: unchanged
        cond.blink[:, 5] = 0.5                                                  # still zero-initialised: unchanged
        torch.testing.assert_close(model(x_t, t, cond), base(x_t, t, cond))
        cond.blink[:, 5] = 0.0
        if path == "blink_embed":
            _randomise(model.blink_embed)
        elif path == "blink_space":
            model.blink_space.normal_(0.0, 0.5)
        else:
            model.out_head.blink_map.normal_(0.0, 0.5)
        shut = Cond(**{**cond.__dict__, "blink": cond.blink.clone()})
        shut.blink[:, 2] = 1.0
        for c, s in ((cond, shut), (cond.drop(audio=True), shut.drop(audio=True))):
            diff = (model(x_t, t, s) - model(x_t, t, c)).abs().amax(dim=(0, 2, 3, 4))    # per frame
            assert diff[2] > 1e-4, diff                                           # guidance keeps it
        with pytest.raises(ValueError, match="cond.blink"):
            model(x_t, t, Cond(reference=cond.reference, audio=cond.audio, motion=cond.motion))


@pytest.mark.parametrize("attention", ["full", "factorized"])
@pytest.mark.parametrize("mouth_state", [0, 3])
def test_drop_audio_makes_output_independent_of_audio(attention, mouth_state):
    model = _trained(attention=attention, use_visemes=True, mouth_state=mouth_state)
    x_t, t, cond = _inputs()
    other = Cond(**{**cond.__dict__, "audio": torch.randn_like(cond.audio),
                    "visemes": (cond.visemes + 1) % 15})
    with torch.no_grad():
        assert not torch.allclose(model(x_t, t, cond), model(x_t, t, other))
        dropped = model(x_t, t, cond.drop(audio=True))
        assert torch.equal(dropped, model(x_t, t, other.drop(audio=True)))
        assert not torch.allclose(dropped, model(x_t, t, cond))


@pytest.mark.parametrize("attention", ["full", "factorized"])
@pytest.mark.parametrize("channel_context", [False, True])
def test_drop_ref_makes_output_independent_of_reference_and_motion(attention, channel_context):
    model = _trained(attention=attention, channel_context=channel_context)
    x_t, t, cond = _inputs()
    other = Cond(**{**cond.__dict__, "reference": torch.randn_like(cond.reference),
                    "motion": torch.randn_like(cond.motion)})
    with torch.no_grad():
        assert not torch.allclose(model(x_t, t, cond), model(x_t, t, other))
        assert torch.equal(model(x_t, t, cond.drop(ref=True)), model(x_t, t, other.drop(ref=True)))


@pytest.mark.parametrize("attention", ["full", "factorized"])
def test_drop_masks_are_per_sample(attention):
    model = _trained(attention=attention, cfg_layer="tokens")
    x_t, t, cond = _inputs()
    cond = cond.drop(audio=torch.tensor([True, False]), ref=torch.tensor([False, True]))
    cond.cfg_scales = torch.tensor([[3.0, 1.5], [1.0, 2.0]])
    with torch.no_grad():
        mixed = model(x_t, t, cond)
        for i in range(B):
            one = model(x_t[i:i + 1], t[i:i + 1], cond.map(lambda v, i=i: v[i:i + 1]))
            torch.testing.assert_close(mixed[i:i + 1], one, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["full", "factorized"])
@pytest.mark.parametrize("mouth_state", [0, 3])  # 3: per-frame adaLN conditioning
def test_gradient_checkpointing_gives_same_loss_and_grads(attention, mouth_state):
    losses, grads = [], []
    for use in (False, True):
        model = _trained(attention=attention, grad_checkpointing=use, cfg_layer="tokens",
                         mouth_state=mouth_state).train()
        x_t, t, cond = _inputs()
        loss = (model(x_t, t, cond) - x_t).pow(2).mean()
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})  # head: frozen
    torch.testing.assert_close(losses[0], losses[1])
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("overrides", [
    {}, {"attention": "factorized"}, {"cfg_layer": "tokens"}, {"cfg_layer": "plain"}, {"cfg_layer": "time"},
    {"channel_context": True}, {"channel_context": True, "patch": 2, "motion_frames": 0},
    {"mouth_state": 3}, {"mouth_state": 3, "attention": "factorized"}, {"out_head": 8}, {"out_head": 5, "patch": 2},
    {"out_head": 4, "patch": 2, "channel_context": True}, {"blink": True}, {"blink": True, "mouth_state": 3},
    {"mouth_state": 2, "mouth_head_width": 8, "audio_dim": 24},
    {"use_visemes": True, "patch": 2, "frames": 4, "motion_frames": 0, "audio_dim": 32, "mlp_ratio": 2.5},
])
def test_param_count_matches_built_tiny_model(overrides):
    cfg = _cfg(**overrides)
    assert param_count(cfg) == sum(p.numel() for p in AvatarDiT(cfg).parameters())


def test_param_count_matches_every_preset():
    for name in PRESETS:
        cfg = DiTConfig.preset(name, attention="factorized", cfg_layer="tokens", use_visemes=True)
        if name in ("tiny", "small"):
            built = AvatarDiT(cfg)
        else:  # no memory or init time spent on base/large
            with torch.device("meta"):
                built = AvatarDiT(cfg)
        assert param_count(cfg) == sum(p.numel() for p in built.parameters()), name
    table = describe_presets()
    assert all(name in table for name in PRESETS)
    assert f"{param_count(DiTConfig.preset('small')) / 1e6:.2f} M" in table


def test_deterministic_under_manual_seed():
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = _randomise(AvatarDiT(_cfg(attention="factorized")), seed=torch.randint(0, 999, ()).item())
        outs.append(model(*_inputs()))
    assert torch.equal(outs[0], outs[1])
    torch.manual_seed(7)
    a = AvatarDiT(_cfg()).state_dict()
    torch.manual_seed(7)
    b = AvatarDiT(_cfg()).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_audio_standardisation_equals_standardised_input():
    """audio_mean / audio_std are a fixed affine map in front of the audio MLP, nothing else."""
    plain = _trained(seed=3)
    norm = AvatarDiT(_cfg(audio_mean=-9.0, audio_std=3.0)).eval()
    norm.load_state_dict(plain.state_dict())
    x_t, t, cond = _inputs()
    raw = Cond(reference=cond.reference, audio=cond.audio * 3.0 - 9.0, motion=cond.motion, visemes=cond.visemes)
    with torch.no_grad():
        torch.testing.assert_close(norm(x_t, t, raw), plain(x_t, t, cond))
        assert not torch.allclose(plain(x_t, t, raw), plain(x_t, t, cond))
    with pytest.raises(ConfigError, match="audio_std"):
        _cfg(audio_std=0.0)


def test_scalar_time_is_broadcast():
    model = _trained()
    x_t, _, cond = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x_t, torch.tensor(250.0), cond), model(x_t, torch.full((B,), 250.0), cond))


def test_config_round_trips_through_json_dict():
    cfg = _cfg(attention="factorized", cfg_layer="tokens", use_visemes=True)
    assert from_dict(DiTConfig, to_dict(cfg)) == cfg


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown DiT preset"):
        DiTConfig.preset("huge")
    with pytest.raises(ConfigError, match="did you mean 'width'"):
        DiTConfig.preset("tiny", widht=32)
    with pytest.raises(ConfigError, match="divisible"):
        DiTConfig.preset("tiny", heads=3)
    with pytest.raises(ConfigError, match="patch"):
        DiTConfig.preset("tiny", patch=3)
    with pytest.raises(ConfigError, match="attention"):
        DiTConfig.preset("tiny", attention="sparse")


def test_input_errors_name_the_problem():
    model = AvatarDiT(_cfg(use_visemes=True))
    x_t, t, cond = _inputs()
    with pytest.raises(ValueError, match="frames=8"):
        model(torch.randn(B, 9, 4, S, S), t, _inputs(frames=9)[2])
    with pytest.raises(ValueError, match="cond.audio"):
        model(x_t, t, Cond(**{**cond.__dict__, "audio": cond.audio[:, :, :8]}))
    with pytest.raises(ValueError, match="cond.motion"):
        model(x_t, t, _inputs(motion=3)[2])
    with pytest.raises(ValueError, match="visemes"):
        model(x_t, t, Cond(**{**cond.__dict__, "visemes": None}))
