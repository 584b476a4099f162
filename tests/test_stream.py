"""Streaming generation: the same frames however the audio is cut, frames as soon as their audio is in,
flat buffers, voice activity, and `generate_video` writing frame by frame."""

import math

import numpy as np
import pytest
import torch

from lipstep.audio import AudioEncoder
from lipstep.audio.stream import MelFeatureStream, WholeAudioFeatureStream
from lipstep.audio.vad import VADConfig, VoiceActivity
from lipstep.data.media import VideoWriter, probe, read_audio, read_video, write_video
from lipstep.errors import ConfigError, LipstepError
from tests.mediafixtures import SR, speech_like
from tests.tinypipe import portrait, tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(anchor_every=0)


@pytest.fixture(scope="module")
def speech():
    return speech_like(1.03, seed=1)  # 26 frames: 6 whole chunks of 4 and a padded seventh


@pytest.fixture(scope="module")
def whole(pipe, speech):
    return pipe(portrait(), speech, seed=3)


def _cut(audio, size):
    return (audio[i:i + size] for i in range(0, len(audio), size))


def _images(frames):
    return np.stack([f.image for f in frames])


def test_the_shared_chunk_core_gives_the_old_whole_audio_path(pipe, speech, whole):
    """`__call__` (the stream path) equals features of the whole audio through `sample_chunks`, bit for bit."""
    ref = pipe.encode_image(portrait())
    n = pipe.n_frames(len(speech))
    feats = pipe.audio_encoder.encode(speech, math.ceil(n / 4) * 4)
    latents, nfe = pipe.generate_latents(ref, feats, seed=3, n_frames=n)
    assert np.array_equal(pipe.decode(latents), whole.frames)
    assert nfe == whole.nfe == 7 * 2 * 3 and whole.chunks == 7 and whole.frames.shape == (26, 16, 16, 3)
    assert not np.array_equal(whole.frames[:4], whole.frames[4:8])  # the net does react: a real comparison


@pytest.mark.parametrize("size", [1, 777, 1013, 10**6])
def test_stream_equals_the_whole_call_for_any_cut(pipe, speech, whole, size):
    frames = list(pipe.stream(portrait(), _cut(speech, size), seed=3))
    assert np.array_equal(_images(frames), whole.frames)
    assert [f.index for f in frames] == list(range(26))
    assert np.allclose([f.time for f in frames], np.arange(26) / 25)


def test_another_seed_or_reanchoring_changes_the_frames(pipe, speech, whole):
    assert not np.array_equal(_images(pipe.stream(portrait(), [speech], seed=4)), whole.frames)
    anchored = tiny_pipeline(anchor_every=1)
    a = _images(anchored.stream(portrait(), _cut(speech, 999), seed=3))
    assert np.array_equal(a, anchored(portrait(), speech, seed=3).frames)


def test_a_chunk_leaves_once_its_audio_and_the_lookahead_arrived(pipe, speech):
    stream = pipe.open_stream(portrait(), seed=3)
    assert stream.lookahead_seconds == pytest.approx(1056 / SR)  # 66 ms past a frame's end
    need = 4 * 640 + 1056  # chunk 0: four frames of audio and the last window's look-ahead
    assert stream.push(speech[:need - 1]) == []
    first = stream.push(speech[need - 1:need])
    assert [f.index for f in first] == [0, 1, 2, 3]
    assert stream.push(speech[need:need + 4 * 640 - 1]) == []
    assert [f.index for f in stream.push(speech[need + 4 * 640 - 1:need + 4 * 640])] == [4, 5, 6, 7]


