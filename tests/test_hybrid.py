"""Hybrid mode: `generate --emit latents` then `decode` gives the frames (and the video) full mode writes, bit for bit."""

import numpy as np
import pytest
import torch

from lipstep.cli import main
from lipstep.data.media import read_video, write_audio, write_image
from lipstep.errors import LipstepError
from lipstep.hybrid import LatentsMeta, read_latents, write_latents
from lipstep.pipeline import AvatarPipeline
from lipstep.samplers import decode_frames
from tests.mediafixtures import SR, speech_like
from tests.tinypipe import portrait, tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The tiny model, its inputs, and the three CLI runs: full mode, --emit latents, decode."""
    d = tmp_path_factory.mktemp("hybrid")
    tiny_pipeline(frames=4).save_pretrained(d / "model")
    write_image(d / "face.png", portrait())
    write_audio(d / "speech.wav", speech_like(0.7, seed=2), SR)  # 18 frames: 4 whole chunks and a cut fifth
    common = ["-i", str(d / "face.png"), "-a", str(d / "speech.wav"), "-m", str(d / "model"), "--seed", "5"]
    for argv in (["generate", *common, "-o", str(d / "full.mp4")],
                 ["generate", *common, "-o", str(d / "z.safetensors"), "--emit", "latents"],
                 ["decode", str(d / "z.safetensors"), str(d / "decoded.mp4")]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0, argv
    return d


def test_decoded_video_equals_full_mode(run):
    full, decoded = read_video(run / "full.mp4"), read_video(run / "decoded.mp4")
    assert full.frames.shape == (18, 16, 16, 3)
    assert np.array_equal(full.frames, decoded.frames) and np.array_equal(full.audio, decoded.audio)


def test_latents_decode_to_the_frames_of_the_pipeline(run):
    latents, audio, meta = read_latents(run / "z.safetensors")
    pipe = AvatarPipeline.from_pretrained(run / "model")
    gen = pipe(portrait(), audio, seed=5)  # the audio the model read, as the file holds it
    frames = np.concatenate([decode_frames(pipe.codec, latents[k:k + 4]) for k in range(0, 18, 4)])
    assert np.array_equal(frames, gen.frames)  # the uint8 frames before encoding, bit for bit
    assert meta.frames == 18 and meta.chunk_frames == 4 and meta.latent_shape == [12, 8, 8]
    assert meta.codec_sha256 == pipe.codec.identity() and meta.fps == 25 and meta.sample_rate == SR
    assert meta.bytes_per_second == 12 * 8 * 8 * 4 * 25 and meta.nfe == gen.nfe
    assert np.abs(audio - speech_like(0.7, seed=2)).max() < 0.01  # the speech (as read back from its wav file)


def test_stream_latents_equal_the_frames_stream(run):
    """`push_latents` cut anyhow gives the latents `push` decodes."""
    pipe = AvatarPipeline.from_pretrained(run / "model")
    wav = speech_like(0.7, seed=2)
    stream = pipe.open_stream(portrait(), seed=5)
    chunks = [z for i in range(0, len(wav), 1013) for z in stream.push_latents(wav[i:i + 1013])]
    chunks += stream.finish_latents()
    assert [len(z) for z in chunks] == [4, 4, 4, 4, 2] and stream.stats().frames == 18
    assert stream.finish_latents() == []
    frames = np.concatenate([pipe.decode(z) for z in chunks])
    assert np.array_equal(frames, pipe(portrait(), wav, seed=5).frames)


def test_damaged_latents_are_refused(run, tmp_path):
    latents, audio, meta = read_latents(run / "z.safetensors")
    data = (run / "z.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LipstepError, match="cut.safetensors: not a readable latents file"):
        read_latents(tmp_path / "cut.safetensors")
    bad = latents.clone()
    bad[0, 0, 0, 0] = float("nan")
    write_latents(tmp_path / "nan.safetensors", bad, audio, meta)
    with pytest.raises(LipstepError, match="NaN or infinite"):
        read_latents(tmp_path / "nan.safetensors")
    write_latents(tmp_path / "short.safetensors", latents[:5], audio, meta)
    with pytest.raises(LipstepError, match=r"the header says float32 \[18, 12, 8, 8\]"):
        read_latents(tmp_path / "short.safetensors")
    other = LatentsMeta(**{**meta.__dict__, "frames": 19})
    write_latents(tmp_path / "frames.safetensors", torch.zeros(19, 12, 8, 8), audio, other)
    with pytest.raises(LipstepError, match="does not drive 19 frames"):
        read_latents(tmp_path / "frames.safetensors")
