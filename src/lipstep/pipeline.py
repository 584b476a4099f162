"""AvatarPipeline: a model directory in, talking-head video out.

A model directory (design.md §3; read and written by `lipstep.modeldir`, whose public names this
module re-exports) is what training writes and what `generate`, `eval` and `bench` take.

Generation: crop the portrait to the model's face size and encode it to the reference latent once, then
generate chunk by chunk (`frames` latents per chunk) as the audio arrives; each chunk sees
`motion_frames` latents of motion context (the reference for the first and every re-anchored chunk,
else the last latents of the previous one). Every chunk is one sampler run of `steps` steps with
multi-condition CFG (FADA Eq. 9; three condition patterns batched into one forward, so 3 NFE per step
unless both scales are 1, or one pass for a CFG-token student). Its latents are decoded at once.

There is one path for all of it, `AvatarStream`: audio pieces of any size in (`push`), frames out as
soon as a whole chunk's audio, with the audio windows' look-ahead, has arrived (`lipstep.audio.stream`),
and at the end (`finish`) the rest, the audio padded with silence. Its memory is flat: the chunk core
(`lipstep.samplers.ChunkSampler`) keeps only the motion context and its random generator, the features
only the audio the next windows read, and frames leave as they are made. `stream` iterates it,
`generate_video` writes an mp4 frame by frame with it (`lipstep generate`), `__call__` collects every
frame of one call into a `Generation`; all three give the same frames for the same seed, however the
audio is cut. Every frame carries a voice-activity flag (`lipstep.audio.vad`).

Runtimes: ``from_pretrained(..., runtime="onnx" | "onnx-int8")`` loads ONNX Runtime sessions in place of
the denoiser net, the codec's decoder and the log-mel spectrogram (`lipstep.runtime`), behind the same
calls, so all of the above is unchanged. Hybrid mode: `AvatarStream.push_latents` / `emit_latents` stop
before decoding and hand out the latents full mode would decode (`lipstep.hybrid` writes and renders them).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from lipstep.audio.stream import FeatureStream
from lipstep.audio.vad import VADConfig, VoiceActivity
from lipstep.data.faces import crop_portrait
from lipstep.data.features import frame_count
from lipstep.data.media import SAMPLE_RATE, VideoWriter, read_audio, read_image
from lipstep.diffusion.denoiser import Denoiser
from lipstep.errors import LipstepError
from lipstep.modeldir import (
    INFO_NAME,
    MAX_BLINKS_PER_SECOND,
    ModelInfo,
    bundled_models,
    check_eyes,
    default_model,
    describe_models,
    load_denoiser,
    load_eyes,
    load_model,
    read_info,
    resolve_model,
    save_denoiser,
    save_model,
)
from lipstep.nets.eyes import load_eye_net
from lipstep.runtime.onnx import RUNTIMES, check_runtime, load_onnx_model
from lipstep.samplers import ChunkSampler, SamplerInfo, decode_frames, net_device, sample_chunks

# ---------------------------------------------------------------------------------------------
# the pipeline


@dataclass
class Generation:
    """What one `AvatarPipeline` call produced."""

    frames: np.ndarray              # uint8 [N, S, S, 3]
    audio: np.ndarray               # float32 [L] mono at `sample_rate` (the driving audio)
    fps: float
    sample_rate: int
    nfe: int                        # network evaluations in total (all chunks)
    chunks: int
    steps: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds: crop_encode, audio, denoise, decode

    @property
    def seconds(self) -> float:
        return len(self.frames) / self.fps


@dataclass
class StreamFrame:
    """One frame of a stream, as soon as it is made."""

    index: int                      # frame number from the start of the stream
    time: float                     # seconds on the audio's clock at which the frame starts (index / fps)
    image: np.ndarray               # uint8 [S, S, 3]
    voice: bool                     # voice activity of the frame's audio (`lipstep.audio.vad`)
    level_db: float                 # the frame's audio energy over the background floor, dB


@dataclass
class StreamStats:
    """What a stream has made so far (its frames have already left)."""

    frames: int
    fps: float
    sample_rate: int
    nfe: int                        # network evaluations in total
    chunks: int
    steps: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds: crop_encode, audio (features, VAD),
    #   denoise, decode (+ mux from `generate_video`)

    @property
    def seconds(self) -> float:
        return self.frames / self.fps


class AvatarStream:
    """One streaming generation: `push` audio pieces, get the frames they complete; `finish` for the rest.

    Made by `AvatarPipeline.open_stream` (see the module docstring). A frame leaves once its whole chunk
    is generated, which needs the audio up to the chunk's last frame plus the audio windows' look-ahead
    (`lookahead_seconds`); `finish` pads the missing audio with silence, as a whole file is padded. One
    caller at a time: the chunk core carries state from chunk to chunk.
    """

    def __init__(self, pipe: AvatarPipeline, reference: Tensor, *, steps: int | None = None,
                 cfg_audio: float | None = None, cfg_ref: float | None = None, seed: int = 0,
                 vad: VADConfig | None = None, callback: Callable[..., None] | None = None,
                 on_chunk: Callable[[int, Tensor], None] | None = None, timings: dict | None = None,
                 preview_every: int = 0, blinks_per_second: float | None = None):
        info = pipe.info
        if not 0 <= preview_every <= info.frames:
            raise LipstepError(f"preview_every must be in 0..{info.frames} (frames per chunk), got {preview_every}")
        self.pipe, self.info, self.on_chunk = pipe, info, on_chunk
        layout = info.layout()
        if blinks_per_second is not None:
            layout = replace(layout, blinks_per_second=pipe.check_blink_rate(blinks_per_second))
        self.blinks_per_second = layout.blinks_per_second
        self.core = ChunkSampler(pipe.model_fn(), reference, sampler=info.sampler, layout=layout, steps=steps,
                                 cfg_audio=cfg_audio, cfg_ref=cfg_ref, seed=seed, callback=callback, eyes=pipe.eyes)
        self.features: FeatureStream = pipe.audio_encoder.stream(info.frames, info.fps, info.sample_rate)
        self.vad = VoiceActivity(vad, info.sample_rate, info.fps)
        self.activity: deque[tuple[bool, float]] = deque()  # voice activity of frames not yet generated
        self.timings = {"crop_encode": 0.0, **(timings or {}), "audio": 0.0, "denoise": 0.0, "decode": 0.0}
        self.emitted = 0
        self.finished = False
        self.preview_every = preview_every if self.features.can_preview else 0
        self.early = 0  # frames of the next chunk already sent from previews

    @property
    def lookahead_seconds(self) -> float | None:
        """Audio past a frame's end that must arrive before it can be made (None: the whole audio)."""
        lookahead = getattr(self.features, "lookahead", None)
        return lookahead() / self.info.sample_rate if lookahead else None

    @property
    def buffered(self) -> dict[str, int]:
        """What the stream holds now; none of it grows with the stream's length."""
        return {"audio_samples": self.features.buffered, "vad_samples": len(self.vad.tail),
                "pending_frames": len(self.activity)}

    def push(self, audio: np.ndarray) -> list[StreamFrame]:
        """Mono float32 audio at the model's sample rate, any length -> the frames it completes (maybe none)."""
        self._add(audio)
        return self._drain()

    def finish(self) -> list[StreamFrame]:
        """The end of the audio: the remaining frames (the last chunk padded with silence)."""
        return self._drain() if self._end() else []

    def push_latents(self, audio: np.ndarray) -> list[Tensor]:
        """As `push`, but each completed chunk's latents [n, C, h, w] instead of its frames: nothing is decoded
        (hybrid mode: the device denoises, the frames are rendered later or elsewhere, `lipstep decode`)."""
        self._add(audio)
        return [z for z, _ in self._chunks()]

    def finish_latents(self) -> list[Tensor]:
        """As `finish`, with latents (`push_latents`); the last chunk's are cut to the video's end."""
        return [z for z, _ in self._chunks()] if self._end() else []

    def _add(self, audio: np.ndarray) -> None:
        if self.finished:
            raise LipstepError("the stream has finished; open a new one")
        x = np.asarray(audio, dtype=np.float32).reshape(-1)
        if not np.isfinite(x).all():
            raise LipstepError("the audio contains NaN or infinite samples")
        if x.size == 0:
            return
        t0 = self.pipe.clock()
        self.activity.extend(self.vad.push(x))
        self.features.push(x)
        self.timings["audio"] += self.pipe.clock() - t0

    def _end(self) -> bool:
        """Mark the end of the audio; False when it was marked before."""
        if self.finished:
            return False
        self.finished = True
        t0 = self.pipe.clock()
        self.features.finish()
        self.activity.extend(self.vad.finish(self.features.n_frames))
        self.timings["audio"] += self.pipe.clock() - t0
        return True

    def stats(self) -> StreamStats:
        return StreamStats(frames=self.emitted, fps=self.info.fps, sample_rate=self.info.sample_rate,
                           nfe=self.core.nfe, chunks=self.core.chunks, steps=self.core.steps,
                           timings=dict(self.timings))

    def _chunks(self) -> Iterator[tuple[Tensor, list[tuple[bool, float]]]]:
        """Sample every chunk whose audio is complete: its latents [n, C, h, w] (n < frames only for the last one,
        cut to the video's end) and its frames' voice activity."""
        T, clock = self.info.frames, self.pipe.clock
        while self.features.ready():
            t0 = clock()
            audio = self.features.next_block()
            t1 = clock()
            k = self.core.chunks
            z = self.core.step(audio)
            t2 = clock()
            if self.on_chunk is not None:
                self.on_chunk(k, z)
            n = min(T, self.features.n_frames - k * T) if self.features.finished else T
            self.timings["audio"] += t1 - t0
            self.timings["denoise"] += t2 - t1
            self.emitted += n
            yield z[:n], [self.activity.popleft() for _ in range(n)]

    def _drain(self) -> list[StreamFrame]:
        """Generate every chunk whose audio is complete; decode and return its frames (those a preview has not
        sent already), then, with ``preview_every``, the frames of the next chunk a preview can show now."""
        out = []
        for z, activity in self._chunks():
            skip, self.early = self.early, 0
            t0 = self.pipe.clock()
            images = self.pipe.decode(z[skip:])
            self.timings["decode"] += self.pipe.clock() - t0
            first = self.emitted - len(z) + skip
            for i, (image, (voice, level)) in enumerate(zip(images, activity[skip:], strict=True)):
                out.append(StreamFrame(first + i, (first + i) / self.info.fps, image, voice, level))
        if self.preview_every and not self.finished:
            out += self._preview()
        return out

    def _preview(self) -> list[StreamFrame]:
        """Sample the next chunk now, the audio still to come read as silence, and send the frames whose own audio
        windows have all arrived, once ``preview_every`` of them are new (the stream's very first frame at once).
        The chunk is sampled again (same noise, same motion) at the next preview, and for good once all its audio
        is in: a frame leaves at most ``preview_every`` frames and one look-ahead after its audio instead of one
        chunk, for ``ceil(frames / preview_every)`` samplings of each chunk instead of one."""
        n = self.features.complete_frames()
        fresh = n - self.early
        if fresh <= 0 or (fresh < self.preview_every and self.emitted + self.early > 0):
            return []
        clock = self.pipe.clock
        t0 = clock()
        audio = self.features.peek()
        t1 = clock()
        z = self.core.trial(audio)
        t2 = clock()
        images = self.pipe.decode(z[self.early:n])
        self.timings["audio"] += t1 - t0
        self.timings["denoise"] += t2 - t1
        self.timings["decode"] += clock() - t2
        first = self.emitted + self.early
        out = [StreamFrame(first + i, (first + i) / self.info.fps, image, *self.activity[self.early + i])
               for i, image in enumerate(images)]
        self.early = n
        return out


