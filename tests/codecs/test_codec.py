"""Codecs: shapes and scaling, save/load round trips, diffusers directories, errors, training."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lipstep.cli import main
from lipstep.codecs import CodecConfig, CodecTrainConfig, build_codec, load_codec, save_codec, train_codec
from lipstep.codecs.vae import augment_frames
from lipstep.data.dataset import open_shard
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
    assert sorted(p.name for p in out.iterdir()) == ["checksums.json", "config.json", "model.safetensors"]
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


@pytest.mark.parametrize("chain", [["a"], ["a", "b"], ["a", "b", "c"]], ids=["self", "two", "three"])
def test_a_config_path_that_leads_back_is_refused_naming_the_file(chain, tmp_path):
    """A lipstep codec config.json whose ``path`` points at itself, or round a cycle, is one error, not an
    endless recursion."""
    for name, target in zip(chain, chain[1:] + chain[:1]):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"_type": "CodecConfig",
                                                                 "path": str(tmp_path / target)}))
    with pytest.raises(LipstepError, match=f"^{tmp_path / 'a' / 'config.json'}: its path .* leads back") as err:
        load_codec(tmp_path / "a")
    assert "\n" not in str(err.value)


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
    assert sorted(p.name for p in (tmp_path / "codec").iterdir()) == ["checksums.json", "config.json",
                                                                      "model.safetensors", "train.json"]
    summary = json.loads((tmp_path / "codec" / "train.json").read_text())
    assert summary["latent_shape"] == [4, 8, 8] and summary["train"]["steps"] == 30

    codec = load_codec(tmp_path / "codec")
    assert codec.cfg.image_size == 32 and codec.scaling_factor == pytest.approx(result.scaling_factor)
    # scale_frames covers all 24 train frames, so their scaled latents have unit std
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


# ------------------------------------------------------------------------------------ the pixel codec

PIXEL = CodecConfig(kind="pixel", factor=2)


def _uint8_frames(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 [n, size, size, 3] covering the full range, 0 and 255 included."""
    frames = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    frames[0, 0, 0], frames[0, 0, 1] = 0, 255
    return frames