def test_previews_send_frames_before_their_chunk_is_complete(pipe, speech, whole):
    """``preview_every=1``: previews of the arriving chunk send frame t once its own window is in (t + 1 frames and
    the 66-ms look-ahead), then the chunk is sampled for good; every frame once, in order, for more evaluations."""
    stream = pipe.open_stream(portrait(), seed=3, preview_every=1)
    need0 = 640 + 1056  # frame 0: its own 40 ms and the look-ahead
    assert stream.push(speech[:need0 - 1]) == []
    assert [f.index for f in stream.push(speech[need0 - 1:need0])] == [0]
    assert [f.index for f in stream.push(speech[need0:need0 + 640])] == [1]
    frames = [f.index for f in stream.push(speech[need0 + 640:need0 + 3 * 640])]   # frames 2, 3: chunk 0 complete
    assert frames == [2, 3] and stream.core.chunks == 1
    rest = stream.push(speech[need0 + 3 * 640:]) + stream.finish()
    assert [f.index for f in rest] == list(range(4, 26))
    assert stream.stats().nfe > whole.nfe  # previews cost evaluations
    for every in (1, 2, 4):  # any cut, any stride: every frame once, in order
        cut = list(pipe.stream(portrait(), _cut(speech, 640), seed=3, preview_every=every))
        assert [f.index for f in cut] == list(range(26)) and _images(cut).shape == whole.frames.shape
    with pytest.raises(LipstepError, match="preview_every must be in 0..4"):
        pipe.open_stream(portrait(), preview_every=5)


def test_previews_every_two_frames_wait_for_two_new_ones(pipe, speech):
    stream = pipe.open_stream(portrait(), seed=3, preview_every=2)
    need0 = 640 + 1056
    assert [f.index for f in stream.push(speech[:need0])] == [0]           # the stream's first frame at once
    assert stream.push(speech[need0:need0 + 640]) == []                    # frame 1 alone: not yet
    assert [f.index for f in stream.push(speech[need0 + 640:need0 + 2 * 640])] == [1, 2]
    assert stream.core.trials == 2 and stream.core.chunks == 0


def test_a_trial_chunk_leaves_the_core_as_it_was(pipe, speech):
    """`ChunkSampler.trial` draws the noise `step` will draw and carries nothing forward."""
    a, b = pipe.open_stream(portrait(), seed=3), pipe.open_stream(portrait(), seed=3)
    feats = pipe.audio_encoder.encode(speech, 8)
    b.core.trial(feats[4:8])
    b.core.trial(feats[:4])
    for k in (0, 1):
        za, zb = a.core.step(feats[4 * k:4 * k + 4]), b.core.step(feats[4 * k:4 * k + 4])
        assert torch.equal(za, zb)
    assert b.core.nfe == a.core.nfe + 2 * a.core.nfe_per_chunk and b.core.chunks == a.core.chunks == 2


def test_buffers_stay_bounded_over_many_chunks(pipe):
    stream = pipe.open_stream(portrait(), seed=0)
    rng = np.random.default_rng(0)
    sizes, made = [], 0
    for i in range(240):  # 240 pieces of 300..1300 samples: about 12 s, 75 chunks
        made += len(stream.push(speech_like(rng.integers(300, 1300) / SR, seed=i)))
        sizes.append(stream.buffered)
    made += len(stream.finish())
    span = 4 * 640 + 1056 + 1300 + 1024  # one chunk's span, its look-ahead, one piece, the STFT frame
    assert max(s["audio_samples"] for s in sizes) <= span
    assert max(s["vad_samples"] for s in sizes) < 640 + 1300
    assert max(s["pending_frames"] for s in sizes) <= 4 + 2 + 3  # a chunk, the look-ahead, one piece
    early, late = (max(s["audio_samples"] for s in part) for part in (sizes[:120], sizes[120:]))
    assert late <= early + 1300  # no growth with the stream's length (at most one piece more, by chance)
    assert stream.core.motion.shape[1] == 2 and stream.core.chunks == made // 4 + (made % 4 > 0)
    assert made == stream.stats().frames == pipe.n_frames(stream.features.received)


def test_mel_stream_windows_equal_whole_audio_windows():
    enc = tiny_pipeline().audio_encoder
    wav = speech_like(0.7, seed=2)
    stream = MelFeatureStream(5)
    for piece in _cut(wav, 333):
        stream.push(piece)
    stream.finish()
    blocks = torch.cat([stream.next_block() for _ in range(stream.n_blocks)])
    assert stream.n_frames == 18 and blocks.shape == (20, 16, 80)
    torch.testing.assert_close(blocks, enc.encode(wav, 20), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="finished"):
        stream.push(wav)


def test_an_encoder_without_bounded_windows_makes_its_blocks_at_the_end():
    enc = tiny_pipeline().audio_encoder
    stream = AudioEncoder.stream(enc, 4)  # the base class's default, as a transformers encoder gets it
    wav = speech_like(0.5, seed=3)
    assert isinstance(stream, WholeAudioFeatureStream)
    for piece in _cut(wav, 1000):
        stream.push(piece)
        assert not stream.ready()  # no bounded look-ahead: nothing before the end
    stream.finish()
    blocks = torch.cat([stream.next_block() for _ in range(stream.n_blocks)])
    assert stream.n_frames == 12 and torch.equal(blocks, enc.encode(wav, 12)) and stream.buffered == 0


