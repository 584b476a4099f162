"""Pieces of `lipstep soak`: speech cut by pauses, when a mouth counts as closed, the config's checks. The soak
itself runs on the tiny teacher in tests/eval/test_runner.py (it needs the tiny evaluators)."""

import numpy as np
import pytest

from lipstep.data.blinks import eye_brightness
from lipstep.errors import ConfigError
from lipstep.eval.soak import SoakConfig, closed_after, idle_motion, with_pauses


def test_with_pauses_inserts_silence_after_every_stretch_of_speech():
    speech = np.arange(1, 8, dtype=np.float32)                 # 7 samples at "10 Hz"
    audio, pauses = with_pauses(speech, 23, 10, every=0.5, pause=0.3)
    assert len(audio) == 23 and audio.dtype == np.float32
    assert pauses == [(5, 8), (13, 16)]                        # the third would not fit whole
    for a, b in pauses:
        assert (audio[a:b] == 0).all()
    assert audio[:5].tolist() == [1, 2, 3, 4, 5] and audio[8:13].tolist() == [6, 7, 1, 2, 3]  # speech resumes in order
    plain, none = with_pauses(speech, 9, 10, every=0.5, pause=0.0)
    assert none == [] and plain.tolist() == [1, 2, 3, 4, 5, 6, 7, 1, 2]


def test_closed_after_is_when_the_mouth_closes_for_good():
    assert closed_after(np.array([0.5, 0.3, 0.05, 0.0]), 0.1) == 2
    assert closed_after(np.array([0.5, 0.05, 0.3, 0.0, 0.0]), 0.1) == 3   # reopened: counted from the last opening
    assert closed_after(np.array([0.0, 0.0]), 0.1) == 0
    assert closed_after(np.array([0.0, 0.5]), 0.1) is None                  # open at the end: never closed


@pytest.mark.parametrize("bad", [{"seconds": 0}, {"pace": -1}, {"piece": 0}, {"pause": float("nan")},
                                 {"split": "dev"}, {"runtime": "tensorrt"}, {"steps": 0}, {"identity": -1}])
def test_soak_config_is_checked(bad):
    with pytest.raises(ConfigError):
        SoakConfig(**bad).validate()


def test_idle_motion_is_change_outside_the_mouth():
    still = np.full((3, 20, 20, 3), 100, np.uint8)
    assert idle_motion(still).tolist() == [0.0, 0.0, 0.0]
    talking = still.copy()
    talking[1, 12:16, 7:13] = 200                                         # inside the mouth box only
    assert idle_motion(talking).tolist() == [0.0, 0.0, 0.0]
    blink = still.copy()
    blink[1, 4:6] = 130                                                   # rows of the eyes change
    m = idle_motion(blink, previous=np.full((20, 20, 3), 90, np.uint8))
    assert m[0] == 10.0 and m[1] > 0 and m[2] == m[1]


def test_eye_brightness_drops_when_the_whites_are_covered():
    frames = np.full((2, 50, 50, 3), 60, np.uint8)
    frames[:, 18:21, 15:20] = 230                                 # the whites of two open eyes
    frames[:, 18:21, 30:35] = 230
    frames[1, 18:21, 10:40] = 70                                  # lids shut in the second frame
    b = eye_brightness(frames)
    assert b[0] == 230 and b[1] == 70


def test_scheduled_blink_agreement_scores_told_blinks():
    from lipstep.eval.soak import scheduled_blink_agreement

    closure = np.zeros(100, np.float32)
    closure[[10, 11, 12, 50, 51, 52]] = [0.85, 1.0, 0.7, 0.85, 1.0, 0.7]
    eyes = np.full(100, 160.0)
    eyes[[11, 12, 13]] = 100.0                      # the first blink drawn a frame late, the second not at all
    eyes[80] = 100.0                                # and one blink nobody asked for
    r = scheduled_blink_agreement(eyes, eyes < 130, closure)
    assert r["blink_frames_scheduled"] == 0.06 and r["blink_recall"] == round(2 / 6, 4)
    assert r["blink_precision"] == 0.75 and r["blink_eye_drop"] == 0.0
    none = scheduled_blink_agreement(eyes, np.zeros(100, bool), np.zeros(100, np.float32))
    assert none["blink_recall"] is None and none["blink_precision"] is None