def _to_unit(frames: np.ndarray) -> torch.Tensor:
    """uint8 [N, S, S, 3] -> float [N, 3, S, S] in [-1, 1] (the mapping of the data pipeline)."""
    return torch.from_numpy(frames).float().div(127.5).sub(1.0).permute(0, 3, 1, 2).contiguous()


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """float [N, 3, S, S] in [-1, 1] -> uint8 [N, S, S, 3] (rounded, as `eval.mouthreader.reconstruct`)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_pixel_codec_round_trips_uint8_frames_bit_exactly():
    codec = build_codec(PIXEL)
    assert (codec.kind, codec.name, codec.downsample, codec.latent_channels) == ("pixel", "pixel-c12-f2", 2, 12)
    assert codec.num_parameters() == 0 and (codec.scaling_factor, codec.shift_factor) == (1.0, 0.0)
    frames = _uint8_frames(5)
    x = _to_unit(frames)
    with torch.no_grad():
        z = codec.encode(x)
        assert z.shape == (5, 12, 32, 32) and z.dtype == torch.float32
        # space-to-depth layout: channel c * f² + i * f + j at (y, x) is pixel (y * f + i, x * f + j) of colour c
        for c, i, j in [(0, 0, 0), (1, 0, 1), (2, 1, 0), (2, 1, 1)]:
            assert torch.equal(z[:, c * 4 + i * 2 + j], x[:, c, i::2, j::2])
        assert np.array_equal(_to_uint8(codec.decode(z)), frames)
        # the latent cache stores float16: the step of 1/127.5 survives it, so decoding is still exact
        assert np.array_equal(_to_uint8(codec.decode(z.half().float())), frames)
        video = x.unflatten(0, (1, 5))
        assert torch.equal(codec.decode_video(codec.encode_video(video, chunk=2), chunk=3), video)

        coarse = build_codec(CodecConfig(kind="pixel", factor=4))
        assert coarse.name == "pixel-c48-f4" and coarse.encode(x).shape == (5, 48, 16, 16)
        assert np.array_equal(_to_uint8(coarse.decode(coarse.encode(x))), frames)
        scaled = build_codec(CodecConfig(kind="pixel", factor=2, scaling_factor=2.0))
        assert torch.equal(scaled.encode(x), 2 * z) and torch.equal(scaled.decode(2 * z), x)
    with pytest.raises(ValueError, match="multiple"):
        codec.encode(_to_unit(_uint8_frames(1, size=33)))
    with pytest.raises(ValueError, match="latents"):
        codec.decode(torch.zeros(1, 4, 32, 32))


def test_pixel_codec_saves_config_only_and_loads_identically(tmp_path):
    codec = build_codec(PIXEL)
    out = save_codec(codec, tmp_path / "pixel")
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]  # no weights file
    saved = json.loads((out / "config.json").read_text())
    assert (saved["_type"], saved["kind"], saved["factor"], saved["latent_channels"]) == ("CodecConfig", "pixel", 2, 12)
    loaded = load_codec(out)
    assert (loaded.kind, loaded.name, loaded.identity()) == ("pixel", "pixel-c12-f2", codec.identity())
    x = _to_unit(_uint8_frames(2))
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), codec.encode(x))

    # the identity names the factor and the scaling, so latent caches of different pixel codecs never mix
    other = [build_codec(CodecConfig(kind="pixel", factor=4)),
             build_codec(CodecConfig(kind="pixel", factor=2, scaling_factor=0.5))]
    assert len({codec.identity(), *(c.identity() for c in other)}) == 3
    reloaded = load_codec(save_codec(other[1], tmp_path / "scaled"))
    assert reloaded.scaling_factor == 0.5 and reloaded.identity() == other[1].identity()


def test_pixel_codec_validation():
    with pytest.raises(ConfigError, match="multiple of the pixel factor 3"):
        CodecConfig(kind="pixel", factor=3, image_size=64).validate()
    for factor in (0, -2):
        with pytest.raises(ConfigError, match="factor must be >= 1"):
            build_codec(CodecConfig(kind="pixel", factor=factor))
    codec = build_codec(CodecConfig(kind="pixel", factor=1, image_size=30))  # factor 1: the frame itself
    x = _to_unit(_uint8_frames(1, size=30))
    assert codec.latent_channels == 3 and torch.equal(codec.encode(x), x)


def test_train_codec_with_the_pixel_kind_writes_it_without_training(tmp_path):
    prepared = make_prepared(tmp_path / "prep")  # 32 px frames
    cfg = CodecTrainConfig(codec=CodecConfig(kind="pixel", factor=2), eval_frames=6)
    result = train_codec(prepared, tmp_path / "codec", cfg, progress=False)
    assert result.losses == [] and result.parameters == 0 and result.scaling_factor == 1.0
    assert result.eval_split == "val" and result.psnr == pytest.approx(100.0)  # lossless: capped at 100 dB
    assert sorted(p.name for p in (tmp_path / "codec").iterdir()) == ["config.json", "train.json"]
    summary = json.loads((tmp_path / "codec" / "train.json").read_text())
    assert summary["latent_shape"] == [12, 16, 16] and summary["psnr"] == pytest.approx(100.0)
    assert summary["parameters"] == 0 and summary["final_loss"] == 0.0
    codec = load_codec(tmp_path / "codec")
    assert (codec.kind, codec.cfg.image_size, codec.latent_channels) == ("pixel", 32, 12)
    with pytest.raises(ConfigError, match="multiple of the pixel factor"):  # 32 px data, factor 3
        train_codec(prepared, tmp_path / "bad", CodecTrainConfig(codec=CodecConfig(kind="pixel", factor=3)),
                    progress=False)
    assert not (tmp_path / "bad").exists()


def test_cli_train_codec_pixel(tmp_path, capsys):
    prepared = make_prepared(tmp_path / "prep")
    with pytest.raises(SystemExit) as info:
        main(["train", "codec", "--data", str(prepared), "--out", str(tmp_path / "codec"), "codec.kind=pixel"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "0.00 M parameters" in out and "PSNR 100.00 dB on val" in out
    assert sorted(p.name for p in (tmp_path / "codec").iterdir()) == ["config.json", "train.json"]
    assert load_codec(tmp_path / "codec").name == "pixel-c12-f2"

    with pytest.raises(SystemExit) as info:
        main(["train", "codec", "--data", str(prepared), "--out", str(tmp_path / "bad"), "codec.kind=pixel",
              "codec.factor=0"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "factor must be >= 1" in err and "\n" not in err

    with pytest.raises(SystemExit) as info:
        main(["train", "codec", "--help"])
    assert info.value.code == 0
    assert "codec.kind=pixel" in capsys.readouterr().out


def test_pixel_codec_survives_deepcopy_and_half_export(tmp_path):
    """`lipstep export --half` deep-copies the codec; its diffusers-like config must allow that."""
    import copy

    codec = build_codec(CodecConfig(kind="pixel"))
    clone = copy.deepcopy(codec)
    assert clone.latent_channels == 12 and clone.identity() == codec.identity()
    assert not hasattr(codec.vae.config, "missing_key")
