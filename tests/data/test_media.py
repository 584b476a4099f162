"""Tests for lipstep.data.media: round trips, A/V sync, formats, resampling, bad inputs, atomic writes."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from lipstep.data import media
from lipstep.data.media import (
    probe,
    read_audio,
    read_image,
    read_video,
    resample_audio,
    resample_fps,
    write_audio,
    write_image,
    write_video,
)
from lipstep.errors import MediaError

SR = 16000


def smooth_frames(n: int = 50, h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    """Moving smooth gradients: compress well, so H.264 error stays small."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 3)
    out = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        for c in range(3):
            v = 128 + 80 * np.sin(xx / 9.0 + yy / 13.0 + 0.15 * t + phase[c])
            out[t, :, :, c] = v.astype(np.uint8)
    return out


def sine(seconds: float, rate: int = SR, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def chirp(seconds: float, rate: int) -> np.ndarray:
    """A 200 -> 3000 Hz sweep with a slow envelope: correlation is sensitive to any time shift."""
    t = np.arange(round(seconds * rate)) / rate
    f0, f1 = 200.0, 3000.0
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
    env = 0.3 + 0.2 * np.sin(2 * np.pi * 1.3 * t)
    return (env * np.sin(phase)).astype(np.float32)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


def flat_frames(values, h: int = 32, w: int = 32) -> np.ndarray:
    v = np.asarray(values, dtype=np.uint8)
    return np.broadcast_to(v[:, None, None, None], (len(v), h, w, 3)).copy()


# ------------------------------------------------------------------------------------------ round trip


def test_round_trip_video_and_audio(tmp_path):
    frames = smooth_frames(50)
    wav = sine(2.0)
    path = write_video(tmp_path / "clip.mp4", frames, fps=25, audio=wav, sample_rate=SR)
    assert path.exists()

    info = probe(path)
    assert info["has_video"] and info["has_audio"]
    assert info["fps"] == pytest.approx(25.0)
    assert (info["width"], info["height"]) == (64, 64)
    assert info["frames"] == 50
    assert info["seconds"] == pytest.approx(2.0, abs=0.05)

    video = read_video(path)
    assert video.frames.shape == (50, 64, 64, 3) and video.frames.dtype == np.uint8
    assert video.fps == 25.0
    assert video.seconds == pytest.approx(2.0)
    assert np.abs(video.frames.astype(np.int16) - frames).mean() < 6
    assert video.audio.dtype == np.float32 and video.sample_rate == SR
    assert abs(len(video.audio) - len(wav)) <= SR // 1000  # AAC padding trimmed: within 1 ms
    assert corr(video.audio, wav) > 0.9

    audio = read_audio(path)
    assert abs(len(audio) - len(wav)) <= SR // 1000
    assert corr(audio, wav) > 0.9


@pytest.mark.parametrize("suffix", [".mkv", ".mov"])
def test_other_containers(tmp_path, suffix):
    frames = smooth_frames(10, 32, 48)
    path = write_video(tmp_path / f"clip{suffix}", frames, audio=sine(0.4))
    video = read_video(path)
    assert video.frames.shape == (10, 32, 48, 3)
    assert corr(video.audio, sine(0.4)) > 0.9


# --------------------------------------------------------------------------------------- A/V alignment


def burst_onset(wav: np.ndarray) -> int:
    """First sample whose smoothed envelope reaches half the peak."""
    env = np.convolve(np.abs(wav), np.ones(32) / 32, mode="same")
    return int(np.argmax(env >= 0.5 * env.max()))


@pytest.mark.parametrize("shift_frames", [0, 3])
def test_av_alignment_known_offset(tmp_path, shift_frames):
    n, k = 75, 30
    frames = np.zeros((n, 32, 32, 3), np.uint8)
    frames[k] = 255
    wav = np.zeros(n * SR // 25, np.float32)
    onset = (k + shift_frames) * SR // 25
    wav[onset : onset + 800] = sine(0.05, freq=1000.0, amp=0.8)  # 50 ms tone burst

    video = read_video(write_video(tmp_path / "sync.mp4", frames, fps=25, audio=wav))
    white = int(np.argmax(video.frames.reshape(len(video.frames), -1).mean(axis=1)))
    assert white == k
    offset_s = burst_onset(video.audio) / video.sample_rate - white / video.fps
    assert offset_s == pytest.approx(shift_frames / 25, abs=0.010)


def test_audio_starting_before_first_video_frame_is_dropped(tmp_path):
    """Samples placed before video frame 0 (negative time) are dropped, keeping sample 0 == frame 0."""
    path = tmp_path / "early.mp4"
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 32, 32, "yuv420p"
        ast = c.add_stream("aac", rate=SR)
        ast.layout = "mono"
        wav = np.zeros(SR, np.float32)
        wav[SR // 2 : SR // 2 + 800] = 0.8  # burst at 0.5 s in audio time = 0.3 s in video time
        for i in range(25):
            f = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            f.pts, f.time_base = i + 5, Fraction(1, 25)  # video starts at 0.2 s
            c.mux(vs.encode(f))
        c.mux(vs.encode(None))
        for s in range(0, SR, 1024):
            a = av.AudioFrame.from_ndarray(wav[None, s : s + 1024].copy(), format="fltp", layout="mono")
            a.sample_rate, a.pts, a.time_base = SR, s, Fraction(1, SR)
            c.mux(ast.encode(a))
        c.mux(ast.encode(None))
    video = read_video(path)
    assert burst_onset(video.audio) / SR == pytest.approx(0.3, abs=0.01)


# ------------------------------------------------------------------------------------------ audio files


@pytest.mark.parametrize(
    "name, rate, channels, tol",
    [("a.wav", 44100, 2, 0.002), ("a.flac", 22050, 1, 0.002), ("a.ogg", 48000, 1, 0.025)],
)
def test_read_audio_formats_soundfile(tmp_path, name, rate, channels, tol):
    sig = chirp(1.5, rate)
    data = np.stack([sig, sig], axis=1) if channels == 2 else sig
    path = tmp_path / name
    sf.write(str(path), data, rate)
    out = read_audio(path)
    assert out.dtype == np.float32 and out.ndim == 1
    assert len(out) / SR == pytest.approx(1.5, abs=tol)
    assert corr(out, resample_audio(sig, rate, SR)) > 0.9


@pytest.mark.parametrize("name, rate", [("a.m4a", 44100), ("a.mp3", 16000)])
def test_read_audio_formats_pyav(tmp_path, name, rate):
    sig = chirp(1.5, rate)
    path = write_audio(tmp_path / name, sig, rate)
    out = read_audio(path)
    assert out.dtype == np.float32 and out.ndim == 1
    assert len(out) / SR == pytest.approx(1.5, abs=0.025)
    assert corr(out, resample_audio(sig, rate, SR)) > 0.9
    assert probe(path)["has_video"] is False


@pytest.mark.parametrize("name", ["w.wav", "w.flac", "w.ogg", "w.m4a"])
def test_write_audio_round_trip(tmp_path, name):
    sig = chirp(1.0, SR)
    out = read_audio(write_audio(tmp_path / name, sig, SR))
    assert len(out) == pytest.approx(SR, abs=SR * 0.025)
    assert corr(out, sig) > 0.9


def test_write_audio_unknown_suffix(tmp_path):
    with pytest.raises(MediaError, match="unsupported audio format"):
        write_audio(tmp_path / "x.xyz", sine(0.1), SR)
    assert list(tmp_path.iterdir()) == []


def test_read_audio_resamples_to_requested_rate(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(str(path), chirp(1.0, 16000), 16000)
    assert len(read_audio(path, sample_rate=8000)) == 8000


def test_resample_audio_identity_and_length():
    x = chirp(1.0, 16000)
    assert resample_audio(x, 16000, 16000) is not None and np.array_equal(resample_audio(x, 16000, 16000), x)
    assert len(resample_audio(x, 16000, 44100)) == 44100


# ------------------------------------------------------------------------------------ frame resampling


def test_resample_fps_indices():
    frames = np.arange(30, dtype=np.uint8)[:, None, None, None]
    down = resample_fps(frames, 30, 25)
    assert len(down) == 25
    assert down[:, 0, 0, 0].tolist() == [int((j + 0.5) * 30 / 25) for j in range(25)]
    up = resample_fps(frames[:10], 25, 50)
    assert up[:, 0, 0, 0].tolist() == [j // 2 for j in range(20)]
    assert len(resample_fps(frames, 30, 30)) == 30


@pytest.mark.parametrize("src_fps, n, step", [(30, 30, 8), (50, 50, 5)])
def test_read_video_resamples_to_25(tmp_path, src_fps, n, step):
    frames = flat_frames(np.arange(n) * step)
    path = write_video(tmp_path / f"v{src_fps}.mp4", frames, fps=src_fps, crf=0)
    assert read_video(path, audio="none").fps == pytest.approx(src_fps)
    video = read_video(path, fps=25, audio="none")
    assert video.fps == 25.0
    assert len(video.frames) == round(n * 25 / src_fps)
    chosen = np.round(video.frames[:, 16, 16, 0].astype(float) / step).astype(int)
    expected = [int((j + 0.5) * src_fps / 25 + 1e-9) for j in range(len(video.frames))]
    assert chosen.tolist() == expected


def test_variable_frame_rate_uses_timestamps(tmp_path):
    """Frames at irregular times (ms): output frame j shows the frame on screen at (j + 0.5) / 25 s."""
    times_ms = [0, 40, 80, 200, 240, 260, 280, 400]
    path = tmp_path / "vfr.mkv"
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=25, options={"crf": "0"})
        vs.width, vs.height, vs.pix_fmt = 32, 32, "yuv420p"
        vs.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times_ms):
            f = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * (i + 1), np.uint8), format="rgb24")
            f.pts, f.time_base = t, Fraction(1, 1000)
            c.mux(vs.encode(f))
        c.mux(vs.encode(None))
    video = read_video(path, fps=25, audio="none")
    chosen = np.round(video.frames[:, 16, 16, 0] / 20.0).astype(int) - 1
    centres_ms = (np.arange(len(video.frames)) + 0.5) * 40
    expected = np.searchsorted(times_ms, centres_ms, side="right") - 1
    assert len(video.frames) >= 10
    assert chosen.tolist() == expected.tolist()


# ------------------------------------------------------------------------------------- sizes, rotation


def test_odd_frame_size_is_padded_to_even(tmp_path):
    frames = smooth_frames(5, 63, 65)
    video = read_video(write_video(tmp_path / "odd.mp4", frames), audio="optional")
    assert video.frames.shape == (5, 64, 66, 3)
    assert video.audio is None
    assert np.abs(video.frames[:, :63, :65].astype(np.int16) - frames).mean() < 6


def test_display_rotation_is_applied(tmp_path):
    image = np.zeros((32, 64, 3), np.uint8)
    image[:, 32:] = 255  # right half white
    path = tmp_path / "rot.mp4"
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 64, 32, "yuv420p"
        vs.set_display_rotation(90)  # counter-clockwise: the right half ends up on top
        for i in range(3):
            f = av.VideoFrame.from_ndarray(image, format="rgb24")
            f.pts = i
            c.mux(vs.encode(f))
        c.mux(vs.encode(None))
    frames = read_video(path, audio="none").frames
    assert frames.shape == (3, 64, 32, 3)
    assert frames[0, :32].mean() > 200 and frames[0, 32:].mean() < 50


# ----------------------------------------------------------------------------------------- bad inputs


def assert_media_error(fn, path, problem):
    with pytest.raises(MediaError) as info:
        fn(path)
    msg = str(info.value)
    assert str(path) in msg and problem in msg, msg


@pytest.mark.parametrize("fn", [read_video, read_audio, probe, read_image])
def test_missing_empty_and_directory(tmp_path, fn):
    assert_media_error(fn, tmp_path / "nope.mp4", "file not found")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert_media_error(fn, empty, "file is empty")
    assert_media_error(fn, tmp_path, "is a directory")


def test_garbage_files(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    assert_media_error(read_video, text, "cannot decode")
    assert_media_error(probe, text, "cannot decode")
    noise = tmp_path / "noise.wav"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    assert_media_error(read_audio, noise, "cannot decode")


def test_truncated_mp4_decodes_valid_part_or_raises_media_error(tmp_path):
    path = write_video(tmp_path / "full.mp4", smooth_frames(50), audio=sine(2.0))
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    try:
        video = read_video(cut)
    except MediaError as exc:
        assert str(cut) in str(exc)
    else:
        assert 0 < len(video.frames) <= 50
    cut.write_bytes(data[:2000])
    try:
        read_audio(cut)
    except MediaError as exc:
        assert str(cut) in str(exc)


def test_missing_streams(tmp_path):
    audio_only = write_audio(tmp_path / "speech.m4a", sine(0.5), SR)
    assert_media_error(read_video, audio_only, "no video stream")
    silent = write_video(tmp_path / "silent.mp4", smooth_frames(5, 16, 16))
    assert_media_error(read_video, silent, "no audio stream")
    assert_media_error(read_audio, silent, "no audio stream")
    assert read_video(silent, audio="optional").audio is None
    assert read_video(silent, audio="none").frames.shape == (5, 16, 16, 3)
    with_audio = write_video(tmp_path / "talk.mp4", smooth_frames(5, 16, 16), audio=sine(0.2))
    assert read_video(with_audio, audio="none").audio is None


def test_max_seconds(tmp_path):
    path = write_video(tmp_path / "long.mp4", smooth_frames(50, 16, 16), audio=sine(2.0))
    for fn in (lambda p: read_video(p, max_seconds=1.0), lambda p: read_audio(p, max_seconds=1.0)):
        with pytest.raises(MediaError) as info:
            fn(path)
        msg = str(info.value)
        assert str(path) in msg and "2.00 s" in msg and "limit of 1 s" in msg, msg
    assert len(read_video(path, max_seconds=2.0).frames) == 50


def test_not_an_image(tmp_path):
    path = tmp_path / "photo.png"
    path.write_text("hello")
    assert_media_error(read_image, path, "not an image PIL can read")
    video = write_video(tmp_path / "clip.mp4", smooth_frames(2, 16, 16))
    assert_media_error(read_image, video, "not an image PIL can read")


# ------------------------------------------------------------------------------------- atomic writes


def test_invalid_frames_raise_value_error_and_leave_nothing(tmp_path):
    bad_inputs = [
        np.zeros((5, 16, 16, 3), np.float32),
        np.zeros((16, 16, 3), np.uint8),
        np.zeros((5, 16, 16, 4), np.uint8),
        np.zeros((0, 16, 16, 3), np.uint8),
        [[0]],
    ]
    for frames in bad_inputs:
        with pytest.raises(ValueError):
            write_video(tmp_path / "out.mp4", frames)
    with pytest.raises(ValueError):
        write_video(tmp_path / "out.mp4", smooth_frames(2, 16, 16), audio=np.zeros((2, 100, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_existing_file(tmp_path, monkeypatch):
    path = write_video(tmp_path / "keep.mp4", smooth_frames(5, 16, 16))
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_video(path, np.zeros((3, 16, 16), np.uint8))
    calls = []

    def failing_pad(image):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash mid-write")
        return image

    monkeypatch.setattr(media, "_pad_even", failing_pad)
    with pytest.raises(RuntimeError, match="simulated"):
        write_video(path, smooth_frames(10, 16, 16))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mp4"]


def test_unsupported_video_suffix(tmp_path):
    with pytest.raises(MediaError, match="unsupported video format"):
        write_video(tmp_path / "x.avi", smooth_frames(2, 16, 16))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------- images


def test_read_image_modes(tmp_path):
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    gray = np.tile(np.arange(12, dtype=np.uint8) * 20, (10, 1))
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    Image.fromarray(gray, "L").convert("P").save(tmp_path / "pal.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "gray16.png")

    out = read_image(tmp_path / "rgba.png")
    assert out.shape == (10, 12, 3) and out.dtype == np.uint8 and (out[..., 0] == 200).all()
    for name in ("gray.png", "pal.png", "gray16.png"):
        out = read_image(tmp_path / name)
        assert out.shape == (10, 12, 3) and out.dtype == np.uint8, name
        assert np.abs(out[..., 1].astype(int) - gray).max() <= 1, name


def test_read_image_applies_exif_orientation(tmp_path):
    image = np.zeros((10, 20, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(image).save(tmp_path / "o.jpg", exif=exif)
    assert read_image(tmp_path / "o.jpg").shape == (20, 10, 3)


def test_write_image_round_trip(tmp_path):
    image = smooth_frames(1, 20, 30)[0]
    assert np.array_equal(read_image(write_image(tmp_path / "i.png", image)), image)
    jpg = read_image(write_image(tmp_path / "i.jpg", image))
    assert jpg.shape == image.shape and np.abs(jpg.astype(int) - image).mean() < 4
    with pytest.raises(ValueError):
        write_image(tmp_path / "bad.png", image.astype(np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.jpg", "i.png"]
