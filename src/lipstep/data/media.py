"""Media I/O: video, audio and image files in and out, with PyAV (bundled FFmpeg), soundfile and PIL.

This module owns the project's media conventions:

* video is 25 fps (`FPS`) uint8 RGB frames shaped [T, H, W, 3]; audio is 16 kHz (`SAMPLE_RATE`) mono
  float32 in [-1, 1];
* one clock for both streams: frame k of a `Video` starts at k / fps seconds and audio sample n at
  n / sample_rate seconds, both measured from the first decoded video frame, so a video read here is
  lip-sync correct (encoder priming is removed by timestamps, decoder padding is trimmed where the
  container records the real length: mp4/mov/m4a do, Matroska does not, leaving < 1024 samples of
  trailing silence); `read_audio` alone starts at the track's first sample;
* variable-frame-rate files are put on a uniform grid by frame timestamps;
* every problem with a file (missing, empty, corrupt, lacking a stream, too long, NaN or infinite
  samples) raises `MediaError` naming the path; a bad array handed to a writer is a programming error
  and raises `ValueError`;
* every write goes through `fsutil.atomic_path`, so no partial output file is ever left behind.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from PIL import Image, ImageOps, UnidentifiedImageError

from lipstep.errors import MediaError
from lipstep.fsutil import atomic_path

FPS = 25.0
SAMPLE_RATE = 16000
MIN_SAMPLE_RATE = 4000  # below this a file is not speech (telephone audio is 8 kHz)

log = logging.getLogger(__name__)

_AUDIO_MODES = ("required", "optional", "none")
_VIDEO_FORMATS = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov"}
_SOUNDFILE_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}
_PYAV_AUDIO_FORMATS = {".m4a": ("mp4", "aac"), ".mp3": ("mp3", "libmp3lame")}
_AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
_AAC_FRAME = 1024
# Exceptions PyAV / FFmpeg raise for unreadable input (FFmpegError subclasses OSError or ValueError).
_DECODE_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError, UnicodeError)


@dataclass
class Video:
    """Decoded video: uint8 RGB frames [T, H, W, 3] at `fps`, optional mono float32 audio in sync."""

    frames: np.ndarray
    fps: float
    audio: np.ndarray | None = None
    sample_rate: int = SAMPLE_RATE

    @property
    def seconds(self) -> float:
        """Duration of the frames in seconds (T / fps)."""
        return len(self.frames) / self.fps


# --------------------------------------------------------------------------------------------- helpers


def _check_file(path: str | Path) -> Path:
    """Return `path` as a Path, or raise MediaError if it is missing, a directory or empty."""
    path = Path(path)
    if not path.exists():
        raise MediaError(path, "file not found")
    if path.is_dir():
        raise MediaError(path, "is a directory")
    if path.stat().st_size == 0:
        raise MediaError(path, "file is empty")
    return path


def _reason(exc: BaseException) -> str:
    """Short, one-line, lower-case reason from an exception (FFmpeg's strerror when there is one)."""
    msg = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    msg = " ".join(str(msg).split()).rstrip(".")
    msg = msg[:1].lower() + msg[1:]
    return msg if len(msg) <= 100 else msg[:97] + "..."


def _open(path: Path):
    """Open a media file for reading, mapping FFmpeg failures to MediaError."""
    try:
        return av.open(str(path), metadata_errors="replace")
    except PermissionError:
        raise MediaError(path, "permission denied") from None
    except _DECODE_ERRORS as exc:
        raise MediaError(path, f"cannot decode ({_reason(exc)})") from None


def _pick_stream(container, kind: str, path: Path):
    """The main stream of `kind` ('video'/'audio'), ignoring cover-art pictures; None if there is none."""
    streams = [s for s in getattr(container.streams, kind)]
    if kind == "video":
        attached = av.stream.Disposition.attached_pic
        streams = [s for s in streams if not (s.disposition & attached)]
    if not streams:
        return None
    usable = [s for s in streams if s.codec_context is not None]
    if not usable:  # e.g. a truncated header, or a codec this FFmpeg build lacks
        raise MediaError(path, f"cannot decode ({kind} stream has no usable codec)")
    streams = usable
    try:
        best = container.streams.best(kind)
    except (ValueError, av.FFmpegError):
        best = None
    return best if best in streams else streams[0]


def _stream_end(container, stream) -> float | None:
    """End time (seconds) of `stream` from the container's index, or None if unknown."""
    if stream.duration is not None and stream.duration > 0 and stream.time_base:
        start = stream.start_time or 0
        return float((start + stream.duration) * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return ((container.start_time or 0) + container.duration) / 1e6
    return None


def _container_seconds(container) -> float | None:
    """Container duration in seconds, or None if unknown."""
    if container.duration is not None and container.duration > 0:
        return container.duration / 1e6
    return None


def _too_long(path: Path, seconds: float, max_seconds: float, at_least: bool = False) -> MediaError:
    """The MediaError for a file longer than `max_seconds`."""
    what = "at least " if at_least else ""
    return MediaError(path, f"media is {what}{seconds:.2f} s long, over the limit of {max_seconds:g} s")


_SAMPLE_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2.0**31, "s64": 2.0**63, "flt": 1.0, "dbl": 1.0}


def _audio_frame_to_mono(frame) -> np.ndarray:
    """Mix a decoded audio frame of any sample format and layout down to mono float32."""
    arr = frame.to_ndarray()
    fmt = frame.format
    channels = max(1, frame.layout.nb_channels)
    if not fmt.is_planar:
        arr = arr.reshape(-1, channels).T
    base = fmt.name.rstrip("p")
    arr = arr.astype(np.float32)
    if base == "u8":
        arr = arr - 128.0
    scale = _SAMPLE_SCALE.get(base, 1.0)
    mono = arr.mean(axis=0) if arr.shape[0] > 1 else arr[0]
    return (mono / scale).astype(np.float32, copy=False)


class _AudioAssembler:
    """Place decoded audio frames on a timeline by their timestamps, at the stream's native rate.

    Sample n of the result is at `origin + n / rate` seconds. Samples before the origin (encoder priming
    that was not skipped, or audio that starts before the first video frame) are dropped; a gap before a
    frame's start is filled with silence. With `origin=None` the origin is the first frame's time, or 0
    if that is negative.
    """

    def __init__(self, origin: float | None):
        self.origin = origin
        self.rate: int | None = None
        self.chunks: list[np.ndarray] = []
        self.length = 0

    def add(self, frame) -> None:
        if frame.samples == 0:
            return
        if self.rate is None:
            self.rate = int(frame.sample_rate)
        elif int(frame.sample_rate) != self.rate:
            raise ValueError(f"sample rate changes mid-stream ({self.rate} -> {frame.sample_rate})")
        mono = _audio_frame_to_mono(frame)
        start = self.length
        if frame.pts is not None and frame.time_base:
            t = float(frame.pts * frame.time_base)
            if self.origin is None:
                self.origin = max(0.0, t)
            start = round((t - self.origin) * self.rate)
        elif self.origin is None:
            self.origin = 0.0
        if start < 0:  # before the origin: drop
            mono, start = mono[-start:], 0
            if mono.size == 0:
                return
        jitter = max(2, self.rate // 1000)  # timestamps rounded by the container: not a real gap
        if start > self.length + jitter:
            self.chunks.append(np.zeros(start - self.length, np.float32))
            self.length = start
        elif start < self.length - jitter:  # overlap: keep what is already placed
            mono = mono[self.length - start :]
        self.chunks.append(mono)
        self.length += mono.size

    def result(self, end_time: float | None, frame_size: int) -> np.ndarray:
        """All samples, with decoder padding past the stream's real end trimmed."""
        wav = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)
        if end_time is not None and self.rate and self.origin is not None:
            end = round((end_time - self.origin) * self.rate)
            # Only trim padding-sized excess (AAC pads the last frame to 1024 samples); a larger
            # mismatch means the index is unreliable, so trust the decoded samples then.
            if 0 <= end < wav.size and wav.size - end <= 2 * max(frame_size or 0, _AAC_FRAME):
                wav = wav[:end]
        return wav


# ------------------------------------------------------------------------------------------ resampling


def _fps_fraction(fps: float) -> Fraction:
    """A frame rate as an exact fraction (29.97 -> 30000/1001)."""
    frac = Fraction(fps).limit_denominator(1001)
    return frac if abs(float(frac) - fps) < 1e-6 * fps else Fraction(fps).limit_denominator(1_000_000)


def _pick_indices(times: np.ndarray, duration: float, dst_fps: float) -> np.ndarray:
    """For each output frame, the index of the source frame showing at the output frame's centre time."""
    n_out = max(1, round(duration * dst_fps))
    centres = (np.arange(n_out) + 0.5) / dst_fps
    idx = np.searchsorted(times, centres + 1e-7, side="right") - 1
    return np.clip(idx, 0, len(times) - 1)


def resample_timestamps(
    frames: np.ndarray, times: np.ndarray, dst_fps: float, duration: float | None = None
) -> np.ndarray:
    """Resample frames with (possibly irregular) start `times` in seconds onto a uniform `dst_fps` grid."""
    times = np.asarray(times, dtype=np.float64)
    if len(frames) == 0 or len(times) != len(frames):
        raise ValueError(f"need one timestamp per frame, got {len(times)} for {len(frames)} frames")
    times = times - times[0]
    if duration is None:
        step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / dst_fps
        duration = float(times[-1]) + step
    return frames[_pick_indices(times, duration, dst_fps)]


def resample_fps(frames: np.ndarray, src_fps: float, dst_fps: float) -> np.ndarray:
    """Resample constant-rate frames from `src_fps` to `dst_fps` (nearest frame; length round(T*dst/src))."""
    if src_fps <= 0 or dst_fps <= 0:
        raise ValueError(f"frame rates must be positive, got {src_fps} and {dst_fps}")
    if abs(src_fps - dst_fps) < 1e-9 or len(frames) == 0:
        return frames
    n = len(frames)
    return resample_timestamps(frames, np.arange(n) / src_fps, dst_fps, duration=n / src_fps)


def resample_audio(wav: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Resample a mono waveform with a polyphase filter (scipy resample_poly); identity if rates match."""
    wav = np.asarray(wav, dtype=np.float32)
    if int(src_rate) == int(dst_rate) or wav.size == 0:
        return wav
    # scipy.signal here, not at module top: about 2 s of CPU to import, and most media never needs resampling
    from scipy.signal import resample_poly

    g = math.gcd(int(src_rate), int(dst_rate))
    out = resample_poly(wav, int(dst_rate) // g, int(src_rate) // g)
    return out.astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------- reading


def probe(path: str | Path) -> dict:
    """Stream summary: has_video, has_audio, fps, width, height, frames (estimate), seconds."""
    path = _check_file(path)
    container = _open(path)
    try:
        video = _pick_stream(container, "video", path)
        audio = _pick_stream(container, "audio", path)
        seconds = _container_seconds(container)
        fps = width = height = None
        frames = 0
        if video is not None:
            rate = video.average_rate or video.guessed_rate or video.base_rate
            fps = float(rate) if rate else None
            width, height = video.codec_context.width, video.codec_context.height
            if seconds is None and video.duration and video.time_base:
                seconds = float(video.duration * video.time_base)
            frames = int(video.frames or 0)
            if frames <= 0 and fps and seconds:
                frames = round(seconds * fps)
        if seconds is None and audio is not None and audio.duration and audio.time_base:
            seconds = float(audio.duration * audio.time_base)
        return {
            "has_video": video is not None,
            "has_audio": audio is not None,
            "fps": fps,
            "width": width,
            "height": height,
            "frames": frames,
            "seconds": seconds,
            "sample_rate": int(audio.codec_context.sample_rate) if audio is not None else None,
        }
    except _DECODE_ERRORS as exc:
        raise MediaError(path, f"cannot decode ({_reason(exc)})") from None
    finally:
        container.close()


def _decode(container, streams, path: Path) -> Iterator:
    """Decoded frames of `streams` in one demux pass; a corrupt tail ends the stream with a warning."""
    decoded = 0
    try:
        for packet in container.demux(*streams):
            for frame in packet.decode():
                decoded += 1
                yield frame
    except _DECODE_ERRORS as exc:
        if decoded == 0:
            raise MediaError(path, f"cannot decode ({_reason(exc)})") from None
        log.warning(
            "%s: decoding stopped early (%s); keeping the %d frames before it", path, _reason(exc), decoded
        )


def _rotate(image: np.ndarray, degrees: int) -> np.ndarray:
    """Apply a display-matrix rotation (counter-clockwise degrees, as PyAV reports it)."""
    k = round(degrees / 90.0) % 4
    return np.ascontiguousarray(np.rot90(image, k)) if k else image


def read_video(
    path: str | Path,
    *,
    fps: float | None = None,
    audio: str = "required",
    sample_rate: int = SAMPLE_RATE,
    max_seconds: float | None = None,
) -> Video:
    """Decode a video to RGB frames (optionally resampled to `fps`) and its audio track in sync."""
    if audio not in _AUDIO_MODES:
        raise ValueError(f"audio must be one of {_AUDIO_MODES}, got {audio!r}")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path = _check_file(path)
    container = _open(path)
    try:
        vstream = _pick_stream(container, "video", path)
        if vstream is None:
            raise MediaError(path, "no video stream")
        astream = _pick_stream(container, "audio", path) if audio != "none" else None
        if astream is None and audio == "required":
            raise MediaError(path, "no audio stream")
        total = _container_seconds(container)
        if max_seconds is not None and total is not None and total > max_seconds + 1.0:
            raise _too_long(path, total, max_seconds)
        vstream.thread_type = "AUTO"
        rate = vstream.average_rate or vstream.guessed_rate or vstream.base_rate
        native_fps = float(rate) if rate else FPS

        images: list[np.ndarray] = []
        times: list[float] = []
        pending_audio = []  # audio frames seen before the first video frame fixes the origin
        assembler: _AudioAssembler | None = None
        size = None
        streams = [vstream] + ([astream] if astream is not None else [])
        for frame in _decode(container, streams, path):
            if isinstance(frame, av.AudioFrame):
                if assembler is None:
                    pending_audio.append(frame)
                else:
                    assembler.add(frame)
                continue
            t = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else None
            if t is None:
                t = (times[-1] + 1.0 / native_fps) if times else 0.0
            if size is None:
                size = (frame.width, frame.height)
                assembler = _AudioAssembler(origin=t)
                for pending in pending_audio:
                    assembler.add(pending)
                pending_audio.clear()
            img = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
            images.append(_rotate(img, frame.rotation))
            times.append(t)
            if max_seconds is not None and t - times[0] > max_seconds + 0.5:
                raise _too_long(path, total if total else t - times[0], max_seconds, at_least=not total)
        if not images:
            raise MediaError(path, "contains no frames")

        order = np.argsort(np.asarray(times), kind="stable")
        t_arr = np.asarray(times)[order] - times[order[0]]
        frames = np.stack([images[i] for i in order])
        del images
        out_fps = float(fps) if fps is not None else native_fps
        constant = np.all(np.abs(t_arr - np.arange(len(t_arr)) / native_fps) < 0.5 / native_fps)
        if constant:
            frames = resample_fps(frames, native_fps, out_fps)
        else:  # variable frame rate: place frames by their timestamps
            step = float(np.median(np.diff(t_arr))) if len(t_arr) > 1 else 1.0 / native_fps
            frames = resample_timestamps(frames, t_arr, out_fps, duration=float(t_arr[-1]) + step)
        seconds = len(frames) / out_fps
        if max_seconds is not None and seconds > max_seconds + 1e-3:
            raise _too_long(path, seconds, max_seconds)

        wav = None
        if astream is not None and assembler is not None:
            end = _stream_end(container, astream)
            native = _finite(assembler.result(end, astream.codec_context.frame_size), path)
            if native.size:
                wav = np.clip(resample_audio(native, assembler.rate, sample_rate), -1.0, 1.0)
            elif audio == "required":
                raise MediaError(path, "contains no audio samples")
        return Video(frames=frames, fps=out_fps, audio=wav, sample_rate=int(sample_rate))
    except _DECODE_ERRORS as exc:
        raise MediaError(path, f"cannot decode ({_reason(exc)})") from None
    finally:
        container.close()


def _finite(wav: np.ndarray, path: Path) -> np.ndarray:
    """`wav` if every sample is a number; float files can hold NaN or inf, which clipping would hide."""
    if not np.isfinite(wav).all():
        raise MediaError(path, "contains NaN or infinite audio samples")
    return wav


def read_audio(
    path: str | Path, sample_rate: int = SAMPLE_RATE, *, max_seconds: float | None = None
) -> np.ndarray:
    """Decode any audio file (or a video's audio track) to mono float32 at `sample_rate`."""
    path = _check_file(path)
    container = _open(path)
    try:
        astream = _pick_stream(container, "audio", path)
        if astream is None:
            raise MediaError(path, "no audio stream")
        total = _container_seconds(container)
        if max_seconds is not None and total is not None and total > max_seconds + 1.0:
            raise _too_long(path, total, max_seconds)
        # Time zero is the first decoded sample, or 0 when the first samples are encoder priming at
        # negative time (they are dropped). Timestamps place every later frame.
        assembler = _AudioAssembler(origin=None)
        for frame in _decode(container, [astream], path):
            assembler.add(frame)
            if (
                max_seconds is not None
                and assembler.rate
                and assembler.length > (max_seconds + 0.5) * assembler.rate
            ):
                seconds = total if total else assembler.length / assembler.rate
                raise _too_long(path, seconds, max_seconds, at_least=not total)
        end = _stream_end(container, astream)
        native = _finite(assembler.result(end, astream.codec_context.frame_size), path)
        if native.size == 0:
            raise MediaError(path, "contains no audio samples")
        if assembler.rate < MIN_SAMPLE_RATE:
            raise MediaError(path, f"sample rate {assembler.rate} Hz: not speech audio (lipstep needs at least "
                                   f"{MIN_SAMPLE_RATE} Hz)")
        seconds = native.size / assembler.rate
        if max_seconds is not None and seconds > max_seconds + 1e-3:
            raise _too_long(path, seconds, max_seconds)
        return np.clip(resample_audio(native, assembler.rate, sample_rate), -1.0, 1.0)
    except _DECODE_ERRORS as exc:
        raise MediaError(path, f"cannot decode ({_reason(exc)})") from None
    finally:
        container.close()


# --------------------------------------------------------------------------------------------- writing


def _check_frames(frames) -> np.ndarray:
    """Validate frames for writing: uint8 [T, H, W, 3] with T >= 1 (ValueError otherwise)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape [T, H, W, 3], got {list(frames.shape)}")
    if frames.shape[0] < 1 or frames.shape[1] < 1 or frames.shape[2] < 1:
        raise ValueError(f"frames must contain at least one non-empty frame, got {list(frames.shape)}")
    return frames


def _check_wav(wav, *, max_channels: int = 1) -> np.ndarray:
    """Validate a waveform for writing: float samples, [N] (or [N, C]), finite; returned as float32."""
    wav = np.asarray(wav)
    if wav.dtype == np.int16:
        wav = wav.astype(np.float32) / 32768.0
    if not np.issubdtype(wav.dtype, np.floating):
        raise ValueError(f"audio must be float (or int16) samples, got {wav.dtype}")
    if not (wav.ndim == 1 or (wav.ndim == 2 and 1 <= wav.shape[1] <= max_channels)):
        want = "[N]" if max_channels == 1 else f"[N] or [N, C] with C <= {max_channels}"
        raise ValueError(f"audio must have shape {want}, got {list(wav.shape)}")
    if wav.shape[0] < 1:
        raise ValueError("audio must contain at least one sample")
    if not np.all(np.isfinite(wav)):
        raise ValueError("audio contains NaN or infinite samples")
    return np.clip(wav, -1.0, 1.0).astype(np.float32, copy=False)


def _pad_even(image: np.ndarray) -> np.ndarray:
    """Edge-replicate one row/column so height and width are even (yuv420p needs it)."""
    h, w = image.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return image
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _add_audio_stream(container, codec: str, sample_rate: int, channels: int):
    """Add an audio encoder stream (mono or stereo) at `sample_rate`."""
    stream = container.add_stream(codec, rate=sample_rate)
    stream.layout = "mono" if channels == 1 else "stereo"
    stream.codec_context.time_base = Fraction(1, sample_rate)
    if codec == "aac":
        stream.bit_rate = 128000
    return stream


def _encode_audio_chunk(container, stream, planar: np.ndarray, start: int, sample_rate: int) -> None:
    """Encode samples planar[:, start:start+n] as one frame with pts = start (time base 1/rate)."""
    layout = "mono" if planar.shape[0] == 1 else "stereo"
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planar), format="fltp", layout=layout)
    frame.sample_rate = sample_rate
    frame.pts = start
    frame.time_base = Fraction(1, sample_rate)
    container.mux(stream.encode(frame))


def _aac_rate(sample_rate: int) -> int:
    """The smallest AAC-supported sample rate >= `sample_rate` (AAC only allows a fixed set)."""
    return next((r for r in _AAC_RATES if r >= sample_rate), _AAC_RATES[-1])


class VideoWriter:
    """An H.264/AAC video written as its frames and audio arrive, atomically (a context manager).

    A long generation need not hold its video in memory: frames go to the encoder one by one
    (`AvatarPipeline.generate_video`). Nothing appears at `path` until `close` succeeds; an error inside
    the ``with`` block, or `abort`, removes the temporary file (an existing file at `path` is kept).

    Frames are uint8 RGB [H, W, 3] of one size, set by the first (odd sizes are padded to even, as in
    `write_video`). Audio is mono float in [-1, 1] at `sample_rate`, which must be a rate AAC allows (a
    resampler cut into blocks would click at the cuts; `write_video` resamples whole audio first). Audio
    sample 0 is aligned with frame 0; audio is encoded up to the end of the frames written so far
    (interleaved, as players expect) and what is left when the video ends is encoded by `close`.
    """

    def __init__(self, path: str | Path, fps: float = FPS, *, sample_rate: int | None = None, crf: int = 18):
        self.path = Path(path)
        self.format = _VIDEO_FORMATS.get(self.path.suffix.lower())
        if self.format is None:
            raise MediaError(self.path, f"unsupported video format {self.path.suffix!r} (use .mp4, .mkv or .mov)")
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if not 0 <= int(crf) <= 51:
            raise ValueError(f"crf must be in [0, 51], got {crf}")
        if sample_rate is not None and int(sample_rate) not in _AAC_RATES:
            raise ValueError(f"sample_rate must be one AAC allows ({', '.join(map(str, _AAC_RATES))}), "
                             f"got {sample_rate}")
        self.rate, self.crf = _fps_fraction(float(fps)), int(crf)
        self.sample_rate = int(sample_rate) if sample_rate is not None else None
        self.frames = 0                     # frames written
        self.size: tuple[int, int] | None = None  # (height, width) of the frames
        self._stack = contextlib.ExitStack()
        self._container = self._vstream = self._astream = None
        self._pending: list[np.ndarray] = []  # audio not yet encoded, starting at sample `_apos`
        self._apos = 0
        self._done = False

    def __enter__(self) -> VideoWriter:  # noqa: PYI034 (Python 3.10 has no typing.Self)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _open(self, height: int, width: int) -> None:
        """Create the temporary file and its streams (both are known once the first frame gives the size)."""
        tmp = self._stack.enter_context(atomic_path(self.path))
        options = {"movflags": "+faststart"} if self.format in ("mp4", "mov") else {}
        self._container = av.open(str(tmp), "w", format=self.format, container_options=options)
        self._vstream = self._container.add_stream("libx264", rate=self.rate, options={"crf": str(self.crf)})
        self._vstream.width, self._vstream.height, self._vstream.pix_fmt = width + width % 2, height + height % 2, "yuv420p"
        self._vstream.codec_context.time_base = 1 / self.rate
        if self.sample_rate is not None:
            self._astream = _add_audio_stream(self._container, "aac", self.sample_rate, 1)

    def write_frame(self, image: np.ndarray) -> None:
        """Append one uint8 RGB frame [H, W, 3]."""
        image = _check_frames(np.asarray(image)[None])[0]
        if self._done:
            raise ValueError("the video writer is closed")
        if self.size is None:
            self.size = image.shape[:2]
            self._guard(self._open, *self.size)
        elif image.shape[:2] != self.size:
            raise ValueError(f"frames must all be {self.size[0]}x{self.size[1]}, got {image.shape[0]}x{image.shape[1]}")
        vframe = av.VideoFrame.from_ndarray(np.ascontiguousarray(_pad_even(image)), format="rgb24")
        vframe.pts, vframe.time_base = self.frames, 1 / self.rate
        self._guard(lambda: self._container.mux(self._vstream.encode(vframe)))
        self.frames += 1
        self._flush_audio(round(self.frames / float(self.rate) * (self.sample_rate or 0)))

    def write_audio(self, wav: np.ndarray) -> None:
        """Append mono audio [N] at `sample_rate`."""
        if self.sample_rate is None:
            raise ValueError("this video writer has no audio stream (give sample_rate)")
        if self._done:
            raise ValueError("the video writer is closed")
        wav = np.asarray(wav)
        if wav.size == 0:
            return
        self._pending.append(_check_wav(wav))
        if self.frames:
            self._flush_audio(round(self.frames / float(self.rate) * self.sample_rate))

    def _flush_audio(self, until: int, *, final: bool = False) -> None:
        """Encode pending audio in whole AAC frames up to sample `until` (`final`: all of it)."""
        if self._astream is None or not self._pending:
            return
        wav = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        end = self._apos + len(wav) if final else min(self._apos + len(wav), until)
        used = 0
        while end - (self._apos + used) >= _AAC_FRAME or (final and end > self._apos + used):
            piece = wav[used:used + _AAC_FRAME]
            self._guard(_encode_audio_chunk, self._container, self._astream, piece[None], self._apos + used,
                        self.sample_rate)
            used += len(piece)
        self._apos += used
        self._pending = [wav[used:]] if used < len(wav) else []

    def close(self) -> Path:
        """Flush the encoders and move the file into place; returns `path`."""
        if self._done:
            return self.path
        try:
            if self.frames == 0:
                raise ValueError("a video needs at least one frame")
            self._guard(lambda: self._container.mux(self._vstream.encode(None)))
            if self._astream is not None:
                self._flush_audio(0, final=True)
                self._guard(lambda: self._container.mux(self._astream.encode(None)))
            self._guard(self._container.close)
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._stack.close()  # the rename
        return self.path

    def abort(self) -> None:
        """Stop without output: the temporary file is removed, `path` is left as it was."""
        if self._done:
            return
        self._done = True
        if self._container is not None:
            with contextlib.suppress(*_DECODE_ERRORS):
                self._container.close()
        self._stack.__exit__(_Aborted, _Aborted(), None)  # atomic_path removes its temporary on an error

    def _guard(self, fn, *args):
        """Run an encoder call; FFmpeg and file-system failures become a one-line `MediaError`."""
        try:
            return fn(*args)
        except (av.FFmpegError, OSError) as exc:
            raise MediaError(self.path, f"cannot write ({_reason(exc)})") from None


class _Aborted(Exception):
    """Thrown into `atomic_path` so that it removes its temporary file."""


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float = FPS,
    audio: np.ndarray | None = None,
    sample_rate: int = SAMPLE_RATE,
    *,
    crf: int = 18,
) -> Path:
    """Write uint8 RGB frames [T, H, W, 3] (+ mono audio) as H.264/AAC .mp4/.mkv/.mov, atomically.

    Odd heights/widths are padded to even by repeating the last row/column (yuv420p needs even sizes),
    so such a file reads back one pixel taller/wider. Audio sample 0 is aligned with frame 0.
    `VideoWriter` does the writing (frame by frame, for callers that have no whole video).
    """
    path = Path(path)
    frames = _check_frames(frames)
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    wav, aac_rate = None, None
    if audio is not None:
        if not int(sample_rate) > 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        wav = _check_wav(audio)
        aac_rate = _aac_rate(int(sample_rate))
        wav = resample_audio(wav, int(sample_rate), aac_rate)
    with VideoWriter(path, fps, sample_rate=aac_rate, crf=crf) as writer:
        if wav is not None:
            writer.write_audio(wav)  # encoded frame by frame as the video reaches it
        for image in frames:
            writer.write_frame(image)
    return path


def write_audio(path: str | Path, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write float audio [N] or [N, C] as .wav/.flac/.ogg (soundfile) or .m4a/.mp3 (PyAV), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _SOUNDFILE_FORMATS and suffix not in _PYAV_AUDIO_FORMATS:
        known = ", ".join(sorted([*_SOUNDFILE_FORMATS, *_PYAV_AUDIO_FORMATS]))
        raise MediaError(path, f"unsupported audio format {path.suffix!r} (use one of {known})")
    if not int(sample_rate) > 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    sample_rate = int(sample_rate)
    wav = _check_wav(wav, max_channels=8 if suffix in _SOUNDFILE_FORMATS else 2)
    try:
        with atomic_path(path) as tmp:
            if suffix in _SOUNDFILE_FORMATS:
                fmt, subtype = _SOUNDFILE_FORMATS[suffix]
                sf.write(str(tmp), wav, sample_rate, format=fmt, subtype=subtype)
            else:
                fmt, codec = _PYAV_AUDIO_FORMATS[suffix]
                planar = wav[None, :] if wav.ndim == 1 else wav.T
                if codec == "aac":
                    rate = _aac_rate(sample_rate)
                    planar = np.stack([resample_audio(ch, sample_rate, rate) for ch in planar])
                    sample_rate = rate
                with av.open(str(tmp), "w", format=fmt) as container:
                    stream = _add_audio_stream(container, codec, sample_rate, planar.shape[0])
                    step = _AAC_FRAME if codec == "aac" else 1152
                    for start in range(0, planar.shape[1], step):
                        _encode_audio_chunk(
                            container, stream, planar[:, start : start + step], start, sample_rate
                        )
                    container.mux(stream.encode(None))
    except (av.FFmpegError, OSError, RuntimeError) as exc:
        raise MediaError(path, f"cannot write ({_reason(exc)})") from None
    return path


# ---------------------------------------------------------------------------------------------- images


def read_image(path: str | Path) -> np.ndarray:
    """Read any image PIL can open as uint8 RGB [H, W, 3], with EXIF orientation applied."""
    path = _check_file(path)
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                arr = np.asarray(img, dtype=np.float64)
                peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
                gray = np.clip(np.round(arr * 255.0 / peak), 0, 255).astype(np.uint8)
                return np.repeat(gray[..., None], 3, axis=2)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")  # drop alpha, keeping the stored colour
            return np.array(img.convert("RGB"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise MediaError(path, "not an image PIL can read") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise MediaError(path, f"not an image PIL can read ({_reason(exc)})") from None


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write a uint8 RGB [H, W, 3] (or gray [H, W]) image as PNG/JPEG (by suffix), atomically."""
    path = Path(path)
    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"image must be uint8 [H, W, 3] or [H, W], got {image.dtype} {list(image.shape)}")
    suffix = path.suffix.lower()
    formats = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
    if suffix not in formats:
        raise MediaError(path, f"unsupported image format {path.suffix!r} (use .png, .jpg or .jpeg)")
    options = {"quality": 95} if formats[suffix] == "JPEG" else {}
    try:
        with atomic_path(path) as tmp:
            Image.fromarray(image).save(tmp, format=formats[suffix], **options)
    except OSError as exc:
        raise MediaError(path, f"cannot write ({_reason(exc)})") from None
    return path
