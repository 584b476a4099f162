"""Portrait fidelity: identity-region PSNR/SSIM and colour shift against the reference portrait."""

import itertools
import math

import numpy as np
import pytest

from lipstep.data.render import render_frame, sample_identity
from lipstep.data.world import frame_pose, head_motion
from lipstep.errors import LipstepError
from lipstep.eval.portrait import (
    MOUTH_BOX,
    colour_shift,
    identity_mask,
    identity_psnr,
    identity_psnr_frames,
    identity_ssim,
    identity_ssim_frames,
    mean_colour,
    mouth_box_pixels,
)
from lipstep.eval.psnr import psnr
from lipstep.eval.ssim import ssim, ssim_frames, ssim_maps


def _reference(size: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(30, 220, (size, size, 3), dtype=np.uint8)


def _mouth_only_change(ref: np.ndarray, n: int = 3, seed: int = 1) -> np.ndarray:
    frames = np.repeat(ref[None], n, axis=0)
    x0, y0, x1, y1 = mouth_box_pixels(*ref.shape[:2])
    frames[:, y0:y1, x0:x1] = np.random.default_rng(seed).integers(0, 256, (n, y1 - y0, x1 - x0, 3))
    return frames


def test_mouth_box_pixels_round_outward_and_mask_is_its_complement():
    assert MOUTH_BOX == (0.28, 0.50, 0.72, 0.84)
    assert mouth_box_pixels(64, 64) == (17, 32, 47, 54)          # 17.92, 32, 46.08, 53.76
    mask = identity_mask(64, 64)
    assert mask.shape == (64, 64) and (~mask).sum() == 30 * 22 and not mask[32:54, 17:47].any()
    assert identity_mask(8, 8, None).all()
    with pytest.raises(LipstepError, match="fractions"):
        mouth_box_pixels(64, 64, (0.6, 0.5, 0.4, 0.8))
    with pytest.raises(LipstepError, match="whole"):
        identity_mask(16, 16, (0.0, 0.0, 1.0, 1.0))


def test_identical_frames_give_infinite_psnr_unit_ssim_zero_colour_shift():
    ref = _reference()
    frames = np.repeat(ref[None], 4, axis=0)
    assert identity_psnr(frames, ref) == math.inf
    assert np.all(identity_psnr_frames(frames, ref) == math.inf)
    assert identity_ssim(frames, ref) == pytest.approx(1.0, abs=1e-12)
    assert colour_shift(frames, ref) == 0.0


def test_pooled_psnr_stays_finite_with_one_identical_frame():
    ref = _reference()
    frames = np.stack([ref, np.clip(ref.astype(int) + 4, 0, 255).astype(np.uint8)])
    per_frame = identity_psnr_frames(frames, ref)
    assert per_frame[0] == math.inf and np.isfinite(per_frame[1])
    assert identity_psnr(frames, ref) == pytest.approx(per_frame[1] + 10 * math.log10(2), abs=1e-9)  # half the MSE


def test_constant_error_outside_the_mouth_gives_the_exact_psnr():
    ref = _reference()
    frames = (ref.astype(int) + 5).astype(np.uint8)[None]          # 30..219 + 5: no clipping
    assert identity_psnr(frames, ref) == pytest.approx(20 * math.log10(255 / 5), abs=1e-9)


def test_tinted_frames_give_the_exact_colour_shift():
    ref = _reference()
    tint = np.array([10, -6, 3])
    frames = np.repeat((ref.astype(int) + tint).astype(np.uint8)[None], 5, axis=0)
    assert colour_shift(frames, ref) == pytest.approx(math.sqrt(145), abs=1e-9)
    assert colour_shift(frames, ref, box=None) == pytest.approx(math.sqrt(145), abs=1e-9)
    # float frames in [0, 1] are measured in the same 0..255 units
    assert colour_shift(frames / 255.0, ref / 255.0) == pytest.approx(math.sqrt(145), abs=1e-9)
    assert mean_colour(ref) == pytest.approx(ref[identity_mask(48, 48)].mean(axis=0))


def test_a_mouth_only_change_is_invisible_in_the_identity_region():
    ref = _reference()
    frames = _mouth_only_change(ref)
    assert np.isfinite(psnr(frames, np.repeat(ref[None], 3, axis=0)))        # the whole-frame PSNR sees it
    assert ssim(frames, np.repeat(ref[None], 3, axis=0)) < 0.99
    assert identity_psnr(frames, ref) == math.inf
    assert np.allclose(identity_ssim_frames(frames, ref), 1.0, atol=1e-12)
    assert colour_shift(frames, ref) == 0.0


def test_identity_ssim_sees_changes_outside_the_mouth():
    ref = _reference()
    frames = ref[None].copy()
    frames[0, :10] = 0                                             # top rows (hair/forehead) blacked out
    assert identity_ssim(frames, ref) < 0.9 and np.isfinite(identity_psnr(frames, ref))


def test_identity_ssim_with_no_box_is_plain_ssim():
    ref, other = _reference(seed=0), _reference(seed=2)
    frames = np.stack([other, ref])
    assert identity_ssim_frames(frames, ref, box=None) == pytest.approx(
        ssim_frames(frames, np.stack([ref, ref])), abs=1e-12)
    assert ssim_maps(frames, np.stack([ref, ref])).shape == (2, 3, 38, 38)


def test_long_videos_are_processed_in_chunks_with_the_same_result():
    ref = _reference(size=24)
    frames = np.random.default_rng(3).integers(0, 256, (150, 24, 24, 3), dtype=np.uint8)   # > 2 chunks
    whole = [identity_ssim_frames(frames[i:i + 1], ref)[0] for i in (0, 70, 149)]
    assert identity_ssim_frames(frames, ref)[[0, 70, 149]] == pytest.approx(whole, abs=1e-12)
    mse = np.mean([np.square(f[identity_mask(24, 24)].astype(float) - ref[identity_mask(24, 24)]).mean()
                   for f in frames])
    assert identity_psnr(frames, ref) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)


