"""Codecs: shapes and scaling, save/load round trips, diffusers directories, errors, training."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lipstep.codecs import CodecConfig, CodecTrainConfig, build_codec, load_codec, save_codec, train_codec
from lipstep.data.prepare import PrepareConfig, build_manifest, write_shard
from lipstep.errors import ConfigError, LipstepError

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = CodecConfig(image_size=32, block_out_channels=(8, 16, 16), norm_num_groups=8)  # downsample 4


def _frames(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth random images [n, 3, size, size] in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def _smooth_clip(n: int, size: int, seed: int) -> np.ndarray:
    """uint8 [n, size, size, 3]: a coloured gradient with a blob that moves frame to frame."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(0.2, 0.8, 3)
    out = np.empty((n, size, size, 3), np.uint8)
    for t in range(n):
        cx, cy = 0.3 + 0.4 * t / n, 0.5 + 0.1 * np.sin(t)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.02)
        img = base[None, None] * (0.5 + 0.5 * x[..., None]) + 0.4 * blob[..., None] * np.array([1, -0.5, 0.2])
        out[t] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


def make_prepared(root: Path, clips=((0, "train", 12), (1, "train", 12), (2, "val", 6)), size: int = 32) -> Path:
    """A minimal prepared directory: shards with frames/audio/mel + manifest.jsonl."""
    for c, split, n in clips:
        meta = {"id": f"clip{c}", "source": f"clip{c}.mp4", "identity": f"spk{c}", "split": split, "text": None,
                "frames": n, "seconds": n / 25, "size": size, "fps": 25.0, "sample_rate": 16000,
                "mel_window": 16, "detector": "none", "has_labels": False}
        write_shard(root / "shards" / f"clip{c}.npz", {
            "frames": _smooth_clip(n, size, c), "audio": np.zeros(n * 640, np.float32),
            "mel": np.zeros((n, 16, 80), np.float16), "fps": np.float32(25), "sample_rate": np.int64(16000),
            "crop_box": np.array([0, 0, size, size]), "meta": np.array(json.dumps(meta))})
    build_manifest(root, PrepareConfig(size=size))
    return root


def test_default_codec_is_small_with_8x8_latents_for_64px():
    codec = build_codec()
    assert codec.kind == "kl" and codec.downsample == 8 and codec.latent_channels == 4
    assert 1_000_000 <= codec.num_parameters() <= 4_000_000
    assert not any(p.requires_grad for p in codec.parameters())
    with torch.no_grad():
        assert codec.encode(_frames(1, 64)).shape == (1, 4, 8, 8)


def test_encode_decode_shapes_scaling_and_video_helpers():
    codec = build_codec(TINY)
    x = _frames(3)
    with torch.no_grad():
        raw = codec.encode_unscaled(x)
        assert codec.encode(x).shape == (3, 4, 8, 8)
        codec.set_scaling(0.5, 0.25)
        z = codec.encode(x)
        torch.testing.assert_close(z, (raw - 0.25) * 0.5)
        y = codec.decode(z)
        assert y.shape == x.shape and y.abs().max() <= 1.0
        torch.testing.assert_close(y, codec.decode_unscaled(raw).clamp(-1, 1), atol=1e-5, rtol=1e-5)

        video = torch.stack([x, x.flip(0)])  # [B=2, T=3, 3, H, W]
        zv = codec.encode_video(video, chunk=2)
        assert zv.shape == (2, 3, 4, 8, 8)
        torch.testing.assert_close(zv[0], z, atol=1e-5, rtol=1e-5)
        assert codec.decode_video(zv, chunk=4).shape == video.shape

        s1 = codec.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
        s2 = codec.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
        assert torch.equal(s1, s2) and not torch.allclose(s1, z)
    with pytest.raises(ValueError, match="multiple"):
        codec.encode(_frames(1, 30))


def test_gradients_flow_through_the_frozen_decoder():
    codec = build_codec(TINY)
    z = torch.randn(1, 4, 8, 8, requires_grad=True)
    codec.decode(z).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(p.grad is None for p in codec.parameters())


