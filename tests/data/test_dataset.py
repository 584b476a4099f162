"""Training windows: shapes, exact frame/motion/audio alignment, determinism across workers, errors."""

import json
import pickle

import numpy as np
import pytest
import torch

from lipstep.data.dataset import WindowConfig, WindowDataset
from lipstep.data.prepare import PrepareConfig, build_manifest, write_shard
from lipstep.errors import ConfigError, DataError

S, K = 16, 16


def _shard(clip: int, n: int, split: str, labels: bool = True) -> dict:
    """Frame t of clip c has red = t, green = 10 c, blue = noise; so every pixel says where it is from."""
    rng = np.random.default_rng(clip)
    frames = np.empty((n, S, S, 3), np.uint8)
    frames[..., 0] = np.arange(n, dtype=np.uint8)[:, None, None]
    frames[..., 1] = 10 * clip
    frames[..., 2] = rng.integers(0, 256, (n, S, S))
    meta = {"id": f"clip{clip}", "source": f"clip{clip}.mp4", "identity": f"spk{clip}", "split": split,
            "text": None, "frames": n, "seconds": n / 25, "size": S, "fps": 25.0, "sample_rate": 16000,
            "mel_window": K, "detector": "none", "has_labels": labels}
    arrays = {"frames": frames, "audio": np.zeros(n * 640, np.float32),
              "mel": rng.standard_normal((n, K, 80)).astype(np.float16), "fps": np.float32(25),
              "sample_rate": np.int64(16000), "crop_box": np.array([0, 0, S, S]),
              "meta": np.array(json.dumps(meta))}
    if labels:
        arrays["visemes"] = (np.arange(n) % 15).astype(np.int64)
        arrays["mouth"] = rng.random((n, 3), dtype=np.float32)
    return arrays


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    clips = [(0, 30, "train"), (1, 23, "train"), (2, 10, "train"), (3, 6, "train"), (4, 9, "test"),
             (5, 40, "val")]
    for c, n, split in clips:
        write_shard(root / "shards" / f"clip{c}.npz", _shard(c, n, split))
    build_manifest(root, PrepareConfig())
    return root


def _frame_ids(x: torch.Tensor) -> np.ndarray:
    """Frame numbers encoded in the red channel of [..., 3, H, W] images in [-1, 1]."""
    red = ((x[..., 0, :, :] + 1) * 127.5).round().to(torch.int64)
    assert (red == red[..., :1, :1]).all()
    return red[..., 0, 0].numpy()


def _clip_ids(x: torch.Tensor) -> np.ndarray:
    return ((x[..., 1, 0, 0] + 1) * 127.5).round().to(torch.int64).numpy() // 10


def test_index_covers_every_window(prepared):
    ds = WindowDataset(prepared, "train", WindowConfig(frames=8, motion_frames=2, stride=4))
    # clip0: 30 frames -> starts 2, 6, ..., 22; clip1: 23 -> 2..14; clip2: 10 -> 2; clip3 (6) too short
    expected = [(0, s) for s in range(2, 23, 4)] + [(1, s) for s in range(2, 16, 4)] + [(2, 2)]
    assert [ds.window(i) for i in range(len(ds))] == expected
    assert [c["id"] for c in ds.clips] == ["clip0", "clip1", "clip2", "clip3"]


def test_item_shapes_dtypes_and_ranges(prepared):
    ds = WindowDataset(prepared, "train")
    item = ds[3]
    assert item["frames"].shape == (8, 3, S, S) and item["frames"].dtype == torch.float32
    assert item["reference"].shape == (3, S, S) and item["reference"].dtype == torch.float32
    assert item["motion"].shape == (2, 3, S, S) and item["motion"].dtype == torch.float32
    assert item["audio"].shape == (8, K, 80) and item["audio"].dtype == torch.float32
    assert item["visemes"].shape == (8,) and item["visemes"].dtype == torch.int64
    assert item["mouth"].shape == (8, 3) and item["mouth"].dtype == torch.float32
    assert item["clip_index"].dtype == torch.int64 and item["start"].dtype == torch.int64
    for key in ("frames", "reference", "motion"):
        assert item[key].min() >= -1 and item[key].max() <= 1
    assert item["frames"][..., 2, :, :].min() < -0.9 and item["frames"][..., 2, :, :].max() > 0.9