@pytest.mark.parametrize("case", ["size", "mixed", "range", "layout", "reference_video"])
def test_bad_inputs_are_one_line_errors(case):
    ref = _reference()
    frames = np.repeat(ref[None], 2, axis=0)
    args = {"size": (frames, ref[:40]), "mixed": (frames, ref / 255.0), "range": (frames * 1.0, ref * 1.0),
            "layout": (frames.transpose(0, 3, 1, 2), ref), "reference_video": (frames, frames)}[case]
    with pytest.raises(LipstepError) as e:
        identity_psnr(*args)
    assert "\n" not in str(e.value)


def test_tiny_frames_with_no_window_outside_the_mouth_are_refused():
    ref = _reference(size=12)
    with pytest.raises(LipstepError, match="too small"):
        identity_ssim(ref[None], ref, box=(0.0, 0.3, 1.0, 0.7))


def _world_pose_extremes() -> np.ndarray:
    """Per-axis min and max (yaw, pitch, roll) of the world's head motion, silent and speaking: [2, 3]."""
    poses = np.concatenate([head_motion(np.random.default_rng(s), np.full(250, s % 2, np.float32), 1.0)
                            for s in range(80)])
    return np.stack([poses.min(0), poses.max(0)])


def test_mouth_box_holds_every_mouth_change_of_the_synthetic_world():
    """Render identities at the corners of the world's head poses with the mouth closed and at extreme
    states (wide open, rounded, stretched): every changed pixel lies in the mouth box."""
    size, lo_hi = 64, _world_pose_extremes()
    inside = ~identity_mask(size, size)
    rng = np.random.default_rng(0)
    corners = list(itertools.product(*lo_hi.T))                      # 8 (yaw, pitch, roll) corners
    for k in range(16):
        idn = sample_identity(rng)
        pose = frame_pose(corners[k % len(corners)])
        closed = render_frame(idn, (0.0, 0.5, 0.2), pose, 0.0, size).astype(int)
        for state in ((1.0, 1.0, 0.0), (1.0, 0.0, 1.0), (1.0, 1.0, 1.0)):
            changed = np.abs(render_frame(idn, state, pose, 0.0, size).astype(int) - closed).max(-1) > 0
            assert changed.any() and not (changed & ~inside).any(), (k, state)