def test_voice_activity_silence_speech_silence():
    quiet = np.random.default_rng(0).standard_normal(SR).astype(np.float32) * 3e-4  # -70 dBFS room noise
    wav = np.concatenate([quiet, speech_like(1.0), quiet, np.zeros(SR // 2, np.float32)])
    vad = VoiceActivity(VADConfig(), SR, 25.0)
    out = [v for piece in _cut(wav, 700) for v in vad.push(piece)] + vad.finish(88)
    voice = np.array([v for v, _ in out])
    assert len(voice) == 88
    assert not voice[:25].any()                       # room noise: no voice
    assert voice[25:50].mean() > 0.9                  # speech, the gaps between syllables bridged
    assert not voice[50 + VADConfig().hangover + 1:].any()  # off again after the hangover
    assert min(db for _, db in out[25:50]) < max(db for _, db in out[25:50]) - 10  # a level, not a flag


def test_voice_activity_of_the_stream_is_causal_and_per_frame(pipe):
    wav = np.concatenate([np.zeros(SR // 2, np.float32), speech_like(0.5)])
    frames = list(pipe.stream(portrait(), _cut(wav, 4000)))
    voice = np.array([f.voice for f in frames])
    assert len(voice) == 25 and not voice[:12].any() and voice[14:].all()
    with pytest.raises(ConfigError, match="off_db"):
        VoiceActivity(VADConfig(on_db=5.0, off_db=8.0))


def test_bad_and_empty_audio(pipe):
    assert list(pipe.stream(portrait(), [])) == []
    stream = pipe.open_stream(portrait())
    with pytest.raises(LipstepError, match="NaN"):
        stream.push(np.array([0.0, np.nan], np.float32))
    stream.finish()
    with pytest.raises(LipstepError, match="finished"):
        stream.push(np.zeros(10, np.float32))
    with pytest.raises(LipstepError, match="empty"):
        pipe(portrait(), np.zeros(0, np.float32))


def test_generate_video_writes_frame_by_frame_with_the_audio(pipe, speech, whole, tmp_path, monkeypatch):
    written = []
    original = VideoWriter.write_frame

    def spy(self, image):
        written.append(image.copy())
        return original(self, image)

    monkeypatch.setattr(VideoWriter, "write_frame", spy)
    out = tmp_path / "talk.mp4"
    stats = pipe.generate_video(portrait(), speech, out, seed=3, piece_seconds=0.3)
    assert np.array_equal(np.stack(written), whole.frames)  # the frames of `__call__`, sent one by one
    assert stats.frames == 26 and stats.nfe == whole.nfe and "mux" in stats.timings
    info = probe(out)
    assert info["frames"] == 26 and info["has_audio"] and [p.name for p in tmp_path.iterdir()] == ["talk.mp4"]
    assert abs(len(read_audio(out)) - len(speech)) < SR * 0.01


def test_video_writer_equals_write_video_and_is_atomic(tmp_path):
    frames = (np.random.default_rng(0).random((12, 16, 16, 3)) * 255).astype(np.uint8)
    audio = speech_like(12 / 25)
    write_video(tmp_path / "a.mp4", frames, 25, audio=audio)
    path = tmp_path / "b.mp4"
    with VideoWriter(path, 25, sample_rate=SR) as writer:
        for i, frame in enumerate(frames):
            writer.write_audio(audio[i * 640:(i + 1) * 640])
            writer.write_frame(frame)
            assert not path.exists()  # nothing visible before close
    a, b = read_video(tmp_path / "a.mp4"), read_video(path)
    assert np.array_equal(a.frames, b.frames) and np.allclose(a.audio, b.audio, atol=1e-4)
    with pytest.raises(RuntimeError, match="boom"), VideoWriter(tmp_path / "c.mp4", 25) as writer:
        writer.write_frame(frames[0])
        raise RuntimeError("boom")
    with pytest.raises(ValueError, match="AAC"):
        VideoWriter(tmp_path / "d.mp4", 25, sample_rate=12345)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4"]
