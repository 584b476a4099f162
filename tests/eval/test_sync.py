"""The official lip-sync protocol (MFCC, offset sweep, sign convention) and LipSyncNet training."""

import json

import numpy as np
import pytest
import torch
from tests.mediafixtures import make_tiny_avatar_data

from lipstep.data.dataset import open_shard, read_manifest
from lipstep.errors import DataError
from lipstep.eval.sync import SyncScores, lipsync_features, mfcc, score_lipsync, score_official, sync_scores
from lipstep.eval.train_syncnet import SyncTrainConfig, train_syncnet
from lipstep.nets.syncnet import LipSyncConfig, LipSyncNet, SyncNetS, load_lipsync

pytestmark = pytest.mark.usefixtures("one_thread")

# ------------------------------------------------------------------------------------------- MFCC


def _tones(n: int) -> np.ndarray:
    """A deterministic int16 test signal: three tones."""
    t = np.arange(n) / 16000
    x = 6000 * np.sin(2 * np.pi * 440 * t) + 2500 * np.sin(2 * np.pi * 2900 * t + 0.3) + 400 * np.cos(2 * np.pi * 90 * t)
    return np.round(x).astype(np.int16)


# python_speech_features 0.6 `mfcc(_tones(880), 16000)`, frames 0 and 3 (computed once with the library).
_MFCC_KNOWN = np.array([
    [20.51337, 1.52124, -14.70421, 25.08169, -44.88508, -53.62782, 2.40054, -26.12412, -26.86829, 39.06847,
     13.25326, -2.00113, 31.92565],
    [20.51944, 3.66426, -8.72704, 30.77414, -32.94870, -49.75506, 7.03293, -24.37623, -22.95719, 41.34028,
     15.56131, -1.08829, 32.63605],
])


def test_mfcc_matches_python_speech_features_known_values():
    out = mfcc(_tones(880))
    assert out.shape == (4, 13) and out.dtype == np.float32  # 1 + ceil((880 - 400) / 160) frames
    np.testing.assert_allclose(out[[0, 3]], _MFCC_KNOWN, atol=2e-4)
    # float audio in [-1, 1] is put back on the int16 scale the reference reads
    np.testing.assert_allclose(mfcc(_tones(880).astype(np.float32) / 32768), out, atol=1e-5)
    assert not np.allclose(mfcc(_tones(880).astype(np.float32) / 32768, int16_scale=False)[:, 0], out[:, 0])


def test_float_audio_becomes_whole_clipped_int16_values_as_pcm_s16le():
    # The reference reads the int16 PCM ffmpeg writes: x * 32768 rounded (ties to even) and clipped.
    rng = np.random.default_rng(0)
    scaled = _tones(880).astype(np.float64) + rng.uniform(-0.5, 0.5, 880)   # off the int16 grid
    scaled[[10, 11, 12]] = [2.5, 3.5, -2.5]                                 # ties
    scaled[100:140] = 1.4 * 32768                                           # beyond full scale
    scaled[300:340] = -1.3 * 32768
    pcm = np.clip(np.rint(scaled), -32768, 32767).astype(np.int16)
    assert list(pcm[[10, 11, 12, 100, 300]]) == [2, 4, -2, 32767, -32768]
    out = mfcc(scaled / 32768)
    np.testing.assert_array_equal(out, mfcc(pcm))
    unrounded = mfcc(np.clip(scaled, -32768, 32767), int16_scale=False)
    unclipped = mfcc(np.rint(scaled), int16_scale=False)
    assert np.abs(out - unrounded).max() > 1e-3 and np.abs(out - unclipped).max() > 1e-3  # both matter


def test_mfcc_rate_is_100_hz_and_c0_is_log_frame_energy():
    for seconds in (0.5, 1.0, 2.0):
        n = int(seconds * 16000)
        assert len(mfcc(np.zeros(n, np.float32))) == 1 + int(np.ceil((n - 400) / 160))  # 100 per second
    assert mfcc(np.zeros(10)).shape == (1, 13)                   # shorter than one window: one padded frame
    x = _tones(400).astype(np.float64)
    emphasised = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
    energy = (np.abs(np.fft.rfft(emphasised, 512)) ** 2 / 512).sum()
    assert mfcc(_tones(400))[0, 0] == pytest.approx(np.log(energy), abs=1e-5)
    with pytest.raises(ValueError, match="mono"):
        mfcc(np.zeros((2, 400)))