def test_frames_motion_audio_and_labels_are_aligned(prepared):
    ds = WindowDataset(prepared, "train", WindowConfig(frames=8, motion_frames=3, stride=5))
    for i in range(len(ds)):
        item = ds[i]
        c, s = ds.window(i)
        assert (int(item["clip_index"]), int(item["start"])) == (c, s)
        assert list(_frame_ids(item["frames"])) == list(range(s, s + 8))
        assert list(_frame_ids(item["motion"])) == [s - 3, s - 2, s - 1]  # exactly the frames before
        assert set(_clip_ids(item["frames"])) == set(_clip_ids(item["motion"])) == {c}
        with np.load(prepared / ds.clips[c]["shard"]) as z:
            np.testing.assert_array_equal(item["audio"].numpy(), z["mel"][s:s + 8].astype(np.float32))
            np.testing.assert_array_equal(item["visemes"].numpy(), z["visemes"][s:s + 8])
            np.testing.assert_allclose(item["frames"][0].numpy(),
                                       z["frames"][s].transpose(2, 0, 1) / 127.5 - 1, atol=1e-6)


def test_reference_is_far_from_the_window_when_possible(prepared):
    cfg = WindowConfig(frames=8, motion_frames=2, stride=1, min_ref_distance=4, max_ref_distance=0)
    ds = WindowDataset(prepared, "train", cfg)
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            c, s = ds.window(i)
            ref = int(item["reference_index"])
            assert _frame_ids(item["reference"]) == ref and _clip_ids(item["reference"]) == c
            n = ds.clips[c]["frames"]
            if s - 4 >= 0 or s + 7 + 4 <= n - 1:
                assert ref <= s - 4 or ref >= s + 7 + 4, (c, s, ref)
            else:  # clip2 (10 frames) only has frames 0 and 1 outside the window at start 2
                assert ref in (0, 1)


def test_reference_within_the_distance_band_when_possible(prepared):
    cfg = WindowConfig(frames=4, motion_frames=0, stride=1, min_ref_distance=2, max_ref_distance=3)
    ds = WindowDataset(prepared, "train", cfg)
    seen = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            c, s = ds.window(i)
            ref = int(ds[i]["reference_index"])
            n = ds.clips[c]["frames"]
            band = [f for f in range(n) if 2 <= s - f <= 3 or 2 <= f - (s + 3) <= 3]
            if band:
                assert ref in band, (c, s, ref, band)
                seen.add(s - ref if ref < s else ref - (s + 3))
            else:
                assert not s <= ref < s + 4
    assert seen == {2, 3}  # both ends of the band are drawn
    with pytest.raises(ConfigError, match="max_ref_distance"):
        WindowConfig(min_ref_distance=4, max_ref_distance=2).validate()


def test_same_seed_same_items_and_epoch_only_moves_the_reference(prepared):
    a, b = WindowDataset(prepared, "train"), WindowDataset(prepared, "train")
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    refs0 = [int(a[i]["reference_index"]) for i in range(len(a))]
    a.set_epoch(1)
    refs1 = [int(a[i]["reference_index"]) for i in range(len(a))]
    assert refs0 != refs1
    assert all(torch.equal(a[i]["frames"], b[i]["frames"]) for i in range(len(a)))
    a.set_epoch(0)
    assert [int(a[i]["reference_index"]) for i in range(len(a))] == refs0
    other = WindowDataset(prepared, "train", WindowConfig(seed=7))
    assert [int(other[i]["reference_index"]) for i in range(len(other))] != refs0


def _all_batches(ds, workers):
    loader = torch.utils.data.DataLoader(ds, batch_size=3, shuffle=False, num_workers=workers)
    return list(loader)


