"""Audio encoders: mel equals prepared shards, tiny HF models give [T, K, D], windows are centred."""

import json

import numpy as np
import pytest
import torch

from lipstep.audio import (
    AudioConfig,
    HFAudioEncoder,
    MelEncoder,
    VisemeEncoder,
    build_audio_encoder,
    load_audio_encoder,
    save_audio_encoder,
)
from lipstep.config import save_config
from lipstep.errors import ConfigError, LipstepError

SR = 16000
TINY = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
        "conv_dim": (8,) * 7, "num_conv_pos_embeddings": 8, "num_conv_pos_embedding_groups": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t)
    return (0.3 * env * np.random.default_rng(seed).standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """Tiny random wav2vec2, HuBERT (with its own preprocessor config) and Whisper (1 s window) dirs."""
    from transformers import (
        HubertConfig,
        HubertModel,
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Model,
        WhisperConfig,
        WhisperModel,
    )

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config(**TINY)).save_pretrained(root / "wav2vec2")
    HubertModel(HubertConfig(**TINY)).save_pretrained(root / "hubert")
    Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(root / "hubert")
    WhisperModel(WhisperConfig(
        d_model=16, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=80, max_source_positions=50, max_target_positions=8,
        vocab_size=32, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )).save_pretrained(root / "whisper")
    return root


def test_mel_encoder_equals_the_prepared_shards_mel(tmp_path):
    from lipstep.data.dataset import open_shard, read_manifest
    from lipstep.data.media import write_video
    from lipstep.data.prepare import PrepareConfig, prepare_dataset

    frames = np.random.default_rng(0).integers(0, 255, (30, 32, 32, 3), dtype=np.uint8)
    write_video(tmp_path / "src" / "clip.mp4", frames, 25, speech_like(1.2), SR)
    prepare_dataset(tmp_path / "src", tmp_path / "prep", PrepareConfig(size=32, detector="none"),
                    workers=1, progress=False)
    (row,) = read_manifest(tmp_path / "prep")
    shard = open_shard(tmp_path / "prep" / row["shard"])
    enc = MelEncoder()
    feats = enc.encode(shard["audio"], row["frames"])
    assert feats.shape == (row["frames"], 16, 80) == shard["mel"].shape and feats.dtype == torch.float32
    np.testing.assert_array_equal(feats.numpy().astype(np.float16), shard["mel"])
    batch = enc.encode_batch([shard["audio"], torch.from_numpy(np.array(shard["audio"]))], row["frames"])
    assert batch.shape == (2, row["frames"], 16, 80) and torch.equal(batch[0], batch[1])


@pytest.mark.parametrize("name", ["wav2vec2", "hubert", "whisper"])
def test_hf_encoders_give_one_window_per_video_frame(hf_dirs, name):
    enc = HFAudioEncoder(hf_dirs / name, window=6, chunk_seconds=1.0)
    assert (enc.feature_dim, enc.window, enc.layers) == (16, 6, [0, 1, 2])
    assert not any(p.requires_grad for p in enc.model.parameters()) and not enc.model.training
    for seconds in (1.0, 2.3):  # 2.3 s spans three 1 s chunks
        n_frames = round(seconds * 25)
        feats = enc.encode(speech_like(seconds), n_frames)
        assert feats.shape == (n_frames, 6, 16) and torch.isfinite(feats).all()
        assert feats.std() > 0
    if name == "hubert":
        assert enc.extractor.do_normalize is False  # read from the directory's preprocessor_config.json
    last = HFAudioEncoder(hf_dirs / name, layers=[-1], window=6)
    assert last.layers == [2] and not torch.allclose(last.encode(speech_like(1.0), 25), enc.encode(speech_like(1.0), 25))


