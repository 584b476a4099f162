"""Pieces of the long-run evaluation and the contact sheet: audio chaining, blocks, grids."""

import numpy as np
import pytest

from lipstep.errors import ConfigError, LipstepError
from lipstep.eval.longrun import block_bounds, chain_audio, identity_clips, portrait_metrics
from lipstep.eval.runner import EvalConfig, contact_sheet, spread_frames


def test_chain_audio_repeats_the_clips_in_order_and_cuts_exactly():
    a, b = np.arange(5, dtype=np.float32), -np.arange(1, 4, dtype=np.float32)
    out = chain_audio([a, b], 19)
    assert out.dtype == np.float32 and len(out) == 19
    assert np.array_equal(out, np.concatenate([a, b, a, b, a, b])[:19])
    assert np.array_equal(chain_audio([a], 3), a[:3])
    with pytest.raises(LipstepError):
        chain_audio([np.zeros(0)], 10)


def test_block_bounds_cover_every_frame_once():
    assert block_bounds(50, 25) == [(0, 25), (25, 50)]
    assert block_bounds(60, 25) == [(0, 25), (25, 50), (50, 60)]
    with pytest.raises(LipstepError):
        block_bounds(10, 0)


def test_identity_clips_groups_in_manifest_order():
    rows = [{"id": "a0", "identity": "a"}, {"id": "b0", "identity": "b"}, {"id": "a1", "identity": "a"},
            {"id": "c0", "identity": "c"}]
    assert {k: [r["id"] for r in v] for k, v in identity_clips(rows, 2).items()} == {"a": ["a0", "a1"], "b": ["b0"]}
    assert list(identity_clips(rows, 0)) == ["a", "b", "c"]


def test_portrait_metrics_of_the_reference_itself():
    ref = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    m = portrait_metrics(np.repeat(ref[None], 3, axis=0), ref)
    assert m == {"id_psnr": float("inf"), "id_ssim": pytest.approx(1.0), "colour_shift": 0.0}


def test_long_mode_config_is_checked():
    EvalConfig(long=60).validate()
    for bad in ({"long": -1}, {"long": 60, "long_block": 0}, {"long": 60, "max_clips": 2},
                {"long": 60, "other_audio": True}, {"long": 60, "seconds": 2.0}, {"long": 60, "long_identities": -1}):
        with pytest.raises(ConfigError):
            EvalConfig(**bad).validate()


def test_spread_frames_takes_first_last_and_evenly_between():
    video = np.arange(10)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    assert spread_frames(video, 4)[:, 0, 0, 0].tolist() == [0, 3, 6, 9]
    assert len(spread_frames(video[:3], 8)) == 3


def test_contact_sheet_rows_groups_and_padding():
    a = np.zeros((5, 4, 4, 3), np.uint8)
    b = np.full((2, 4, 4, 3), 7, np.uint8)
    sheet = contact_sheet([a, b, a, a], frames=3, group=2, gap=2)
    assert sheet.shape == (4 * 4 + 2, 3 * 4, 3)
    assert (sheet[4:8, :8] == 7).all() and (sheet[4:8, 8:] == 255).all()   # the 2-frame row padded white
    assert (sheet[8:10] == 255).all() and (sheet[10:] == 0).all()          # the gap after the first pair
    with pytest.raises(LipstepError):
        contact_sheet([])
