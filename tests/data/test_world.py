"""The synthetic world: determinism, layout, audio/label agreement, pixels following the mouth."""

import json

import numpy as np
import pytest

from lipstep.config import apply_overrides
from lipstep.data.media import read_video
from lipstep.data.render import Pose, mouth_geometry, render_frame, sample_identity
from lipstep.data.world import WorldConfig, assign_splits, check_world, render_clip, synthesize_world
from lipstep.errors import ConfigError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    cfg = WorldConfig(identities=4, clips_per_identity=1, seconds=2.0, size=48, seed=3)
    summary = synthesize_world(cfg, out, workers=1, progress=False)
    return out, cfg, summary


def _rows(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_layout_and_manifest(world):
    out, cfg, summary = world
    rows = _rows(out)
    assert summary.clips == len(rows) == 4
    for row in rows:
        for key in ("id", "identity", "split", "video", "labels", "seconds", "text"):
            assert key in row
        video = read_video(out / row["video"])
        labels = np.load(out / row["labels"])
        t = len(video.frames)
        assert t == 50 and video.frames.shape[1:] == (48, 48, 3) and video.fps == 25.0
        assert abs(len(video.audio) / 16000 - 2.0) < 0.01
        assert labels["visemes"].shape == (t,) and labels["visemes"].dtype == np.int64
        assert labels["mouth"].shape == (t, 3) and labels["mouth"].dtype == np.float32
        assert labels["mouth"].min() >= 0 and labels["mouth"].max() <= 1
        assert labels["head_pose"].shape == (t, 3)
        assert len(labels["phoneme_symbols"]) == len(labels["phoneme_start"]) > 0
        assert str(labels["text"]) == row["text"]
    assert (out / "identities.json").is_file() and (out / "config.json").is_file()
    assert len(list((out / "identities").glob("*.png"))) == 4


def test_splits_are_by_identity():
    cfg = WorldConfig(identities=8)
    splits = assign_splits(8, cfg)
    assert splits.count("test") == 1 and splits.count("val") == 1 and splits.count("train") == 6
    assert assign_splits(8, cfg) == splits
    assert assign_splits(2, cfg) == ["train", "train"]


def test_world_is_deterministic(tmp_path, world):
    out, cfg, _ = world
    row = _rows(out)[0]
    index = int(row["identity"][2:])
    again = render_clip(cfg, tmp_path, index, 0, row["split"])
    assert again["text"] == row["text"]
    a, b = np.load(out / row["labels"]), np.load(tmp_path / again["labels"])
    np.testing.assert_array_equal(a["mouth"], b["mouth"])
    np.testing.assert_array_equal(a["head_pose"], b["head_pose"])
    va, vb = read_video(out / row["video"]), read_video(tmp_path / again["video"])
    np.testing.assert_array_equal(va.frames, vb.frames)
    np.testing.assert_array_equal(va.audio, vb.audio)


def test_world_acceptance_measures(world):
    """Silence is quiet in the audio, and the mouth measured from decoded pixels follows the labels."""
    out, _, _ = world
    report = check_world(out)
    assert report["silence_rms_ratio"] < 0.2, report
    assert report["openness_corr"] > 0.8, report
    assert report["frames_measured"] == 4 * 50


def test_mouth_pixels_follow_labelled_openness():
    """Rendered openness (dark-interior area measured from pixels) tracks the label."""
    from lipstep.data.render import measure_openness

    rng = np.random.default_rng(0)
    for seed in range(3):
        idn = sample_identity(np.random.default_rng(seed))
        openness = rng.uniform(0, 1, 40)
        measured = []
        for o in openness:
            pose = Pose(yaw=rng.uniform(-0.1, 0.1), pitch=rng.uniform(-0.05, 0.08), roll=rng.uniform(-0.05, 0.05))
            frame = render_frame(idn, (o, rng.uniform(0, 1), rng.uniform(0, 1)), pose, 0.0, 64)
            measured.append(measure_openness(frame, idn, pose))
        assert np.corrcoef(openness, measured)[0, 1] > 0.8


def test_mouth_geometry_opens_monotonically():
    idn = sample_identity(np.random.default_rng(1))
    heights = [mouth_geometry(idn, (o, 0.5, 0.3))["oh"] for o in np.linspace(0, 1, 11)]
    assert heights[0] == 0 and all(b > a for a, b in zip(heights, heights[1:]))


def test_moderate_tier_records_degradations(tmp_path):
    cfg = apply_overrides(WorldConfig(identities=2, clips_per_identity=2, seconds=1.5, size=32, quality="moderate"),
                          ["moderate.offset_prob=1.0", "moderate.drop_prob=1.0", "moderate.wrong_audio_prob=1.0"])
    synthesize_world(cfg, tmp_path, workers=1, progress=False)
    for row in _rows(tmp_path):
        deg = row["degradations"]
        assert 1 <= abs(deg["av_offset_frames"]) <= 5 and deg["wrong_audio"] and "audio_text" in deg
        assert row["quality"] == "moderate"


def test_resume_and_config_mismatch(tmp_path):
    cfg = WorldConfig(identities=1, clips_per_identity=1, seconds=1.0, size=32)
    synthesize_world(cfg, tmp_path, workers=1, progress=False)
    video = tmp_path / "clips" / "id0000_c00" / "clip.mp4"
    stamp = video.stat().st_mtime_ns
    synthesize_world(cfg, tmp_path, workers=1, progress=False)
    assert video.stat().st_mtime_ns == stamp  # finished clips are not redone
    with pytest.raises(ConfigError, match="different settings"):
        synthesize_world(WorldConfig(identities=1, clips_per_identity=1, seconds=1.0, size=64), tmp_path,
                         workers=1, progress=False)


@pytest.mark.parametrize("override, message", [
    ("size=20", "world.size must be between 32 and 256"),
    ("size=33", "even"),
    ("seconds=0.5", "world.seconds"),
    ("quality=high", "must be one of"),
])
def test_bad_world_settings(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(WorldConfig(), [override])