def test_save_load_restores_identical_outputs(tmp_path):
    codec = build_codec(TINY)
    codec.set_scaling(0.7, -0.1)
    out = save_codec(codec, tmp_path / "codec")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["_type"] == "CodecConfig"
    loaded = load_codec(out)
    x = _frames(2)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), codec.encode(x))
        z = torch.randn(2, 4, 8, 8)
        assert torch.equal(loaded.decode(z), codec.decode(z))
    assert (loaded.scaling_factor, loaded.shift_factor) == (0.7, -0.1)
    assert loaded.identity() == codec.identity() and loaded.name == codec.name == "kl-c4-f4"

    save_codec(build_codec(TINY), out)  # an existing codec directory is replaced
    assert load_codec(out).identity() != codec.identity()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("x")
    with pytest.raises(LipstepError, match="refusing"):
        save_codec(codec, tmp_path / "data")


def test_our_tiny_kind_builds_saves_and_loads(tmp_path):
    codec = build_codec(CodecConfig(kind="tiny", image_size=32, block_out_channels=(8, 8, 8)))
    assert (codec.kind, codec.downsample, codec.name) == ("tiny", 4, "tiny-c4-f4")
    x = _frames(2)
    with torch.no_grad():
        z = codec.encode(x)
        assert z.shape == (2, 4, 8, 8) and torch.equal(codec.encode(x, sample=True), z)
        assert torch.equal(load_codec(save_codec(codec, tmp_path / "c")).decode(z), codec.decode(z))


def test_diffusers_autoencoder_tiny_directory(tmp_path):
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8),
                    num_encoder_blocks=(1, 1, 1), num_decoder_blocks=(1, 1, 1), latent_channels=4,
                    scaling_factor=1.5, shift_factor=0.1).save_pretrained(tmp_path / "taesd", safe_serialization=True)
    codec = load_codec(tmp_path / "taesd")
    assert (codec.kind, codec.downsample, codec.latent_channels) == ("tiny", 4, 4)
    assert (codec.scaling_factor, codec.shift_factor) == (1.5, 0.1)
    x = _frames(2)
    with torch.no_grad():
        z = codec.encode(x)
        assert z.shape == (2, 4, 8, 8)
        torch.testing.assert_close(z, (codec.encode_unscaled(x) - 0.1) * 1.5)
        assert codec.decode(z).shape == x.shape

        saved = save_codec(codec, tmp_path / "ref")  # records the path, no weights
        assert sorted(p.name for p in saved.iterdir()) == ["config.json"]
        assert json.loads((saved / "config.json").read_text())["path"] == str((tmp_path / "taesd").resolve())
        assert torch.equal(load_codec(saved).encode(x), z)

    over = build_codec(CodecConfig(path=str(tmp_path / "taesd"), scaling_factor=2.0))
    assert (over.kind, over.scaling_factor, over.shift_factor) == ("tiny", 2.0, 0.1)


def test_diffusers_autoencoder_kl_directory_uses_its_scaling_factor(tmp_path):
    from diffusers import AutoencoderKL

    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, latent_channels=4,
                  scaling_factor=0.3).save_pretrained(tmp_path / "pipe" / "vae")
    codec = load_codec(tmp_path / "pipe")  # a pipeline directory: its vae/ subfolder
    assert (codec.kind, codec.downsample, codec.scaling_factor, codec.shift_factor) == ("kl", 2, 0.3, 0.0)
    with torch.no_grad():
        assert codec.encode(_frames(1)).shape == (1, 4, 16, 16)


