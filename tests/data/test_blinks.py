"""The blink process: the world's tracks, the inference schedule (a function of the frame index), label rates."""

import numpy as np
import pytest

from lipstep.data.blinks import PROFILE, BlinkSchedule, blink_rate, blink_track


def test_schedule_is_a_function_of_the_frame_range():
    whole = BlinkSchedule(2.0, 25.0, seed=3).frames(0, 2000)
    chunked = BlinkSchedule(2.0, 25.0, seed=3)
    parts = []
    for start in range(0, 2000, 8):
        again = chunked.frames(start, 8)       # a preview asks for the range before the chunk does
        parts.append(chunked.frames(start, 8))
        assert np.array_equal(again, parts[-1])
    assert np.array_equal(np.concatenate(parts), whole)
    assert (whole > 0.5).any() and whole.min() == 0 and whole.max() == PROFILE.max()
    assert not np.array_equal(whole, BlinkSchedule(2.0, 25.0, seed=4).frames(0, 2000))


def test_schedule_memory_is_constant_and_ranges_go_forward():
    s = BlinkSchedule(3.0, 25.0, seed=0)
    kept = []
    for start in range(0, 100_000, 8):
        s.frames(start, 8)
        kept.append(len(s._kept))
    assert max(kept) <= 3                      # the onsets that can still touch the next frames, never the past
    with pytest.raises(ValueError, match="dropped"):
        s.frames(0, 8)


def test_no_blinks_at_rate_zero_and_bad_settings_fail():
    assert not BlinkSchedule(0.0, 25.0).frames(0, 500).any()
    assert not blink_track(np.random.default_rng(0), 500, 0.0, 25.0).any()
    with pytest.raises(ValueError):
        BlinkSchedule(-1.0, 25.0)


def test_label_rate_reads_back_the_world_rate():
    tracks = [blink_track(np.random.default_rng(i), 25 * 60, 0.3, 25.0) for i in range(40)]   # 40 minutes
    assert blink_rate(tracks, 25.0) == pytest.approx(0.3, rel=0.1)
    assert blink_rate([BlinkSchedule(0.3, 25.0, seed=1).frames(0, 25 * 2400)], 25.0) == pytest.approx(0.3, rel=0.1)
    one = np.zeros(50, np.float32)
    one[10:15] = PROFILE
    assert blink_rate([one], 25.0) == pytest.approx(0.5) and blink_rate([], 25.0) == 0.0
