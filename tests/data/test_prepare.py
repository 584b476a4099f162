"""Data preparation: real-format videos, a fake synthetic world, resume, splits and errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tests.mediafixtures import REAL, SR, astronaut_clip, make_real_folder, speech_like

from lipstep.config import to_dict
from lipstep.data.media import write_video
from lipstep.data.prepare import (
    PrepareConfig,
    assign_splits,
    find_clips,
    prepare_dataset,
    read_shard_meta,
)
from lipstep.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def real_src(tmp_path_factory):
    return make_real_folder(tmp_path_factory.mktemp("real"))


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_prepare_real_videos_acceptance(real_src, tmp_path):
    out = tmp_path / "prep"
    cfg = PrepareConfig(detector="haar")
    summary = prepare_dataset(real_src, out, cfg, workers=1, progress=False)
    assert (summary.prepared, summary.reused) == (3, 0)
    assert [f for f, _ in summary.skipped] == ["broken.mp4"] and summary.skipped[0][1]
    assert "broken.mp4" in str(summary) and summary.skipped[0][1] in str(summary)
    assert [json.loads(x)["file"] for x in (out / "skipped.jsonl").read_text().splitlines()] == ["broken.mp4"]
    assert json.loads((out / "config.json").read_text())["size"] == 64

    rows = _rows(out)
    assert [r["id"] for r in rows] == ["talk_a", "talk_b", "talk_c"]
    for row, (name, fps, n, _, _) in zip(rows, REAL):
        expected = round(n / fps * 25)
        assert row["source"] == name and row["shard"] == f"shards/{row['id']}.npz"
        assert row["identity"] == row["id"] and row["split"] in ("train", "val", "test")
        assert row["frames"] == expected and row["seconds"] == pytest.approx(expected / 25)
        assert (row["size"], row["fps"], row["has_labels"]) == (64, 25.0, False) and "text" not in row
        with np.load(out / row["shard"]) as z:
            assert z["frames"].shape == (expected, 64, 64, 3) and z["frames"].dtype == np.uint8
            assert z["mel"].shape == (expected, 16, 80) and z["mel"].dtype == np.float16
            assert z["audio"].shape == (expected * 640,) and z["audio"].dtype == np.float32
            assert float(z["fps"]) == 25.0 and int(z["sample_rate"]) == SR
            _, _, w, h = z["crop_box"]
            assert w == h > 40  # a face-sized square box in source pixels
            assert np.abs(z["audio"]).max() > 0.05 and np.isfinite(z["mel"]).all()
            assert z["frames"].std() > 20  # a real picture, not padding
    assert sorted(r["split"] for r in rows) == ["test", "train", "val"]  # 3 identities: one each

    again = prepare_dataset(real_src, out, cfg, workers=1, progress=False)
    assert (again.prepared, again.reused, len(again.skipped)) == (0, 3, 1)
    assert _rows(out) == rows


def test_prepare_resume_redoes_missing_or_broken_shards(real_src, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(real_src / "talk_a.mp4", src / "one.mp4")
    shutil.copy(real_src / "talk_b.mkv", src / "two.mkv")
    out = tmp_path / "out"
    cfg = PrepareConfig(size=32, detector="haar")
    assert prepare_dataset(src, out, cfg, workers=1, progress=False).prepared == 2
    shard = out / "shards" / "two.npz"
    shard.write_bytes(shard.read_bytes()[:1000])  # a truncated shard is not reused
    assert read_shard_meta(shard) is None
    summary = prepare_dataset(src, out, cfg, workers=1, progress=False)
    assert (summary.prepared, summary.reused) == (1, 1)
    assert read_shard_meta(shard)["id"] == "two"
    assert not [p for p in (out / "shards").iterdir() if p.name.startswith(".")]  # no temp files left


def test_prepare_config_mismatch_is_a_config_error(real_src, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(real_src / "talk_a.mp4", src / "one.mp4")
    out = tmp_path / "out"
    prepare_dataset(src, out, PrepareConfig(size=32, detector="haar"), workers=1, progress=False)
    with pytest.raises(ConfigError, match=r"size 32 -> 48.*new --out or the same settings"):
        prepare_dataset(src, out, PrepareConfig(size=48, detector="haar"), workers=1, progress=False)
    # split settings only change the manifest, which is rebuilt: allowed
    summary = prepare_dataset(src, out, PrepareConfig(size=32, detector="haar", seed=5), workers=1,
                              progress=False)
    assert summary.reused == 1
    with pytest.raises(ConfigError, match="size"):
        prepare_dataset(src, tmp_path / "o2", PrepareConfig(size=8), workers=1)


def test_prepare_empty_or_missing_src_is_a_data_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match=r"no videos found in .*empty.*\*\.mp4"):
        prepare_dataset(tmp_path / "empty", tmp_path / "out", workers=1)
    with pytest.raises(DataError, match="does not exist"):
        prepare_dataset(tmp_path / "nope", tmp_path / "out", workers=1)
    assert not (tmp_path / "out" / "config.json").exists()


@pytest.mark.slow
def test_prepare_nested_speaker_layout_in_a_process_pool(real_src, tmp_path):
    src = tmp_path / "lrs3"
    for spk, clip, source in [("spk1", "00001", "talk_a.mp4"), ("spk1", "00002", "talk_b.mkv"),
                              ("spk2", "00001", "talk_c.MOV")]:
        (src / spk).mkdir(parents=True, exist_ok=True)
        shutil.copy(real_src / source, src / spk / f"{clip}{Path(source).suffix.lower()}")
    (src / "spk1" / "00001.txt").write_text("Text:  HELLO THERE\nConf:  4\n")
    (src / ".cache").mkdir()
    (src / ".cache" / "x.mp4").write_bytes(b"hidden files are ignored")
    short = astronaut_clip(10, 128, 128)  # 0.4 s
    write_video(src / "spk2" / "short.mp4", short, 25, speech_like(0.4), SR)
    write_video(src / "spk3.mp4", np.full((30, 64, 64, 3), 120, np.uint8), 25, speech_like(1.2), SR)

    out = tmp_path / "out"
    summary = prepare_dataset(src, out, PrepareConfig(size=32, detector="haar"), workers=2, progress=False)
    assert summary.prepared == 3
    assert dict(summary.skipped) == {"spk2/short.mp4": "too short (0.4 s < 1.0 s)", "spk3.mp4": "no face found"}
    rows = _rows(out)
    assert [(r["id"], r["identity"], r["source"]) for r in rows] == [
        ("spk1__00001", "spk1", "spk1/00001.mp4"), ("spk1__00002", "spk1", "spk1/00002.mkv"),
        ("spk2__00001", "spk2", "spk2/00001.mov")]
    assert rows[0]["text"] == "HELLO THERE" and "text" not in rows[1]
    assert rows[0]["split"] == rows[1]["split"]  # splits are by identity
    assert all(r["split"] == "train" for r in rows)  # fewer than 3 identities: all train


def make_world(root: Path, identities=("id000", "id001"), splits=("train", "test"), n_frames=30, size=32):
    """A tiny stand-in for `lipstep synth` output: one clip per identity with labels."""
    rows = []
    for k, (idn, split) in enumerate(zip(identities, splits)):
        rng = np.random.default_rng(k)
        clip = f"{idn}_c00"
        d = root / "clips" / clip
        d.mkdir(parents=True)
        yy, xx = np.mgrid[:size, :size]
        frames = np.stack([np.stack([(xx * 7 + t * 3) % 256, (yy * 5 + k * 60) % 256,
                                     np.full_like(xx, 40 * k + t)], -1) for t in range(n_frames)])
        write_video(d / "clip.mp4", frames.astype(np.uint8), 25, speech_like(n_frames / 25, k), SR, crf=10)
        np.savez(d / "labels.npz", visemes=rng.integers(0, 15, n_frames).astype(np.int64),
                 mouth=rng.random((n_frames, 3), dtype=np.float32),
                 head_pose=rng.random((n_frames, 3), dtype=np.float32),
                 blink=rng.random(n_frames, dtype=np.float32),
                 phoneme_symbols=np.array(["h", "ə", "l", "oʊ"]),
                 phoneme_start=np.array([0.1, 0.2, 0.3, 0.4], np.float32),
                 phoneme_end=np.array([0.2, 0.3, 0.4, 0.6], np.float32),
                 identity=rng.random(8, dtype=np.float32), text=np.array("hello"))
        rows.append({"id": clip, "identity": idn, "split": split, "video": f"clips/{clip}/clip.mp4",
                     "labels": f"clips/{clip}/labels.npz", "seconds": n_frames / 25, "text": f"hello {k}",
                     "fps": 25.0, "size": size, **({"voice": "en-us+m3"} if k == 0 else {})})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_prepare_synthetic_world_carries_labels_and_splits(tmp_path):
    world = tmp_path / "world"
    src_rows = make_world(world)
    out = tmp_path / "out"
    summary = prepare_dataset(world, out, PrepareConfig(size=32, detector="haar"), workers=1, progress=False)
    assert (summary.prepared, summary.skipped) == (2, [])
    rows = _rows(out)
    assert [(r["id"], r["identity"], r["split"], r["text"]) for r in rows] == [
        ("id000_c00", "id000", "train", "hello 0"), ("id001_c00", "id001", "test", "hello 1")]
    assert all(r["has_labels"] and r["frames"] == 30 for r in rows)
    assert rows[0]["voice"] == "en-us+m3" and "voice" not in rows[1]  # the speaker's voice, where named
    assert rows[0]["source"] == src_rows[0]["video"]
    with np.load(world / src_rows[1]["labels"]) as lab, np.load(out / rows[1]["shard"]) as z:
        for key in ("visemes", "mouth", "head_pose", "blink", "phoneme_start", "phoneme_end"):
            np.testing.assert_array_equal(z[key], lab[key])
            assert z[key].dtype == lab[key].dtype
        assert list(z["phoneme_symbols"]) == ["h", "ə", "l", "oʊ"]
        assert "identity" not in z.files and "text" not in z.files
        assert list(z["crop_box"]) == [0, 0, 32, 32]  # no detection: the whole frame
        assert z["frames"].shape == (30, 32, 32, 3) and z["mel"].shape == (30, 16, 80)
        assert np.abs(z["frames"][:, :, :, 2].astype(int).mean() - (40 + 14.5)) < 4  # the frames, unresized


def test_prepare_world_with_a_missing_video_skips_it(tmp_path):
    world = tmp_path / "world"
    rows = make_world(world, n_frames=28)
    (world / rows[0]["video"]).unlink()
    summary = prepare_dataset(world, tmp_path / "out", PrepareConfig(size=32), workers=1, progress=False)
    assert summary.prepared == 1
    assert summary.skipped == [(rows[0]["video"], "file not found")]


def test_find_clips_rejects_a_prepared_dir_as_src(tmp_path):
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"id": "a", "shard": "shards/a.npz"}) + "\n")
    with pytest.raises(DataError, match="already a prepared directory"):
        find_clips(tmp_path)


def test_assign_splits_by_identity():
    ids = [f"spk{i:03d}" for i in range(200)]
    splits = assign_splits(ids, 0.1, 0.1, seed=0)
    counts = {s: sum(v == s for v in splits.values()) for s in ("train", "val", "test")}
    assert 140 < counts["train"] < 180 and counts["val"] > 8 and counts["test"] > 8
    assert assign_splits(ids, 0.1, 0.1, seed=0) == splits
    assert assign_splits(ids, 0.1, 0.1, seed=1) != splits
    bigger = assign_splits(ids + [f"new{i}" for i in range(50)], 0.1, 0.1, seed=0)
    assert all(bigger[i] == splits[i] for i in ids)  # adding speakers never moves existing ones
    assert set(assign_splits(["a", "b"], 0.1, 0.1).values()) == {"train"}
    small = assign_splits(["a", "b", "c", "d"], 0.1, 0.1)
    assert sorted(small.values()).count("train") == 2 and set(small.values()) == {"train", "val", "test"}
    assert set(assign_splits(["a", "b", "c", "d"], 0.0, 0.0).values()) == {"train"}


def test_prepare_config_validation():
    from lipstep.config import validate

    validate(PrepareConfig())
    for bad in ({"size": 8}, {"detector": "mtcnn"}, {"val_fraction": 0.6, "test_fraction": 0.5},
                {"min_seconds": 5.0, "max_seconds": 2.0}, {"mel_window": 0}):
        with pytest.raises(ConfigError):
            validate(PrepareConfig(**bad))
    assert to_dict(PrepareConfig())["mel_window"] == 16
