"""Latent cache readers: clear errors for a missing cache or clip, and the clip naming rule."""

import pytest

from lipstep.data.latents import clip_id_of, load_latents, read_cache_info
from lipstep.errors import DataError


def test_load_latents_errors(tmp_path):
    with pytest.raises(DataError, match="no cached latents"):
        load_latents(tmp_path, "nope")
    with pytest.raises(DataError, match="not a latent cache"):
        read_cache_info(tmp_path)
    (tmp_path / "clip.safetensors").write_bytes(b"half a file")
    with pytest.raises(DataError, match="cannot read cached latents"):
        load_latents(tmp_path, "clip")


def test_clip_id_of_prefers_the_id_then_the_shard_stem():
    assert clip_id_of({"id": "c7", "shard": "shards/x.npz"}) == "c7"
    assert clip_id_of({"shard": "shards/x.npz"}) == "x"