def test_identical_items_with_0_and_2_dataloader_workers(prepared):
    ds = WindowDataset(prepared, "train", WindowConfig(stride=2), cache_size=1)
    ds.set_epoch(3)
    b0, b2 = _all_batches(ds, 0), _all_batches(ds, 2)
    assert len(b0) == len(b2) == -(-len(ds) // 3)
    for x, y in zip(b0, b2):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert b0[0]["frames"].shape == (3, 8, 3, S, S)  # [B, T, C, H, W]
    assert b0[0]["audio"].shape == (3, 8, K, 80)  # [B, T, K, D]


def test_shards_load_lazily_into_a_small_cache(prepared):
    ds = WindowDataset(prepared, "train", cache_size=2)
    assert len(ds._cache) == 0
    for i in range(len(ds)):
        ds[i]
    assert len(ds._cache) == 2
    assert len(pickle.loads(pickle.dumps(ds))._cache) == 0


def test_no_motion_frames_and_a_clip_as_long_as_the_window(prepared):
    ds = WindowDataset(prepared, "test", WindowConfig(frames=9, motion_frames=0, stride=3))
    assert len(ds) == 1 and ds.window(0) == (0, 0)
    item = ds[0]
    assert item["motion"].shape == (0, 3, S, S)
    assert 0 <= int(item["reference_index"]) < 9  # no frame outside the window: any frame


def test_errors(prepared, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        WindowDataset(tmp_path / "missing")
    with pytest.raises(DataError, match="no manifest.jsonl"):
        WindowDataset(tmp_path)
    with pytest.raises(DataError, match=r"split 'dev' is not in .*\(it has: test, train, val\)"):
        WindowDataset(prepared, "dev")
    with pytest.raises(DataError, match="no clip in split 'test' has at least 10 frames"):
        WindowDataset(prepared, "test", WindowConfig(frames=8, motion_frames=2))
    with pytest.raises(IndexError):
        WindowDataset(prepared, "val")[10_000]


def test_open_shard_memory_maps_what_np_load_reads(prepared, tmp_path):
    from lipstep.data.dataset import open_shard

    path = prepared / "shards" / "clip0.npz"
    mapped = open_shard(path)
    with np.load(path) as z:
        assert set(mapped) == set(z.files)
        for key in z.files:
            np.testing.assert_array_equal(mapped[key], z[key])
            assert mapped[key].dtype == z[key].dtype and mapped[key].shape == z[key].shape
    assert isinstance(mapped["frames"], np.memmap) and not mapped["frames"].flags.writeable
    assert set(open_shard(path, ("frames", "mel"))) == {"frames", "mel"}
    packed = tmp_path / "packed.npz"
    np.savez_compressed(packed, frames=np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3), empty=np.zeros((0, 3)))
    got = open_shard(packed)
    assert got["frames"].sum() == 66 and got["empty"].shape == (0, 3)
    with pytest.raises(DataError, match="missing"):
        open_shard(tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read shard"):
        open_shard(tmp_path / "bad.npz")


def test_blink_repeat_adds_copies_of_the_windows_that_hold_a_blink(prepared, tmp_path):
    root = tmp_path / "blinky"
    blinks = {0: 30, 1: 23}
    for c, n in blinks.items():
        arrays = _shard(c, n, "train")
        closure = np.zeros(n, np.float32)
        if c == 0:
            closure[12:15] = [0.5, 1.0, 0.5]  # one blink, frames 12-14
        arrays["blink"] = closure
        write_shard(root / "shards" / f"clip{c}.npz", arrays)
    build_manifest(root, PrepareConfig())
    cfg = {"frames": 8, "motion_frames": 2, "stride": 4}
    plain = WindowDataset(root, "train", WindowConfig(**cfg))
    more = WindowDataset(root, "train", WindowConfig(**cfg), blink_repeat=2)
    holding = [w for w in (plain.window(i) for i in range(len(plain))) if w[0] == 0 and w[1] <= 14 and w[1] + 8 > 12]
    assert holding == [(0, 6), (0, 10), (0, 14)] and plain.blink_windows == 0 and more.blink_windows == 3
    assert len(more) == len(plain) + 2 * len(holding)
    assert more.blink_note == " (3 holding a blink, each 3x)" and plain.blink_note == ""
    assert [more.window(i) for i in range(len(plain))] == [plain.window(i) for i in range(len(plain))]
    assert sorted(more.window(i) for i in range(len(plain), len(more))) == sorted(holding * 2)
    item = more[len(plain)]  # a copy is a full item: its blink frames come along
    assert float(item["blink"].max()) == 1.0
    with pytest.raises(DataError, match="blink_repeat: the 'train' clips .* have no blink labels"):
        WindowDataset(prepared, "train", WindowConfig(**cfg), blink_repeat=1)
    with pytest.raises(ConfigError, match="blink_repeat must be >= 0"):
        WindowDataset(root, "train", WindowConfig(**cfg), blink_repeat=-1)
