"""Audio -> visemes: classifier and token shapes, `viseme_windows` = `VisemeEncoder`, streaming = whole file,
a tiny training run that learns a separable toy, the encoder kind through a model directory, bad inputs."""

import json

import numpy as np
import pytest
import torch
from tests.tinypipe import portrait

from lipstep.audio import (
    AudioConfig,
    VisemeAudioEncoder,
    VisemeEncoder,
    build_audio_encoder,
    load_audio_encoder,
)
from lipstep.audio.train_visemes import VisemeTrainConfig, train_viseme_classifier, voice_key
from lipstep.audio.visemes import VisemeNet, VisemeNetConfig, save_viseme_classifier, viseme_windows
from lipstep.codecs.vae import CodecConfig, build_codec
from lipstep.config import apply_overrides
from lipstep.errors import ConfigError, DataError, IntegrityError, LipstepError
from lipstep.nets.dit import AvatarDiT, DiTConfig
from lipstep.pipeline import AvatarPipeline, ModelInfo, SamplerInfo

SR = 16000
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_net(context: int = 1, seed: int = 0) -> VisemeNet:
    torch.manual_seed(seed)
    net = VisemeNet(VisemeNetConfig(width=8, context=context)).eval()
    with torch.no_grad():
        net.mel_mean.fill_(-8.0)
        net.mel_std.fill_(3.0)
    return net