def test_wrong_directories_are_one_line_errors(tmp_path):
    from transformers import Wav2Vec2Config

    Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path / "w2v")
    cases = {tmp_path / "w2v": "transformers model", tmp_path / "missing": "does not exist",
             tmp_path: "no config.json"}
    for path, expected in cases.items():
        with pytest.raises(LipstepError, match=expected) as err:
            load_codec(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text(json.dumps({"_type": "CodecConfig", "kind": "kl"}))
    with pytest.raises(LipstepError, match="model.safetensors"):
        load_codec(tmp_path / "broken")


def test_config_validation():
    with pytest.raises(ConfigError, match="multiple"):
        CodecConfig(image_size=36).validate()
    with pytest.raises(ConfigError, match="norm_num_groups"):
        CodecConfig(block_out_channels=(8, 16)).validate()
    with pytest.raises(ConfigError, match="codec.path"):
        CodecTrainConfig(codec=CodecConfig(path="/somewhere")).validate()


def test_train_codec_learns_and_saves_a_loadable_codec(tmp_path):
    prepared = make_prepared(tmp_path / "prep")
    arch = CodecConfig(block_out_channels=(16, 32, 32), norm_num_groups=8)
    cfg = CodecTrainConfig(codec=arch, steps=30, batch=8, lr=2e-3, warmup_steps=5, scale_frames=64, eval_frames=6)
    result = train_codec(prepared, tmp_path / "codec", cfg, progress=False)
    assert len(result.losses) == 30 and all(np.isfinite(result.losses))
    assert np.mean(result.losses[-5:]) < 0.7 * np.mean(result.losses[:5])
    assert result.eval_split == "val" and np.isfinite(result.psnr) and result.psnr > 10
    assert sorted(p.name for p in (tmp_path / "codec").iterdir()) == ["config.json", "model.safetensors",
                                                                      "train.json"]
    summary = json.loads((tmp_path / "codec" / "train.json").read_text())
    assert summary["latent_shape"] == [4, 8, 8] and summary["train"]["steps"] == 30

    codec = load_codec(tmp_path / "codec")
    assert codec.cfg.image_size == 32 and codec.scaling_factor == pytest.approx(result.scaling_factor)
    # scale_frames covers all 24 train frames, so their scaled latents have unit std
    from lipstep.data.dataset import open_shard

    frames = np.concatenate([open_shard(prepared / f"shards/clip{c}.npz")["frames"] for c in (0, 1)])
    x = torch.from_numpy(frames).float().div(127.5).sub(1).permute(0, 3, 1, 2)
    with torch.no_grad():
        assert codec.encode(x).std().item() == pytest.approx(1.0, rel=1e-3)

    again = train_codec(prepared, tmp_path / "codec2", CodecTrainConfig(codec=arch, steps=3, batch=4),
                        progress=False)
    first = train_codec(prepared, tmp_path / "codec3", CodecTrainConfig(codec=arch, steps=3, batch=4),
                        progress=False)
    assert again.losses == first.losses  # deterministic given the seed


def test_training_augmentation_permutes_colours_and_mirrors_only():
    from lipstep.codecs.vae import augment_frames

    x = _frames(64)
    cfg = CodecTrainConfig(colour_aug=1.0, flip=False)
    y = augment_frames(x, cfg, np.random.default_rng(0))
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    # every frame is a colour permutation of itself times per-channel gains: per-channel means move,
    # but the spatial pattern of each output channel is one of the input channels (correlation ~1)
    for i in range(4):
        corr = np.corrcoef(y[i].reshape(3, -1).numpy(), x[i].reshape(3, -1).numpy())[:3, 3:]
        assert (corr.max(axis=1) > 0.95).all()
    assert torch.equal(augment_frames(x, cfg, np.random.default_rng(0)), y)   # seeded
    off = CodecTrainConfig(colour_aug=0.0, flip=False)
    assert torch.equal(augment_frames(x, off, np.random.default_rng(0)), x)
    mirrored = augment_frames(x, CodecTrainConfig(colour_aug=0.0, flip=True), np.random.default_rng(0))
    same = [torch.equal(mirrored[i], x[i]) or torch.equal(mirrored[i], x[i].flip(-1)) for i in range(len(x))]
    assert all(same) and not torch.equal(mirrored, x)
    with pytest.raises(ConfigError, match="colour_aug"):
        CodecTrainConfig(colour_aug=1.5).validate()
