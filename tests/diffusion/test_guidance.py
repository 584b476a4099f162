"""Multi-condition CFG (FADA Eq. 9) and condition dropout."""

import pytest
import torch

from lipstep.diffusion.cond import Cond
from lipstep.diffusion.guidance import combine_multi_cfg, condition_dropout, multi_cfg, nfe_per_step

B, T, C, H, W = 2, 3, 4, 5, 5


def _cond(b=B, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Cond(reference=torch.randn(b, C, H, W, generator=g), audio=torch.randn(b, T, 2, 8, generator=g))


class ToyDenoiser:
    """Nonlinear in x_t; audio and reference each shift every channel unless dropped. Records batch sizes."""

    def __init__(self):
        self.batches = []

    def __call__(self, x_t, t, cond):
        self.batches.append(x_t.shape[0])
        keep_a, keep_r = (~m for m in cond.masks())
        audio = cond.audio.mean((1, 2, 3)) * keep_a  # [B]
        ref = cond.reference.mean((2, 3))[:, None, :, None, None] * keep_r.view(-1, 1, 1, 1, 1)  # [B,1,C,1,1]
        chan = torch.arange(1, C + 1, dtype=x_t.dtype).view(1, 1, C, 1, 1)
        return torch.tanh(x_t) * (1 + t.view(-1, 1, 1, 1, 1)) + audio.view(-1, 1, 1, 1, 1) * chan + ref


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, C, H, W, generator=g), torch.rand(B, generator=g)


def test_scales_one_is_the_conditional_model_exactly():
    den = ToyDenoiser()
    x, t = _inputs()
    cond = _cond()
    out = multi_cfg(den, 1.0, 1.0)(x, t, cond)
    assert torch.equal(out, den(x, t, cond))
    assert den.batches == [B, B]  # one pass each, no extra CFG passes
    assert torch.equal(multi_cfg(den, torch.ones(B), torch.ones(B))(x, t, cond), out)


@pytest.mark.parametrize("cfg_audio,cfg_ref", [(4.5, 2.0), (1.0, 3.0), (2.5, 1.0), (0.0, 0.0)])
def test_matches_explicit_three_call_formula_in_one_batched_forward(cfg_audio, cfg_ref):
    den = ToyDenoiser()
    x, t = _inputs()
    cond = _cond()
    out = multi_cfg(den, cfg_audio, cfg_ref)(x, t, cond)
    assert den.batches == [3 * B]
    p_a = den(x, t, cond)
    p_r = den(x, t, cond.drop(audio=True))
    p_b = den(x, t, cond.drop(audio=True, ref=True))
    expected = p_b + cfg_ref * (p_r - p_b) + cfg_audio * (p_a - p_r)
    assert torch.allclose(out, expected, atol=1e-6)


def test_every_latent_channel_is_guided():
    den = ToyDenoiser()
    x, t = _inputs()
    cond = _cond()
    p_a, p_b = den(x, t, cond), den(x, t, cond.drop(audio=True, ref=True))
    assert bool(((p_a - p_b).abs().amax((0, 1, 3, 4)) > 1e-3).all())  # the toy differs in all C channels
    guided = multi_cfg(den, 3.0, 2.0)(x, t, cond)
    diff = (guided - p_a).abs().amax((0, 1, 3, 4))  # [C]
    assert diff.shape == (C,) and bool((diff > 1e-3).all())


def test_per_sample_scales():
    den = ToyDenoiser()
    x, t = _inputs()
    cond = _cond()
    wa, wr = torch.tensor([1.0, 4.0]), torch.tensor([2.0, 1.5])
    out = multi_cfg(den, wa, wr)(x, t, cond)
    for i in range(B):
        sl = slice(i, i + 1)
        one = multi_cfg(den, float(wa[i]), float(wr[i]))(x[sl], t[sl], cond.map(lambda v, sl=sl: v[sl]))
        assert torch.allclose(out[i:i + 1], one, atol=1e-6)


def test_combine_weights_sum_to_one_so_parametrisation_does_not_matter():
    """Guiding eps then converting equals guiding x0: the map p -> (x_t - s p)/a is affine."""
    g = torch.Generator().manual_seed(2)
    x_t, eps = torch.randn(B, 6, generator=g), torch.randn(3, B, 6, generator=g)
    a, s = 0.6, 0.8
    to_x0 = lambda e: (x_t - s * e) / a
    guided_eps = combine_multi_cfg(*eps, 3.0, 1.7)
    guided_x0 = combine_multi_cfg(*(to_x0(e) for e in eps), 3.0, 1.7)
    assert torch.allclose(to_x0(guided_eps), guided_x0, atol=1e-5)
    same = torch.randn(B, 6, generator=g)
    assert torch.allclose(combine_multi_cfg(same, same, same, 7.0, -2.0), same)


def test_nfe_per_step():
    assert nfe_per_step(1.0, 1.0) == 1 and nfe_per_step(torch.ones(3), 1) == 1
    assert nfe_per_step(1.0, 2.0) == 3 and nfe_per_step(torch.tensor([1.0, 2.0]), 1.0) == 3


def test_condition_dropout_frequencies_and_determinism():
    n = 20000
    cond = _cond(b=n)
    out = condition_dropout(cond, torch.Generator().manual_seed(0), p_audio=0.2, p_both=0.1)
    da, dr = out.masks()
    assert abs(float((da & dr).float().mean()) - 0.1) < 0.01
    assert abs(float((da & ~dr).float().mean()) - 0.2) < 0.01
    assert not bool((dr & ~da).any())  # "reference dropped, audio kept" is never produced
    again = condition_dropout(cond, torch.Generator().manual_seed(0), p_audio=0.2, p_both=0.1)
    assert torch.equal(again.drop_audio, da) and torch.equal(again.drop_ref, dr)
    other = condition_dropout(cond, torch.Generator().manual_seed(1), p_audio=0.2, p_both=0.1)
    assert not torch.equal(other.drop_audio, da)
    assert torch.equal(out.reference, cond.reference)  # data untouched; only masks change


def test_condition_dropout_keeps_existing_masks_and_validates():
    cond = _cond(b=4).drop(audio=torch.tensor([True, False, False, False]))
    out = condition_dropout(cond, torch.Generator().manual_seed(0), p_audio=0.0, p_both=0.0)
    assert out.masks()[0].tolist() == [True, False, False, False]
    with pytest.raises(ValueError):
        condition_dropout(cond, None, p_audio=0.7, p_both=0.5)
