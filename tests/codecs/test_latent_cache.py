"""Latent cache: encodes every clip, resumes without re-encoding, refuses another codec's directory."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lipstep.codecs import CodecConfig, build_codec, default_cache_dir, encode_prepared
from lipstep.data.dataset import open_shard
from lipstep.data.latents import load_latents, read_cache_info
from lipstep.data.prepare import PrepareConfig, build_manifest, write_shard
from lipstep.errors import DataError, LipstepError

TINY = CodecConfig(image_size=16, block_out_channels=(8, 8), norm_num_groups=8)  # downsample 2
CLIPS = {"clip0": 7, "clip1": 5, "clip2": 3}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def prepared(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for i, (cid, n) in enumerate(CLIPS.items()):
        meta = {"id": cid, "source": f"{cid}.mp4", "identity": f"spk{i}", "split": "train", "text": None,
                "frames": n, "seconds": n / 25, "size": 16, "fps": 25.0, "sample_rate": 16000,
                "mel_window": 16, "detector": "none", "has_labels": False}
        write_shard(tmp_path / "shards" / f"{cid}.npz", {
            "frames": rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), "audio": np.zeros(n * 640, np.float32),
            "mel": np.zeros((n, 16, 80), np.float16), "fps": np.float32(25), "sample_rate": np.int64(16000),
            "crop_box": np.array([0, 0, 16, 16]), "meta": np.array(json.dumps(meta))})
    build_manifest(tmp_path, PrepareConfig(size=16))
    return tmp_path


def _counting(codec):
    """Wrap codec.encode to count the frames it encodes."""
    seen = []
    encode = codec.encode
    codec.encode = lambda x, **kw: (seen.append(len(x)), encode(x, **kw))[1]
    return seen


def test_encode_prepared_writes_every_clip(prepared):
    codec = build_codec(TINY)
    seen = _counting(codec)
    cache = encode_prepared(prepared, codec, batch=4, progress=False)
    assert cache == default_cache_dir(prepared, codec) and cache.parent == prepared / "latents"
    assert cache.name.startswith("kl-c4-f2-") and sum(seen) == sum(CLIPS.values()) and max(seen) <= 4
    info = read_cache_info(cache)
    assert info["identity"] == codec.identity() and info["config"]["block_out_channels"] == [8, 8]
    for cid, n in CLIPS.items():
        lat = load_latents(cache, cid)
        assert lat.shape == (n, 4, 8, 8) and lat.dtype == np.float16
        frames = open_shard(prepared / f"shards/{cid}.npz")["frames"]
        x = torch.from_numpy(np.array(frames)).float().div(127.5).sub(1).permute(0, 3, 1, 2)
        with torch.no_grad():
            np.testing.assert_allclose(lat.astype(np.float32), codec.encode(x).numpy(), atol=2e-3, rtol=2e-3)


def test_second_run_encodes_nothing_and_repairs_missing_or_broken_files(prepared):
    codec = build_codec(TINY)
    cache = encode_prepared(prepared, codec, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    seen = _counting(codec)
    assert encode_prepared(prepared, codec, progress=False) == cache
    assert seen == [] and {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == stamps

    (cache / "clip1.safetensors").unlink()
    (cache / "clip2.safetensors").write_bytes(b"half a file")
    encode_prepared(prepared, codec, progress=False)
    assert sum(seen) == CLIPS["clip1"] + CLIPS["clip2"]
    assert load_latents(cache, "clip2").shape == (3, 4, 8, 8)
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_another_codec_gets_its_own_cache_and_cannot_reuse_this_one(prepared):
    first = build_codec(TINY)
    cache = encode_prepared(prepared, first, progress=False)
    second = build_codec(TINY)  # other random weights
    assert encode_prepared(prepared, second, progress=False) != cache
    with pytest.raises(LipstepError, match="another codec") as err:
        encode_prepared(prepared, second, cache, progress=False)
    assert str(cache) in str(err.value)
    rescaled = build_codec(TINY)
    rescaled.load_state_dict(first.state_dict())
    assert rescaled.identity() == first.identity()
    rescaled.set_scaling(0.5)
    assert rescaled.identity() != first.identity()  # scaling changes the latents, hence the identity


def test_pixel_codec_cache_decodes_back_to_the_exact_frames(prepared):
    codec = build_codec(CodecConfig(kind="pixel", factor=2))
    seen = _counting(codec)
    cache = encode_prepared(prepared, codec, batch=4, progress=False)
    assert cache.name.startswith("pixel-c12-f2-") and sum(seen) == sum(CLIPS.values())
    info = read_cache_info(cache)
    assert (info["kind"], info["latent_channels"], info["downsample"]) == ("pixel", 12, 2)
    assert info["config"]["factor"] == 2
    for cid, n in CLIPS.items():
        lat = load_latents(cache, cid)
        assert lat.shape == (n, 12, 8, 8) and lat.dtype == np.float16
        with torch.no_grad():
            y = codec.decode(torch.from_numpy(lat).float())
        back = ((y + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        assert np.array_equal(back, open_shard(prepared / f"shards/{cid}.npz")["frames"])  # float16 is enough
    assert encode_prepared(prepared, codec, progress=False) == cache and sum(seen) == sum(CLIPS.values())

    coarse = build_codec(CodecConfig(kind="pixel", factor=4))  # another factor: another cache
    other = encode_prepared(prepared, coarse, progress=False)
    assert other != cache and load_latents(other, "clip0").shape == (CLIPS["clip0"], 48, 4, 4)
    with pytest.raises(LipstepError, match="another codec"):
        encode_prepared(prepared, coarse, cache, progress=False)
    with pytest.raises(DataError, match="multiple of the codec's downsample factor 3"):
        encode_prepared(prepared, build_codec(CodecConfig(kind="pixel", factor=3, image_size=15)), progress=False)