# --------------------------------------------------------------------------------------- protocol
# A synthetic embedder pair: each frame carries one number (its brightness), each 10 ms of audio the
# number of the video frame it belongs to; a window's embedding is its 5 per-frame numbers. In sync
# the two embeddings are identical, so the protocol must find the shift that was applied.


def _signal_clip(shift: int, n: int = 60, seed: int = 0, margin: int = 20):
    """Frames [n, 4, 4, 3] and audio whose frame t carries the picture of video frame t + shift."""
    levels = np.random.default_rng(seed).integers(0, 256, n + 2 * margin)
    frames = np.repeat(levels[margin:margin + n, None, None, None], 4, 1).repeat(4, 2).repeat(3, 3).astype(np.uint8)
    audio_levels = levels[margin + shift:margin + shift + n]
    wav = np.repeat(audio_levels / 255.0, 640).astype(np.float32)   # 640 samples per 25 fps frame
    return frames, wav


def _level_features(wav: np.ndarray) -> np.ndarray:
    return wav[: len(wav) // 160 * 160].reshape(-1, 160).mean(1)[:, None]  # [N, 1] at 100 Hz


def _lip_fn(windows):  # [B, 5, 4, 4, 3] uint8 -> [B, 5]
    return windows.reshape(len(windows), 5, -1).mean(-1) / 255.0


def _aud_fn(windows):  # [B, 20, 1] -> [B, 5]
    return windows.reshape(len(windows), 5, 4).mean(-1)


@pytest.mark.parametrize("shift", [0, 1, 3, 7, -2, -5])
def test_protocol_recovers_a_known_shift_with_the_official_sign(shift):
    frames, wav = _signal_clip(shift)
    s = sync_scores(_lip_fn, _aud_fn, frames, wav, vshift=15, features=_level_features, batch=7)
    # audio frame t shows video frame t + shift: audio comes `shift` frames early -> video lags -> +shift
    assert s.offset == shift
    assert s.windows == 60 - 5 and s.dists.shape == (31,)
    assert s.sync_d == pytest.approx(float(s.dists.min())) and int(np.argmin(s.dists)) == 15 - shift
    assert s.sync_c > 0.3
    # At the best offset a window matches exactly unless its audio partner v - shift is off the clip:
    # those meet the zero padding, so Sync-D is the mean norm of exactly those lip embeddings.
    lip = _lip_fn(np.stack([frames[v:v + 5] for v in range(55)]))
    off_clip = [v for v in range(55) if not 0 <= v - shift < 55]
    assert len(off_clip) == abs(shift)
    assert s.sync_d == pytest.approx(sum(np.linalg.norm(lip[v]) for v in off_clip) / 55, abs=1e-4)


def _reference_scores(lip: np.ndarray, aud: np.ndarray, vshift: int) -> tuple[float, float, int]:
    """The reference evaluate() written as plain loops: zero-padded audio, distance per (window, shift)."""
    n, e = lip.shape
    padded = np.concatenate([np.zeros((vshift, e)), aud, np.zeros((vshift, e))])
    d = np.array([[np.linalg.norm(lip[v] - padded[v + j] + 1e-6) for j in range(2 * vshift + 1)] for v in range(n)])
    curve = d.mean(0)
    return float(np.median(curve) - curve.min()), float(curve.min()), vshift - int(np.argmin(curve))


@pytest.mark.parametrize("n", [23, 300])  # 300: more windows than one distance chunk
def test_protocol_equals_the_reference_loops_on_random_embeddings(n):
    rng = np.random.default_rng(3)
    frames = rng.standard_normal((n, 8)).astype(np.float32)   # any per-frame data indexed on axis 0
    wav = rng.standard_normal(n * 640 + 100).astype(np.float32)
    feats = rng.standard_normal((n * 4 + 3, 6)).astype(np.float32)
    proj_l, proj_a = rng.standard_normal((40, 12)), rng.standard_normal((120, 12))

    def lip_fn(w):  # a torch output is accepted too
        return torch.from_numpy(w.reshape(len(w), -1) @ proj_l)

    def aud_fn(w):
        return w.reshape(len(w), -1) @ proj_a

    s = sync_scores(lip_fn, aud_fn, frames, wav, vshift=4, features=lambda _: feats, batch=5)
    lip = np.stack([frames[v:v + 5].reshape(-1) @ proj_l for v in range(n - 5)])  # L - 5 windows
    aud = np.stack([feats[4 * v:4 * v + 20].reshape(-1) @ proj_a for v in range(n - 5)])
    c, d, off = _reference_scores(lip, aud, 4)
    assert s.windows == n - 5 and s.offset == off
    assert s.sync_c == pytest.approx(c, rel=1e-4) and s.sync_d == pytest.approx(d, rel=1e-4)
    assert isinstance(s, SyncScores) and json.dumps(s.to_dict())


def test_protocol_rejects_short_clips_and_bad_embedders():
    frames, wav = _signal_clip(0, n=5)
    with pytest.raises(DataError, match="too short"):
        sync_scores(_lip_fn, _aud_fn, frames, wav, features=_level_features)
    frames, wav = _signal_clip(0, n=12)
    with pytest.raises(ValueError, match=r"\[B, E\]"):
        sync_scores(lambda w: np.zeros(3), _aud_fn, frames, wav, features=_level_features)
    # audio shorter than the video: only the overlap is scored
    assert sync_scores(_lip_fn, _aud_fn, frames, wav[: 9 * 640], features=_level_features).windows == 4


def test_official_scoring_runs_on_small_rgb_frames():
    torch.manual_seed(0)
    model = SyncNetS().eval()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    s = score_official(model, frames, rng.uniform(-0.3, 0.3, 8 * 640).astype(np.float32), vshift=2)
    assert s.windows == 3 and s.dists.shape == (5,) and np.isfinite(s.dists).all()
    assert s.sync_c >= 0 and -2 <= s.offset <= 2


# --------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_tiny_avatar_data(tmp_path_factory.mktemp("sync")) / "prepared"


def _train_cfg(**overrides) -> SyncTrainConfig:
    net = LipSyncConfig(width=8, levels=2, embed_dim=16)
    return SyncTrainConfig(**{"net": net, "steps": 3, "batch": 4, "warmup_steps": 1, "eval_pairs": 16,
                              "eval_clips": 1, **overrides})


def test_train_syncnet_runs_writes_outputs_and_is_deterministic(prepared, tmp_path):
    result = train_syncnet(prepared, tmp_path / "a", _train_cfg(), progress=False, device="cpu")
    assert len(result.losses) == 3 and np.isfinite(result.losses).all()
    assert result.eval_split == "val" and result.eval_pairs == 16
    assert 0 <= result.accuracy <= 1 and 0 <= result.rank_accuracy <= 1
    assert result.protocol["clips"] == 1 and "sync_c" in result.protocol
    files = {p.name for p in (tmp_path / "a").iterdir()}
    assert {"model.safetensors", "config.json", "train.json"} <= files
    summary = json.loads((tmp_path / "a" / "train.json").read_text())
    assert summary["accuracy"] == round(result.accuracy, 4) and summary["train"]["net"]["image_size"] == 32

    model = load_lipsync(tmp_path / "a")
    assert model.cfg.image_size == 32
    again = train_syncnet(prepared, tmp_path / "b", _train_cfg(), progress=False, device="cpu")
    assert again.losses == result.losses and again.accuracy == result.accuracy


def test_lipsync_scoring_on_prepared_crops_and_mfcc_variant(prepared, tmp_path):
    row = read_manifest(prepared)[1]
    data = open_shard(prepared / row["shard"], ("frames", "audio"))
    frames, wav = np.asarray(data["frames"]), np.asarray(data["audio"])
    torch.manual_seed(0)
    model = LipSyncNet(LipSyncConfig(image_size=64, width=8, levels=2, embed_dim=16)).eval()  # 32 px crops resized
    s = score_lipsync(model, frames, wav)
    assert s.windows == len(frames) - 5 and np.isfinite(s.dists).all() and s.dists.max() <= 2 + 1e-4
    assert lipsync_features(wav, model.cfg).shape == (len(wav) // 160 + 1, 80)   # centred log-mel, 100 Hz

    cfg = _train_cfg(net=LipSyncConfig(audio="mfcc", audio_dim=13, width=8, levels=2, embed_dim=16), steps=2)
    result = train_syncnet(prepared, tmp_path / "mfcc", cfg, progress=False, device="cpu")
    assert load_lipsync(result.out).cfg.audio == "mfcc" and np.isfinite(result.losses).all()


def test_train_syncnet_needs_train_clips(tmp_path):
    (tmp_path / "manifest.jsonl").write_text("")
    with pytest.raises(DataError, match="no train clip"):
        train_syncnet(tmp_path, tmp_path / "out", _train_cfg(), progress=False)