class AvatarPipeline:
    """Codec + audio encoder + denoiser + schedule + default sampler (see the module docstring).

    ``runtime`` names what runs the networks: ``torch``, or ``onnx`` / ``onnx-int8`` (ONNX Runtime sessions
    standing in for the denoiser, the codec's decoder and the log-mel front end, `lipstep.runtime.onnx`).
    ``eyes`` is the model's eye net (``MODEL/eyes/``, `lipstep.nets.eyes.EyeNet`, always in PyTorch), which draws
    the blinks of ``info.blinks_per_second`` on the generated latents; None without one.
    """

    def __init__(self, info: ModelInfo, codec, audio_encoder, denoiser, *, path: Path | None = None,
                 runtime: str = "torch", eyes=None):
        self.info, self.codec, self.audio_encoder, self.denoiser = info, codec, audio_encoder, denoiser
        self.eyes = eyes
        self.schedule = info.make_schedule()
        self.path, self.runtime = path, check_runtime(runtime)

    # --- construction ----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
                        runtime: str = "torch", threads: int | None = None) -> AvatarPipeline:
        """Load a model directory or a bundled model by name (None = the fastest bundled one).

        ``runtime`` ``onnx`` / ``onnx-int8`` needs the directory's ONNX export (``lipstep export --onnx``) and
        runs on the CPU with ``threads`` intra-op threads (default: torch's thread count).
        """
        if check_runtime(runtime) == "torch":
            root, info, codec, audio, net = load_model(model, device=device)
        elif torch.device(device).type != "cpu":
            raise LipstepError(f"--runtime {runtime} runs on the CPU (onnxruntime's CPUExecutionProvider); "
                               f"use --device cpu or --runtime torch")
        else:
            root, info, codec, audio, net = load_onnx_model(model, runtime, threads=threads)
        eyes = load_eyes(root, info, codec, net.cfg, device=device)
        return cls(info, codec, audio, net, path=root, runtime=runtime, eyes=eyes)

    def attach_eyes(self, directory: str | os.PathLike, blinks_per_second: float | None = None) -> None:
        """Draw blinks with the eye net of ``directory`` (`lipstep train eyes`) at ``blinks_per_second`` (default:
        the model's rate if it has one, else the rate of the eye net's training labels, from its ``train.json``).
        `save_pretrained` keeps it."""
        directory = Path(directory)
        eyes = check_eyes(directory, load_eye_net(directory), self.info, self.codec)
        try:
            record = json.loads((directory / "train.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {}
        record = record if isinstance(record, dict) else {}
        if blinks_per_second is None and self.info.blinks_per_second == 0:
            try:
                blinks_per_second = float(record["blinks_per_second"])
            except (KeyError, TypeError, ValueError):
                raise LipstepError(f"{directory}: no blink rate recorded in train.json; give one "
                                   "(lipstep export --blink-rate)") from None
        self.eyes = eyes.to("cpu" if self.runtime != "torch" else self.device)
        if blinks_per_second is not None:
            self.info.blinks_per_second = float(blinks_per_second)
        # provenance: where the eye net came from and what its training measured
        self.info.trained["eyes"] = {"from": str(directory.resolve()), "parameters": eyes.num_parameters(),
                                     **{k: record[k] for k in ("data", "pairs", "blinks_per_second", "final_loss",
                                                               "heldout", "seconds") if k in record}}
        if isinstance(record.get("config"), dict) and "steps" in record["config"]:
            self.info.trained["eyes"]["steps"] = record["config"]["steps"]

    def check_blink_rate(self, blinks_per_second: float) -> float:
        """A blink rate a generation may ask for (0 = none), or a one-line `LipstepError`: 0..5 per second, and
        something in the model to draw them with (its eye net, or a denoiser that reads blinks)."""
        rate = float(blinks_per_second)
        if not (math.isfinite(rate) and 0 <= rate <= MAX_BLINKS_PER_SECOND):
            raise LipstepError(f"the blink rate must be in 0..{MAX_BLINKS_PER_SECOND:g} blinks per second, got "
                               f"{blinks_per_second}")
        if rate > 0 and self.eyes is None and not getattr(self.denoiser.cfg, "blink", False):
            raise LipstepError("this model has nothing to draw blinks with (no eye net, and its denoiser does not "
                               "read blinks); attach one with lipstep export --eyes")
        return rate

    def save_pretrained(self, out: str | os.PathLike, *, half: bool = False) -> Path:
        if self.runtime != "torch":
            raise LipstepError(f"a pipeline on the {self.runtime} runtime cannot be saved; save the torch model")
        return save_model(out, self.info, self.codec, self.audio_encoder, self.denoiser, half=half, eyes=self.eyes)

    @property
    def device(self) -> torch.device:
        return net_device(self.denoiser)

    def clock(self) -> float:
        """`time.perf_counter()` after queued CUDA work has finished (async launches would shift timings)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    # --- building blocks (also used by validation, eval and bench) -------------------------------

    def model_fn(self) -> Denoiser:
        """The denoiser as ``(x_t, t in [0, 1], cond) -> native prediction`` (`Denoiser`)."""
        return Denoiser(self.denoiser, self.schedule)

    def crop(self, image: np.ndarray, detector: str = "auto", source: str = "the portrait") -> np.ndarray:
        """Face-centred crop of a portrait at the model's size: uint8 [S, S, 3] (`source`: its name)."""
        image = np.asarray(image)
        s = self.info.image_size
        if image.shape[:2] == (s, s) and detector == "auto":
            return image.astype(np.uint8)  # already a face crop of the right size
        return crop_portrait(image, s, detector, source=source)

    def encode_image(self, crop: np.ndarray) -> Tensor:
        """uint8 [S, S, 3] -> reference latent [1, C, h, w]."""
        x = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        with torch.no_grad():
            return self.codec.encode(x.to(self.device)).float()

    def n_frames(self, n_samples: int) -> int:
        return frame_count(n_samples, self.info.sample_rate, self.info.fps)

    @torch.no_grad()
    def generate_latents(self, reference: Tensor, audio: Tensor, *, steps: int | None = None,
                         cfg_audio: float | None = None, cfg_ref: float | None = None, seed: int = 0,
                         n_frames: int | None = None, progress: bool = False, visemes: Tensor | None = None,
                         on_chunk: Callable[[int, Tensor], None] | None = None) -> tuple[Tensor, int]:
        """Chunked sampling: reference [1, C, h, w], audio windows [N', K, D] -> (latents [N, C, h, w], NFE).

        `lipstep.samplers.sample_chunks` with this model's sampler and chunk layout: ``audio`` is padded to
        whole chunks, ``n_frames`` (default N') latents are returned, ``on_chunk(k, latents [frames, C, h, w])``
        runs as soon as chunk k is sampled (streaming consumers, `lipstep bench`'s first-chunk latency).
        """
        return sample_chunks(self.model_fn(), reference, audio, sampler=self.info.sampler, layout=self.info.layout(),
                             steps=steps, cfg_audio=cfg_audio, cfg_ref=cfg_ref, seed=seed, n_frames=n_frames,
                             progress=progress, visemes=visemes, on_chunk=on_chunk, eyes=self.eyes)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> np.ndarray:
        """Latents [N, C, h, w] -> uint8 frames [N, S, S, 3]."""
        return decode_frames(self.codec, latents, self.device)

    # --- the whole thing ------------------------------------------------------------------------

    def open_stream(self, image: np.ndarray, *, steps: int | None = None, cfg_audio: float | None = None,
                    cfg_ref: float | None = None, seed: int = 0, detector: str = "auto",
                    source: str = "the portrait", vad: VADConfig | None = None,
                    callback: Callable[..., None] | None = None,
                    on_chunk: Callable[[int, Tensor], None] | None = None, preview_every: int = 0,
                    blinks_per_second: float | None = None) -> AvatarStream:
        """Prepare a portrait once (crop, encode the reference) and return its `AvatarStream`.

        ``preview_every`` 0 (default): each chunk is sampled once, when its audio and the look-ahead are in, and its
        frames leave together (the same frames however the audio is cut). k > 0: frames also leave from previews of
        the chunk still arriving, k at a time (`AvatarStream._preview`): a frame at most k frames and one
        look-ahead after its audio instead of a whole chunk, the stream's first frame after 106 ms of audio
        instead of 386 ms, for ceil(frames / k) samplings per chunk; the frames then depend on how the audio was
        cut. Mel audio encoders only (others ignore it).

        ``callback`` runs after every sampler step (progress bars); ``on_chunk(k, latents [frames, C, h, w])``
        as soon as chunk k is sampled, before it is decoded (`lipstep bench`'s first-chunk latency).
        ``blinks_per_second`` overrides the model's blink rate for this stream (0 = no blinks; `check_blink_rate`).
        """
        t0 = self.clock()
        reference = self.encode_image(self.crop(image, detector, source))
        return AvatarStream(self, reference, steps=steps, cfg_audio=cfg_audio, cfg_ref=cfg_ref, seed=seed, vad=vad,
                            callback=callback, on_chunk=on_chunk, timings={"crop_encode": self.clock() - t0},
                            preview_every=preview_every, blinks_per_second=blinks_per_second)

    def warmup(self) -> float:
        """Generate and drop one chunk (a grey portrait, silence) so that the first real frame does not pay the
        one-time costs of a fresh process (kernel selection, allocator growth); returns its seconds. The server
        calls it before it listens; `lipstep soak` before it starts the clock."""
        t0 = time.perf_counter()
        size = self.info.image_size
        stream = self.open_stream(np.full((size, size, 3), 128, np.uint8), detector="none", source="the warm-up")
        lookahead = stream.lookahead_seconds
        if lookahead is None:
            stream.push(np.zeros(round(self.info.frames / self.info.fps * self.info.sample_rate), np.float32))
            stream.finish()
        else:
            stream.push(np.zeros(math.ceil((self.info.frames / self.info.fps + lookahead) * self.info.sample_rate),
                                 np.float32))
        return time.perf_counter() - t0

    def stream(self, image: np.ndarray, audio_chunks: Iterable[np.ndarray], **options) -> Iterator[StreamFrame]:
        """Portrait + audio pieces of any size (mono float32 at the model's sample rate) -> frames as they are made.

        The frames equal those of `__call__` on the concatenated audio with the same options (`open_stream`'s).
        """
        stream = self.open_stream(image, **options)
        for chunk in audio_chunks:
            yield from stream.push(chunk)
        yield from stream.finish()

    def _checked_audio(self, audio: np.ndarray) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size == 0:
            raise LipstepError("the audio is empty")
        if not np.isfinite(audio).all():
            raise LipstepError("the audio contains NaN or infinite samples")
        return audio

    def _progress(self, n_samples: int, steps: int | None, progress: bool) -> tqdm:
        chunks = math.ceil(self.n_frames(n_samples) / self.info.frames)
        return tqdm(total=chunks * (steps or self.info.sampler.steps), desc="generate", unit="step",
                    disable=not progress, dynamic_ncols=True)

    def __call__(self, image: np.ndarray, audio: np.ndarray, *, steps: int | None = None,
                 cfg_audio: float | None = None, cfg_ref: float | None = None, seed: int = 0,
                 detector: str = "auto", progress: bool = False, source: str = "the portrait",
                 on_chunk: Callable[[int, Tensor], None] | None = None,
                 blinks_per_second: float | None = None) -> Generation:
        """Portrait uint8 [H, W, 3] + mono float32 audio at the model's sample rate -> `Generation`.

        The stream path with all audio in one piece. ``timings`` are seconds per stage (CUDA-synchronised);
        ``on_chunk`` as in `open_stream`; ``source`` names the portrait in messages (e.g. its file).
        """
        audio = self._checked_audio(audio)
        with self._progress(len(audio), steps, progress) as bar:
            stream = self.open_stream(image, steps=steps, cfg_audio=cfg_audio, cfg_ref=cfg_ref, seed=seed,
                                      detector=detector, source=source, callback=lambda *_: bar.update(1),
                                      on_chunk=on_chunk, blinks_per_second=blinks_per_second)
            frames = stream.push(audio) + stream.finish()
        st = stream.stats()
        return Generation(frames=np.stack([f.image for f in frames]), audio=audio, fps=st.fps,
                          sample_rate=st.sample_rate, nfe=st.nfe, chunks=st.chunks, steps=st.steps,
                          timings=st.timings)

    def generate_video(self, image: np.ndarray, audio: np.ndarray, out_path: str | os.PathLike, *,
                       steps: int | None = None, cfg_audio: float | None = None, cfg_ref: float | None = None,
                       seed: int = 0, detector: str = "auto", progress: bool = False, source: str = "the portrait",
                       piece_seconds: float = 1.0, blinks_per_second: float | None = None) -> StreamStats:
        """Portrait + audio -> a video file with the audio muxed in, written frame by frame (atomically).

        The audio goes through the stream in pieces of ``piece_seconds`` and every frame goes to the encoder
        as it is made, so no video is held in memory, however long the audio (only the audio itself is).
        The frames are those of `__call__`. ``timings`` gain ``mux``: seconds spent encoding the file.
        """
        audio = self._checked_audio(audio)
        step = max(1, int(piece_seconds * self.info.sample_rate))
        mux = 0.0

        def write(writer: VideoWriter, piece: np.ndarray, frames: list[StreamFrame]) -> None:
            nonlocal mux
            t0 = time.perf_counter()
            writer.write_audio(piece)
            for frame in frames:
                writer.write_frame(frame.image)
            mux += time.perf_counter() - t0

        with self._progress(len(audio), steps, progress) as bar:
            stream = self.open_stream(image, steps=steps, cfg_audio=cfg_audio, cfg_ref=cfg_ref, seed=seed,
                                      detector=detector, source=source, callback=lambda *_: bar.update(1),
                                      blinks_per_second=blinks_per_second)
            with VideoWriter(out_path, self.info.fps, sample_rate=self.info.sample_rate) as writer:
                for i in range(0, len(audio), step):
                    write(writer, audio[i:i + step], stream.push(audio[i:i + step]))
                write(writer, audio[:0], stream.finish())
                t0 = time.perf_counter()
                writer.close()
                mux += time.perf_counter() - t0
        stats = stream.stats()
        stats.timings["mux"] = mux
        return stats

    def emit_latents(self, image: np.ndarray, audio: np.ndarray, *, steps: int | None = None,
                     cfg_audio: float | None = None, cfg_ref: float | None = None, seed: int = 0,
                     detector: str = "auto", progress: bool = False, source: str = "the portrait",
                     piece_seconds: float = 1.0, blinks_per_second: float | None = None) -> tuple[Tensor, StreamStats]:
        """Portrait + audio -> (the latents [N, C, h, w] that `generate_video` decodes, stream stats); nothing is
        decoded (hybrid mode, `lipstep.hybrid`). The audio goes through the stream in pieces as there."""
        audio = self._checked_audio(audio)
        step = max(1, int(piece_seconds * self.info.sample_rate))
        with self._progress(len(audio), steps, progress) as bar:
            stream = self.open_stream(image, steps=steps, cfg_audio=cfg_audio, cfg_ref=cfg_ref, seed=seed,
                                      detector=detector, source=source, callback=lambda *_: bar.update(1),
                                      blinks_per_second=blinks_per_second)
            chunks = [z for i in range(0, len(audio), step) for z in stream.push_latents(audio[i:i + step])]
            chunks += stream.finish_latents()
        return torch.cat(chunks), stream.stats()


def load_inputs(model, image_path, audio_path, *, max_seconds: float | None = None, device: str = "cpu",
                runtime: str = "torch", threads: int | None = None) -> tuple[AvatarPipeline, np.ndarray, np.ndarray]:
    """Read and check a portrait and speech file and load the model: (pipeline, image, audio at its rate).

    Bad input fails before the model loads where it can; ``max_seconds`` (None = no limit) refuses longer audio.
    """
    image = read_image(image_path)          # MediaError (a LipstepError) names the file and the problem
    audio = read_audio(audio_path, SAMPLE_RATE, max_seconds=max_seconds)  # bad audio fails before loading
    pipe = AvatarPipeline.from_pretrained(model, device=device, runtime=runtime, threads=threads)
    if pipe.info.sample_rate != SAMPLE_RATE:
        audio = read_audio(audio_path, pipe.info.sample_rate, max_seconds=max_seconds)
    if len(audio) < pipe.info.sample_rate / pipe.info.fps:
        ms = len(audio) / pipe.info.sample_rate * 1000
        raise LipstepError(f"{audio_path}: {ms:.1f} ms of audio is shorter than one video frame")
    if max_seconds is not None and len(audio) > max_seconds * pipe.info.sample_rate:
        raise LipstepError(f"{audio_path}: {len(audio) / pipe.info.sample_rate:.0f} s of audio is longer than "
                           f"--max-seconds {max_seconds:g}")
    return pipe, image, audio


def generate_file(model, image_path, audio_path, out_path, *, steps=None, cfg_audio=None, cfg_ref=None,
                  seed: int = 0, detector: str = "auto", max_seconds: float | None = None, progress: bool = True,
                  device: str = "cpu", runtime: str = "torch", threads: int | None = None,
                  blinks_per_second: float | None = None) -> tuple[Path, StreamStats, float]:
    """`lipstep generate`: read the inputs, generate, write the video with the original audio frame by frame.

    ``max_seconds`` (None = no limit) refuses longer audio before the model loads. Memory does not grow
    with the video's length, only with the audio's (64 KB a second at 16 kHz). ``runtime`` / ``threads`` as in
    `AvatarPipeline.from_pretrained`.
    """
    out_path = Path(out_path)
    if out_path.suffix.lower() not in (".mp4", ".mkv", ".mov"):
        raise LipstepError(f"--out {out_path}: use a .mp4, .mkv or .mov file name")
    pipe, image, audio = load_inputs(model, image_path, audio_path, max_seconds=max_seconds, device=device,
                                     runtime=runtime, threads=threads)
    if blinks_per_second is not None:
        pipe.check_blink_rate(blinks_per_second)  # before any work
    t0 = time.perf_counter()
    stats = pipe.generate_video(image, audio, out_path, steps=steps, cfg_audio=cfg_audio, cfg_ref=cfg_ref, seed=seed,
                                detector=detector, progress=progress, source=str(image_path),
                                blinks_per_second=blinks_per_second)
    return out_path, stats, time.perf_counter() - t0


__all__ = [
    "INFO_NAME",
    "RUNTIMES",
    "AvatarPipeline",
    "AvatarStream",
    "Generation",
    "ModelInfo",
    "SamplerInfo",
    "StreamFrame",
    "StreamStats",
    "VADConfig",
    "bundled_models",
    "default_model",
    "describe_models",
    "generate_file",
    "load_denoiser",
    "load_inputs",
    "read_info",
    "resolve_model",
    "save_denoiser",
    "save_model",
]