def tones(seconds: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Toy speech: 0.2-s stretches of silence (class 0), a 300 Hz tone (class 1) or a 3 kHz tone (class 2),
    and the class of every 25-fps frame."""
    rng = np.random.default_rng(seed)
    n_frames = round(seconds * 25)
    classes = np.repeat(rng.integers(0, 3, n_frames // 5 + 1), 5)[:n_frames]
    t = np.arange(n_frames * 640) / SR
    freq = np.repeat(np.array([0.0, 300.0, 3000.0])[classes], 640)
    wav = np.where(freq > 0, 0.3 * np.sin(2 * np.pi * freq * t), 0.0) + rng.normal(0, 0.002, t.size)
    return wav.astype(np.float32), classes.astype(np.int64)


def test_classifier_and_token_shapes():
    net = tiny_net(context=2)
    assert net(torch.zeros(3, 7 + 4, 16, 80)).shape == (3, 7, 15)
    with pytest.raises(ValueError, match=r"windows \[B, N \+ 4, 16, 80\]"):
        net(torch.zeros(1, 4, 16, 80))
    enc = VisemeAudioEncoder(net, smooth=1)
    wav, _ = tones(0.9)
    tokens = enc.encode(wav, 25)
    assert tokens.shape == (25, 5, 15) and tokens.dtype == torch.float32
    assert torch.equal(tokens.sum(-1), torch.ones(25, 5))  # one-hot
    labels = enc.predict(wav, 25)
    assert labels.shape == (25,) and torch.equal(tokens[:, 2].argmax(-1), labels)  # position K//2 = the frame
    assert torch.equal(enc.encode(wav, 30)[:25], tokens)  # a frame's tokens do not depend on the frame count


def test_viseme_windows_match_the_viseme_encoder():
    labels = torch.randint(0, 15, (3, 11), generator=torch.Generator().manual_seed(0))
    for window in (1, 3, 5):
        batch = viseme_windows(labels, window, 15)
        assert batch.shape == (3, 11, window, 15)
        for b in range(3):
            assert torch.equal(batch[b], VisemeEncoder(window).encode(labels[b].numpy()))
            for t in range(11):  # window t holds the labels of t - K//2 .. t + K//2, the edges repeated
                want = [labels[b, min(max(t - window // 2 + j, 0), 10)] for j in range(window)]
                assert batch[b, t].argmax(-1).tolist() == [int(w) for w in want]
    enc = VisemeEncoder(5)  # a length mismatch repeats the last label or cuts
    assert torch.equal(enc.encode([1, 2], 4)[:, 2].argmax(-1), torch.tensor([1, 2, 2, 2]))
    assert torch.equal(enc.encode([1, 2, 3, 4], 2), viseme_windows(torch.tensor([[1, 2]]), 5, 15)[0])
    with pytest.raises(ValueError, match="0..14"):
        viseme_windows(torch.tensor([[0, 15]]), 5, 15)


@pytest.mark.parametrize("block, size", [(1, 1), (4, 333), (7, 10**6)])
def test_the_token_stream_equals_the_whole_file(block, size):
    enc = VisemeAudioEncoder(tiny_net(context=2), smooth=1)
    wav, _ = tones(1.13, seed=1)
    stream = enc.stream(block)
    lookahead = 1056 + (2 + 2 + 1) * 640  # the mel windows' 66 ms and K//2 + context + smooth frames
    assert stream.lookahead() == lookahead
    got, held = [], []
    for i in range(0, len(wav), size):
        stream.push(wav[i:i + size])
        while stream.ready():  # never before the block's audio and its look-ahead are in
            assert stream.received >= (stream.done + 1) * block * 640 + lookahead
            got.append(stream.next_block())
        held.append(len(stream.windows))
    early = len(got)
    stream.finish()
    got += [stream.next_block() for _ in range(stream.n_blocks - len(got))]
    blocks = torch.cat(got)
    assert stream.n_frames == 28 and len(blocks) == -(-28 // block) * block
    assert torch.equal(blocks, enc.encode(wav, len(blocks)))
    assert max(held) <= 2 * block + 2 * (2 + 2 + 1)  # the windows kept stay bounded
    assert early == (len(wav) - lookahead) // (block * 640)  # all whose look-ahead lies inside the audio


def _toy_prepared(root, clips_per_voice: int = 3):
    """A prepared directory of toy speech (see `tones`) in three voices, with voices in the manifest."""
    (root / "shards").mkdir(parents=True)
    rows = []
    for v, voice in enumerate(("en-us+f1", "en-us+m3", "en+klatt")):
        for c in range(clips_per_voice):
            wav, classes = tones(2.0, seed=10 * v + c)
            cid = f"v{v}_c{c}"
            np.savez(root / "shards" / f"{cid}.npz", audio=wav, visemes=classes,
                     mel=np.zeros((len(classes), 16, 80), np.float16), fps=np.float32(25.0))
            rows.append({"id": cid, "shard": f"shards/{cid}.npz", "identity": cid, "split": "test" if c == 2 else "train",
                         "frames": len(classes), "voice": voice})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_a_tiny_training_run_learns_a_separable_toy(tmp_path):
    data = _toy_prepared(tmp_path / "prep")
    cfg = apply_overrides(VisemeTrainConfig(), ["steps=40", "batch=8", "segment=10", "net.width=8", "net.context=1",
                                                "holdout=('en+klatt',)", "lr=0.02", "gain_db=0", "mask_bands=0"])
    r = train_viseme_classifier(data, tmp_path / "cls", cfg, progress=False)
    assert np.mean(r.losses[-5:]) < 0.7 * np.mean(r.losses[:5])
    held = r.results["heldout_voices"]
    assert r.holdout == ["en+klatt"] and held["clips"] == 3 and held["frames"] == 150
    assert held["accuracy"] > held["majority_baseline"] + 0.25 and held["accuracy"] > 0.8
    assert held["speech_accuracy"] == pytest.approx(sum(  # accuracy on the frames that are not class 0
        held["per_class_recall"].get(c, 0) * held["class_frames"].get(c, 0) for c in ("AA", "AE"))
        / (150 - held["class_frames"]["sil"]), abs=0.01)
    assert r.results["seen_voices"]["clips"] == 2 and set(held["accuracy_smooth"]) == {"1", "2"}
    saved = json.loads((tmp_path / "cls" / "train.json").read_text())
    assert saved["results"]["heldout_voices"]["accuracy"] == held["accuracy"]
    assert sorted(p.name for p in (tmp_path / "cls").iterdir()) == [
        "checksums.json", "config.json", "model.safetensors", "train.json"]
    enc = build_audio_encoder(AudioConfig(kind="viseme-audio", classifier=str(tmp_path / "cls")))
    wav, classes = tones(2.0, seed=20)  # a clip of the held-out voice, through the deployed path
    assert (enc.predict(wav, 50).numpy() == classes).mean() == pytest.approx(held["accuracy"], abs=0.2)


def test_voice_keys_and_holdout_checks(tmp_path):
    assert [voice_key("en-us+f2", by) for by in ("voice", "variant", "accent")] == ["en-us+f2", "f2", "en-us"]
    assert voice_key("en-029", "variant") == "default"
    data = _toy_prepared(tmp_path / "prep", clips_per_voice=1)
    with pytest.raises(DataError, match=r"\['en\+m7'\] not among the data's voices"):
        train_viseme_classifier(data, tmp_path / "out", VisemeTrainConfig(holdout=("en+m7",)), progress=False)
    with pytest.raises(DataError, match="leaves nothing to train on"):
        train_viseme_classifier(data, tmp_path / "out", VisemeTrainConfig(holdout=("en+klatt", "en-us+f1", "en-us+m3")),
                                progress=False)
    with pytest.raises(ConfigError, match="did you mean 'holdout_fraction'"):
        apply_overrides(VisemeTrainConfig(), ["holdout_fractoin=0.3"])
    rows = [json.loads(x) for x in (data / "manifest.jsonl").read_text().splitlines()]
    (data / "manifest.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "voice"}) + "\n"
                                                 for r in rows))
    with pytest.raises(DataError, match="names no voice; give the synthetic world"):
        train_viseme_classifier(data, tmp_path / "out", progress=False)
    world = tmp_path / "world"
    world.mkdir()
    (world / "manifest.jsonl").write_text("".join(json.dumps({"id": r["id"], "voice": "en"}) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"clips of 1 voice\(s\) \(en\)"):  # voices from the world, all one
        train_viseme_classifier(data, tmp_path / "out", world=world, progress=False)
    assert not (tmp_path / "out").exists()


def test_the_encoder_kind_round_trips_through_a_model_directory(tmp_path):
    save_viseme_classifier(tiny_net(context=1, seed=3), tmp_path / "cls")
    enc = build_audio_encoder(AudioConfig(kind="viseme-audio", classifier=str(tmp_path / "cls"), smooth=1))
    codec = build_codec(CodecConfig(kind="pixel", image_size=16, factor=2))
    net = AvatarDiT(DiTConfig.preset("tiny", latent_channels=12, latent_size=8, patch=2, frames=4, motion_frames=2,
                                     audio_dim=15, audio_window=5)).eval()
    info = ModelInfo(kind="student", schedule="vp_x0", sampler=SamplerInfo(name="ddim", steps=1), frames=4,
                     motion_frames=2, image_size=16)
    AvatarPipeline(info, codec, enc, net).save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "audio" / "classifier" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "model" / "audio" / "config.json").read_text())["classifier"] == "classifier"
    pipe = AvatarPipeline.from_pretrained(tmp_path / "model")
    loaded = pipe.audio_encoder
    assert isinstance(loaded, VisemeAudioEncoder) and loaded.smooth == 1
    wav, _ = tones(0.7, seed=4)
    assert torch.equal(loaded.encode(wav, 18), enc.encode(wav, 18))
    stream = pipe.open_stream(portrait())
    assert stream.lookahead_seconds == pytest.approx((1056 + 4 * 640) / SR)
    frames = [f for i in range(0, len(wav), 500) for f in stream.push(wav[i:i + 500])] + stream.finish()
    assert np.array_equal(np.stack([f.image for f in frames]), pipe(portrait(), wav).frames)
    assert torch.equal(load_audio_encoder(tmp_path / "model" / "audio").encode(wav, 18), enc.encode(wav, 18))


def test_missing_or_corrupt_classifiers_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="needs classifier"):
        build_audio_encoder(AudioConfig(kind="viseme-audio"))
    with pytest.raises(LipstepError, match="viseme classifier directory not found"):
        build_audio_encoder(AudioConfig(kind="viseme-audio", classifier=str(tmp_path / "nosuch")))
    path = save_viseme_classifier(tiny_net(), tmp_path / "cls")
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="damaged"):
        build_audio_encoder(AudioConfig(kind="viseme-audio", classifier=str(path)))
    (path / "config.json").write_text("{garbage")
    with pytest.raises(LipstepError, match="is not a viseme classifier directory"):
        build_audio_encoder(AudioConfig(kind="viseme-audio", classifier=str(path)))
    with pytest.raises(ConfigError, match="labels 15 classes at 25 fps"):
        build_audio_encoder(AudioConfig(kind="viseme-audio", classifier=str(save_viseme_classifier(
            tiny_net(), tmp_path / "ok")), n_visemes=12))
    for e in (ConfigError, LipstepError):
        assert issubclass(e, LipstepError)