def test_hf_windows_are_centred_on_video_frames_with_edge_repetition(hf_dirs, monkeypatch):
    enc = HFAudioEncoder(hf_dirs / "wav2vec2", window=4)
    times = torch.arange(0.0125, 0.99, 0.02, dtype=torch.float64)  # 50 Hz frame centres of 1 s of audio

    def fake(wav):  # the feature is the frame's time, so the output says where it was sampled
        return times, times[:, None].float()

    monkeypatch.setattr(enc, "_w2v_features", fake)
    out = enc.encode(np.zeros(SR, np.float32), 25)[..., 0].double()  # [T, K]
    t, k = np.meshgrid(np.arange(25), np.arange(4), indexing="ij")
    expected = np.clip((t + 0.5) / 25 + (k - 2) / 50, times[0].item(), times[-1].item())
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)  # position K//2 = centre of frame t
    edges = times.float().double()
    assert out[0, 0] == edges[0] and out[-1, -1] == edges[-1]  # edges repeat the first/last vector


def test_viseme_encoder_one_hot_windows():
    labels = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    enc = VisemeEncoder(window=5)
    out = enc.encode(labels)
    assert out.shape == (8, 5, 15) and (out.sum(-1) == 1).all()
    ids = out.argmax(-1).numpy()
    assert (ids[:, 2] == labels).all()  # the centre position is the frame itself
    assert list(ids[0]) == [3, 3, 3, 1, 4] and list(ids[-1]) == [9, 2, 6, 6, 6]
    assert list(enc.encode(labels, 10).argmax(-1)[-1]) == [6, 6, 6, 6, 6]
    assert enc.encode(labels, 4).argmax(-1)[-1].tolist() == [1, 4, 1, 1, 1]  # cut to 3 1 4 1
    assert enc.encode_batch([labels, labels[::-1].copy()], 8).shape == (2, 8, 5, 15)
    with pytest.raises(ValueError, match="0..14"):
        enc.encode(np.array([0, 15]))


def test_configs_build_save_and_load(hf_dirs, tmp_path):
    for cfg in (AudioConfig(), AudioConfig(kind="viseme", window=3),
                AudioConfig(kind="hf", path=str(hf_dirs / "wav2vec2"), layers=(1, 2))):
        enc = build_audio_encoder(cfg)
        save_audio_encoder(enc, tmp_path / cfg.kind)
        saved = json.loads((tmp_path / cfg.kind / "config.json").read_text())
        assert saved["_type"] == "AudioConfig" and saved["window"] == enc.window
        again = load_audio_encoder(tmp_path / cfg.kind)
        assert (type(again), again.window, again.feature_dim) == (type(enc), enc.window, enc.feature_dim)
    assert saved["path"] == str((hf_dirs / "wav2vec2").resolve()) and saved["layers"] == [1, 2]
    assert again.layers == [1, 2]
    wav = speech_like(1.0)
    assert torch.equal(again.encode(wav, 25), build_audio_encoder(AudioConfig(
        kind="hf", path=str(hf_dirs / "wav2vec2"), layers=(1, 2))).encode(wav, 25))
    assert build_audio_encoder().window == 16 and build_audio_encoder(AudioConfig(kind="hf", path=str(
        hf_dirs / "whisper"))).window == 10


def test_bad_directories_and_configs(hf_dirs, tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path / "bert")
    (tmp_path / "empty").mkdir()
    save_config(AudioConfig(), tmp_path / "cfgonly")
    cases = {tmp_path / "missing": "does not exist", tmp_path / "empty": "no config.json",
             tmp_path / "bert": "'bert' model"}
    for path, expected in cases.items():
        with pytest.raises(LipstepError, match=expected) as err:
            HFAudioEncoder(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="out of range"):
        HFAudioEncoder(hf_dirs / "wav2vec2", layers=[3])
    with pytest.raises(ConfigError, match="needs path"):
        build_audio_encoder(AudioConfig(kind="hf"))
    with pytest.raises(LipstepError, match="no config.json"):
        load_audio_encoder(tmp_path / "empty")
