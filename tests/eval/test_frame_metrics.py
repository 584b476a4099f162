"""Flicker, warping error, drift, PSNR and SSIM on videos with known answers."""

import warnings

import cv2
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from lipstep.errors import LipstepError
from lipstep.eval.drift import drift
from lipstep.eval.flicker import flicker, frame_differences
from lipstep.eval.frames import as_video
from lipstep.eval.psnr import psnr, psnr_frames
from lipstep.eval.ssim import ssim, ssim_frames
from lipstep.eval.warping import warping_error, warping_errors

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def texture():
    """A smooth random colour texture [80, 100, 3] in [0, 1] (trackable by optical flow)."""
    rng = np.random.default_rng(0)
    t = cv2.GaussianBlur(rng.random((80, 100, 3)).astype(np.float32), (0, 0), 3)
    return (t - t.min()) / (t.max() - t.min())


def _panning(texture, n=6):
    """The texture sliding right by one pixel per frame, cropped: smooth natural motion."""
    return np.stack([np.roll(texture, k, axis=1)[10:70, 10:90] for k in range(n)])


def _alternating(texture, n=6):
    crop = texture[:60, :80]
    return np.stack([crop if k % 2 == 0 else 1.0 - crop for k in range(n)])


# ---------------------------------------------------------------------------------------- flicker


def test_static_video_has_no_flicker(texture):
    static = np.repeat(texture[None, :60, :80], 5, axis=0)
    stats = flicker(static)
    assert stats.mean_abs_diff == 0.0 and stats.std_abs_diff == 0.0 and stats.second_diff == 0.0
    assert warping_error(static) < 1e-5
    u8 = (static * 255).astype(np.uint8)
    assert flicker(u8).mean_abs_diff == 0.0 and np.array_equal(frame_differences(u8), np.zeros(4))


def test_alternating_frames_flicker_strongly(texture):
    alt, pan = _alternating(texture), _panning(texture)
    a, p = flicker(alt), flicker(pan)
    expected = np.abs(1.0 - 2.0 * texture[:60, :80]).mean()   # |x - (1 - x)| per pixel
    assert a.mean_abs_diff == pytest.approx(expected, rel=1e-5) and a.std_abs_diff < 1e-6
    assert a.second_diff == pytest.approx(2 * expected, rel=1e-5)
    assert a.second_diff > 10 * p.second_diff                  # smooth motion is not flicker
    assert warping_error(alt) > 100 * warping_error(pan)


def test_warping_error_follows_motion(texture):
    pan = _panning(texture)
    naive = np.square(np.diff(pan, axis=0)).sum(-1).mean()      # what a no-motion model would score
    errors = warping_errors(pan)
    assert errors.shape == (5,) and (errors < 0.05 * naive).all()
    assert warping_errors(pan, use_occlusion_mask=False).shape == (5,)


def test_flicker_needs_a_video():
    with pytest.raises(LipstepError, match="at least 2 frames"):
        flicker(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(LipstepError, match="channels-first"):
        flicker(np.zeros((4, 3, 8, 8), np.uint8))
    with pytest.raises(LipstepError, match=r"\[0, 1\]"):
        as_video(np.full((2, 8, 8, 3), 255.0))
    assert np.isnan(flicker(np.zeros((2, 8, 8, 3), np.uint8)).second_diff)


# ------------------------------------------------------------------------------------------ drift


def test_drift_of_a_constant_video_is_zero_and_of_a_fading_one_grows(texture):
    fps = 5
    still = np.repeat(texture[None, :32, :32], 3 * fps + 2, axis=0)   # 3 whole seconds + 2 frames
    d = drift(still, fps)
    assert list(d.starts) == [0, 5, 10] and d.colour_mean.shape == (3, 3)
    assert np.allclose(d.colour_shift, 0.0) and np.allclose(d.ssim_to_first, 1.0)
    fading = still * np.linspace(1.0, 0.4, len(still))[:, None, None, None]
    f = drift(fading, fps)
    assert (np.diff(f.colour_shift) > 0).all() and (np.diff(f.ssim_to_first) < 0).all()
    assert f.max_colour_shift > 0.05 and f.min_ssim_to_first < 1.0
    assert len(drift(still[:3], fps).starts) == 1                       # shorter than a second: one window
    with pytest.raises(LipstepError, match="fps"):
        drift(still, 0)


# ------------------------------------------------------------------------------------- PSNR, SSIM


def test_psnr_of_identical_is_inf_without_warnings(texture):
    u8 = (texture * 255).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert psnr(u8, u8) == np.inf and psnr(texture, texture) == np.inf
        assert np.isinf(psnr_frames(u8[None].repeat(2, 0), u8[None].repeat(2, 0))).all()


def test_psnr_of_known_noise_matches_the_formula():
    x = np.full((2, 16, 16, 3), 128, np.uint8)
    signs = np.where(np.indices((16, 16)).sum(0) % 2 == 0, 1, -1)[None, :, :, None]
    y = (x.astype(int) + 5 * signs).astype(np.uint8)                     # every pixel off by exactly 5
    assert psnr(x, y) == pytest.approx(10 * np.log10(255**2 / 25), rel=1e-12)
    xf, yf = x / 255.0, x / 255.0 + 0.01 * signs
    assert psnr(xf, yf) == pytest.approx(40.0, rel=1e-9)
    assert psnr(xf * 2 - 1, yf * 2 - 1, data_range=2.0) == pytest.approx(40.0, rel=1e-9)
    per_frame = psnr_frames(x, np.concatenate([x[:1], y[1:]]))
    assert per_frame[0] == np.inf and per_frame[1] == pytest.approx(10 * np.log10(255**2 / 25))


def test_psnr_rejects_ambiguous_scales():
    a = np.zeros((8, 8, 3))
    with pytest.raises(LipstepError, match="data_range"):
        psnr(a, np.full((8, 8, 3), 200.0))
    with pytest.raises(LipstepError, match="uint8 and the other float"):
        psnr(a.astype(np.uint8), a)
    with pytest.raises(LipstepError, match="shapes differ"):
        psnr(a, a[:4])


def test_ssim_identical_is_one_and_matches_skimage(texture):
    u8 = (texture * 255).astype(np.uint8)
    assert ssim(u8, u8) == pytest.approx(1.0, abs=1e-12) and ssim(texture, texture) == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(1)
    noisy = [np.clip(texture + s * rng.normal(size=texture.shape), 0, 1) for s in (0.05, 0.2)]
    values = ssim_frames(np.stack([texture, texture]), np.stack(noisy))
    ref = [structural_similarity(texture, n, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=1.0, channel_axis=-1) for n in noisy]
    assert np.allclose(values, ref, atol=1e-9) and values[0] > values[1]
    gray = texture[..., 0]
    assert ssim(gray, gray) == pytest.approx(1.0)
    with pytest.raises(LipstepError, match="smaller than"):
        ssim(texture[:8, :8], texture[:8, :8])
