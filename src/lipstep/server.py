"""`lipstep serve`: a talking avatar over HTTP and WebSocket (FastAPI + uvicorn).

The model is loaded once, when the app is made (`create_app`). Every generation runs in a worker thread
(``workers`` of them), so the event loop keeps answering /health, uploads and the other sessions while a
chunk is generated. Endpoints (OpenAPI and a try-it page at /docs):

- ``GET /``: the web page (``lipstep/web/``: one HTML page, its script and style, no build step, nothing fetched
  from elsewhere), a client of the endpoints below.
- ``GET /health``: the model, the limits and the sessions in use.
- ``GET /v1/portraits``: the server's example portraits (unseen synthetic identities), ``{"portraits": [{"id",
  "size", "kind"}]}``; uploaded portraits are not listed (the server has no users to list them for).
- ``POST /v1/portraits``: multipart ``image`` -> ``{"id", "size"}``, a portrait decoded and cropped once,
  for streams to name instead of sending the image again. ``GET /v1/portraits/{id}``: that crop as PNG.
- ``POST /v1/generate``: multipart ``image`` + ``audio`` (+ form fields ``steps``, ``cfg_audio``,
  ``cfg_ref``, ``seed``, ``detector``) -> the mp4 (video/mp4), made through the streaming path.
- ``WS /v1/stream``: a JSON start message, then binary PCM chunks, then ``{"type": "end"}``; the server
  answers ``{"type": "ready", ...}``, then one binary message per frame as soon as it is made, then
  ``{"type": "end", ...}``. A frame message is ``uint32 little-endian n | n bytes of JSON header
  {"type": "frame", "index", "time", "voice", "level_db", "format"} | JPEG or PNG bytes`` (one message per
  frame, so a browser reads it with one DataView and one Blob). README "Serving" has the full protocol.

Sessions go created (connected, no start message yet) -> streaming (start accepted) -> closed (end, error,
idle timeout or disconnect); each change is one log line. At most ``max_sessions`` generations run at once,
streams and /v1/generate requests together; more get 429. Every request the server cannot serve gets a 4xx
with ``{"error": "<one line>"}``; a stream gets ``{"type": "error", "status", "message"}`` and is closed with
code 4000 + status. A bug gets 500 with a one-line message; its traceback goes to the log, never to the client.

Logs are one JSON object per line on stderr (``event``: request, session, server). The server binds
127.0.0.1 by default: it has no authentication, so exposing it (``--host 0.0.0.0``) is the operator's call.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import io
import json
import logging
import re
import socket
import struct
import tempfile
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, File, Form, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from lipstep import __version__
from lipstep.checks import MAX_STEPS, MAX_THREADS
from lipstep.config import SEED_MAX, check, from_dict
from lipstep.data.examples import example_faces
from lipstep.data.faces import DETECTORS
from lipstep.data.media import read_audio, read_image
from lipstep.diffusion.guidance import check_scale
from lipstep.errors import LipstepError, MediaError
from lipstep.pipeline import AvatarPipeline, AvatarStream, StreamFrame

log = logging.getLogger("lipstep.serve")
WEB = Path(__file__).resolve().parent / "web"  # the page's files (package data)

# ---------------------------------------------------------------------------------------------
# configuration


@dataclass
class ServeConfig:
    model: str | None = None            # model directory or bundled name; None = the fastest bundled model
    device: str = "cpu"                 # torch device of the model
    host: str = "127.0.0.1"             # bind address: loopback only unless the operator opens it (no auth)
    port: int = 8000
    workers: int = 2                    # generation threads (chunks of different sessions run side by side)
    threads: int = 0                    # torch CPU threads for the process; 0 = torch's default
    max_sessions: int = 4               # generations at once, streams and /v1/generate together; more get 429
    max_upload_mb: float = 20.0         # largest request body, and largest WebSocket message
    max_audio_seconds: float = 600.0    # longest audio of one /v1/generate request (413 beyond)
    max_stream_seconds: float = 3600.0  # longest audio of one stream (413 beyond; the stream's memory is flat)
    idle_timeout_s: float = 30.0        # a stream that sends nothing for this long is closed (408)
    max_backlog_s: float = 30.0         # a stream's audio received but not yet generated; more is closed (429)
    ws_ping_s: float = 20.0             # WebSocket keepalive: a ping every this many s, the pong awaited as long
    max_portraits: int = 64             # uploaded portraits kept; the oldest is forgotten first
    example_portraits: int = 4          # example portraits (unseen synthetic identities) at GET /v1/portraits
    jpeg_quality: int = 90              # frames sent as JPEG
    max_steps: int = 100                # most sampler steps a request may ask for (the teacher's default is 25)
    preview_every: int = 0              # streams that do not ask: 0 = frames a chunk at a time; k = also k at a time
    #   from previews of the arriving chunk (lower latency, more compute; `AvatarPipeline.open_stream`)

    def validate(self) -> None:
        check(1 <= self.port <= 65535, f"port must be in 1..65535, got {self.port}")
        check(self.workers >= 1, f"workers must be >= 1, got {self.workers}")
        check(0 <= self.threads <= MAX_THREADS, f"threads must be in 0..{MAX_THREADS}, got {self.threads}")
        check(self.max_sessions >= 1, f"max_sessions must be >= 1, got {self.max_sessions}")
        check(self.max_upload_mb > 0, f"max_upload_mb must be > 0, got {self.max_upload_mb}")
        check(self.max_audio_seconds > 0, f"max_audio_seconds must be > 0, got {self.max_audio_seconds}")
        check(self.max_stream_seconds > 0, f"max_stream_seconds must be > 0, got {self.max_stream_seconds}")
        check(self.idle_timeout_s > 0, f"idle_timeout_s must be > 0, got {self.idle_timeout_s}")
        check(self.max_backlog_s > 0, f"max_backlog_s must be > 0, got {self.max_backlog_s}")
        check(self.ws_ping_s > 0, f"ws_ping_s must be > 0, got {self.ws_ping_s}")
        check(self.max_portraits >= 1, f"max_portraits must be >= 1, got {self.max_portraits}")
        check(0 <= self.example_portraits <= 16, f"example_portraits must be in 0..16, got {self.example_portraits}")
        check(1 <= self.jpeg_quality <= 100, f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        check(1 <= self.max_steps <= MAX_STEPS, f"max_steps must be in 1..{MAX_STEPS}, got {self.max_steps}")
        check(self.preview_every >= 0, f"preview_every must be >= 0, got {self.preview_every}")

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


@dataclass
class StreamStart:
    """The first message of a stream (JSON; unknown keys are errors)."""

    type: Literal["start"] = "start"
    portrait: str | None = None         # the portrait image file, base64
    portrait_id: str | None = None      # or the id POST /v1/portraits gave
    pcm: Literal["f32le", "s16le"] = "f32le"  # the binary chunks: float32 or int16, little-endian, mono
    sample_rate: int = 16000            # must be the model's (the server does not resample: cut pieces click)
    format: Literal["jpeg", "png"] = "jpeg"   # how frames are sent
    steps: int | None = None            # sampler steps per chunk; None = the model's
    cfg_audio: float | None = None      # guidance scales; None = the model's
    cfg_ref: float | None = None
    seed: int = 0
    detector: str = "auto"              # face detector for the portrait crop
    preview_every: int | None = None    # 0: frames a chunk at a time; k: also k at a time from previews (lower
    #   latency, more compute); None = the server's setting
    blink_rate: float | None = None     # blinks per second (0 = none); None = the model's

    def validate(self) -> None:
        check((self.portrait is None) != (self.portrait_id is None), "give exactly one of portrait and portrait_id")


class ClientError(Exception):
    """A request the server will not serve: an HTTP status (4xx) and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, " ".join(str(message).split())


# ---------------------------------------------------------------------------------------------
# logs, frames, inputs


def log_event(event: str, **fields) -> None:
    """One JSON line: time, event and its fields."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    log.info(json.dumps({"time": stamp, "event": event, **fields}, default=str))


def encode_image(image: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(image).save(buf, format="PNG")
    else:
        Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def frame_message(frame: StreamFrame, fmt: str, quality: int = 90) -> bytes:
    """One frame as a WebSocket message: uint32 LE header length, JSON header, image bytes."""
    header = json.dumps({"type": "frame", "index": frame.index, "time": round(frame.time, 6), "voice": frame.voice,
                         "level_db": round(frame.level_db, 2), "format": fmt}).encode()
    return struct.pack("<I", len(header)) + header + encode_image(frame.image, fmt, quality)


def decode_pcm(data: bytes, pcm: str) -> np.ndarray:
    """A binary chunk -> mono float32 samples."""
    width = 4 if pcm == "f32le" else 2
    if len(data) % width:
        raise ClientError(400, f"a {pcm} chunk must be a whole number of {width}-byte samples, got {len(data)} bytes")
    if pcm == "f32le":
        x = np.frombuffer(data, "<f4").astype(np.float32)
        if not np.isfinite(x).all():
            raise ClientError(400, "the audio contains NaN or infinite samples")
        return x
    return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0


def _decode_file(data: bytes, name: str, what: str, reader):
    """Decode uploaded bytes with a path-based reader; its `MediaError` names the upload, not a temp file."""
    if not data:
        raise ClientError(400, f"{what}: the file is empty")
    suffix = Path(name or "x").suffix.lower()
    suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""  # a format hint for the decoder, no more
    with tempfile.TemporaryDirectory(prefix="lipstep-serve-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            return reader(path)
        except MediaError as e:
            status = 413 if e.problem.startswith("media is") else 400
            raise ClientError(status, f"{what}: {e.problem}") from None


def _validation_message(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one line: the first field and what is wrong with it."""
    errors = exc.errors()
    if not errors:
        return "bad request"
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "form"))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where or 'request'}: {first.get('msg', 'invalid')}{more}"


# ---------------------------------------------------------------------------------------------
# sessions and portraits


@dataclass
class Session:
    """One WebSocket stream: created -> streaming -> closed."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: str = "created"
    started: float = field(default_factory=time.monotonic)
    samples: int = 0
    frames: int = 0
    pending: int = 0                    # audio samples received and not yet generated (the stream's backlog)
    error: Exception | None = None      # what ended the stream while a chunk was generated (from the reader)
    reason: str = "end"

    def move(self, state: str, **fields) -> None:
        self.state = state
        log_event("session", session=self.id, state=state, **fields)


class Portraits:
    """Portraits (cropped uint8 [S, S, 3]) by id: the examples, kept, and the uploads, the oldest forgotten first."""

    def __init__(self, limit: int, examples: list[np.ndarray] = ()):
        self.limit, self.items = limit, OrderedDict()
        self.examples = {f"example-{i + 1}": image for i, image in enumerate(examples)}

    def add(self, image: np.ndarray) -> str:
        pid = uuid.uuid4().hex[:16]
        self.items[pid] = image
        while len(self.items) > self.limit:
            self.items.popitem(last=False)
        return pid

    def get(self, pid: str) -> np.ndarray:
        if pid in self.examples:
            return self.examples[pid]
        if pid not in self.items:
            raise ClientError(404, f"unknown portrait_id '{pid[:40]}'; upload the portrait with POST /v1/portraits")
        self.items.move_to_end(pid)
        return self.items[pid]


# ---------------------------------------------------------------------------------------------
# the server


class AvatarServer:
    """The state behind the app: the model, the worker threads, the sessions, the portraits."""

    def __init__(self, cfg: ServeConfig, pipe: AvatarPipeline):
        self.cfg, self.pipe = cfg, pipe
        self.pool: ThreadPoolExecutor | None = None
        self.active: set[str] = set()       # ids of running generations (streams and requests)
        self.warmup_s = 0.0                 # seconds of the warm-up chunk run before serving
        self.portraits = Portraits(cfg.max_portraits, example_faces(cfg.example_portraits, pipe.info.image_size))

    async def run(self, fn, *args, **kwargs):
        """`fn` in a worker thread; a `LipstepError` there is the client's (400)."""
        if self.pool is None:
            self.pool = ThreadPoolExecutor(self.cfg.workers, thread_name_prefix="lipstep-gen")
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, partial(fn, *args, **kwargs))
        except LipstepError as e:
            raise ClientError(400, str(e)) from None

    def shutdown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None

    @contextlib.contextmanager
    def slot(self, sid: str):
        """One of the `max_sessions` generation slots, or 429."""
        if len(self.active) >= self.cfg.max_sessions:
            raise ClientError(429, f"the server is busy ({self.cfg.max_sessions} generations running); try again later")
        self.active.add(sid)
        try:
            yield
        finally:
            self.active.discard(sid)

    def health(self) -> dict:
        info, cfg = self.pipe.info, self.cfg
        return {"status": "ok", "version": __version__, "model": self.pipe.path.name if self.pipe.path else None,
                "kind": info.kind, "recipe": info.recipe, "image_size": info.image_size, "fps": info.fps,
                "sample_rate": info.sample_rate, "chunk_frames": info.frames, "sessions": len(self.active),
                "limits": {"max_sessions": cfg.max_sessions, "max_upload_mb": cfg.max_upload_mb,
                           "max_audio_seconds": cfg.max_audio_seconds, "max_stream_seconds": cfg.max_stream_seconds,
                           "idle_timeout_s": cfg.idle_timeout_s, "max_backlog_s": cfg.max_backlog_s},
                "preview_every": cfg.preview_every}

    # --- HTTP -----------------------------------------------------------------------------------

    def _crop(self, data: bytes, name: str, detector: str) -> np.ndarray:
        image = _decode_file(data, name, "image", read_image)
        return self.pipe.crop(image, detector, source="the image")

    def _generate(self, image: bytes, image_name: str, audio: bytes, audio_name: str, **options) -> tuple[bytes, dict]:
        """Decode the uploads, generate through the stream path into a temporary mp4, return its bytes."""
        info = self.pipe.info
        portrait = _decode_file(image, image_name, "image", read_image)
        reader = partial(read_audio, sample_rate=info.sample_rate, max_seconds=self.cfg.max_audio_seconds)
        wav = _decode_file(audio, audio_name, "audio", reader)
        if len(wav) > self.cfg.max_audio_seconds * info.sample_rate:
            raise ClientError(413, f"audio: {len(wav) / info.sample_rate:.1f} s is over the limit of "
                                   f"{self.cfg.max_audio_seconds:g} s")
        if len(wav) < info.sample_rate / info.fps:
            raise ClientError(400, "audio: shorter than one video frame")
        with tempfile.TemporaryDirectory(prefix="lipstep-serve-") as tmp:
            out = Path(tmp) / "talk.mp4"
            stats = self.pipe.generate_video(portrait, wav, out, source="the image", **options)
            return out.read_bytes(), {"frames": stats.frames, "nfe": stats.nfe, "chunks": stats.chunks}

    async def generate(self, image: UploadFile, audio: UploadFile, steps: int | None, cfg_audio: float | None,
                       cfg_ref: float | None, seed: int, detector: str, blink_rate: float | None = None) -> Response:
        check_settings(self.cfg, steps, cfg_audio, cfg_ref, seed, detector)
        self.check_blink_rate(blink_rate)
        rid = "gen-" + uuid.uuid4().hex[:8]
        with self.slot(rid):
            data, stats = await self.run(self._generate, await image.read(), image.filename, await audio.read(),
                                         audio.filename, steps=steps, cfg_audio=cfg_audio, cfg_ref=cfg_ref,
                                         seed=seed, detector=detector, blinks_per_second=blink_rate)
        headers = {"X-Lipstep-Frames": str(stats["frames"]), "X-Lipstep-NFE": str(stats["nfe"])}
        return Response(content=data, media_type="video/mp4", headers=headers)

    def check_blink_rate(self, rate: float | None) -> None:
        """A blink rate the model can draw (`AvatarPipeline.check_blink_rate`), or 400."""
        if rate is not None:
            try:
                self.pipe.check_blink_rate(rate)
            except LipstepError as e:
                raise ClientError(400, str(e)) from None

    async def add_portrait(self, image: UploadFile, detector: str) -> dict:
        check_settings(self.cfg, None, None, None, 0, detector)
        crop = await self.run(self._crop, await image.read(), image.filename, detector)
        return {"id": self.portraits.add(crop), "size": int(crop.shape[0])}

    def list_portraits(self) -> dict:
        return {"portraits": [{"id": pid, "size": int(image.shape[0]), "kind": "example"}
                              for pid, image in self.portraits.examples.items()]}

    def portrait_png(self, pid: str) -> Response:
        return Response(encode_image(self.portraits.get(pid), "png"), media_type="image/png",
                        headers={"Cache-Control": "no-store"})

    # --- WebSocket ------------------------------------------------------------------------------

    async def stream(self, ws: WebSocket) -> None:
        """One streaming session, from accept to close (see the module docstring)."""
        await ws.accept()
        session = Session()
        session.move("created", client=f"{ws.client.host}:{ws.client.port}" if ws.client else None)
        try:
            with self.slot(session.id):
                await self._serve_stream(ws, session)
        except ClientError as e:
            session.reason = f"{e.status}: {e.message}"
            await _refuse(ws, e)
        except WebSocketDisconnect:
            session.reason = "client disconnected"
        except Exception as e:  # a bug: the client hears 1011 and one line, the log gets the traceback
            session.reason = f"internal error ({type(e).__name__})"
            log.exception("session %s failed", session.id)
            with contextlib.suppress(Exception):
                await ws.send_json({"type": "error", "status": 500, "message": session.reason})
                await ws.close(code=1011)
        finally:
            session.move("closed", reason=session.reason, frames=session.frames,
                         audio_s=round(session.samples / self.pipe.info.sample_rate, 3),
                         seconds=round(time.monotonic() - session.started, 3))

    async def _receive(self, ws: WebSocket) -> dict:
        """The next message within the idle timeout; a disconnect raises `WebSocketDisconnect`."""
        try:
            msg = await asyncio.wait_for(ws.receive(), timeout=self.cfg.idle_timeout_s)
        except asyncio.TimeoutError:
            raise ClientError(408, f"no message for {self.cfg.idle_timeout_s:g} s; the session is closed") from None
        if msg["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(msg.get("code", 1000))
        size = len(msg.get("bytes") or b"") + len((msg.get("text") or "").encode())
        if size > self.cfg.max_bytes:
            raise ClientError(413, f"a message of {size} bytes is over the limit of {self.cfg.max_upload_mb:g} MB")
        return msg

    def _open(self, start: StreamStart, image: np.ndarray | None) -> AvatarStream:
        """The session's stream (in a worker: decoding and encoding the portrait take a while)."""
        if image is None:
            try:
                data = base64.b64decode(start.portrait, validate=True)
            except (binascii.Error, ValueError):
                raise ClientError(400, "portrait: not valid base64") from None
            image = _decode_file(data, "", "portrait", read_image)
        return self.pipe.open_stream(image, steps=start.steps, cfg_audio=start.cfg_audio, cfg_ref=start.cfg_ref,
                                     seed=start.seed, detector=start.detector, source="the portrait",
                                     preview_every=self.cfg.preview_every if start.preview_every is None
                                     else start.preview_every, blinks_per_second=start.blink_rate)

    def _frames(self, frames: list[StreamFrame], fmt: str) -> list[bytes]:
        return [frame_message(f, fmt, self.cfg.jpeg_quality) for f in frames]

    def _push(self, stream: AvatarStream, x: np.ndarray, fmt: str) -> list[bytes]:
        return self._frames(stream.push(x), fmt)

    def _finish(self, stream: AvatarStream, fmt: str) -> list[bytes]:
        return self._frames(stream.finish(), fmt)

    async def _start(self, ws: WebSocket) -> StreamStart:
        msg = await self._receive(ws)
        if msg.get("text") is None:
            raise ClientError(409, 'send the start message {"type": "start", ...} before any audio')
        start = _parse_start(msg["text"])
        check_settings(self.cfg, start.steps, start.cfg_audio, start.cfg_ref, start.seed, start.detector)
        self.check_blink_rate(start.blink_rate)
        if start.sample_rate != self.pipe.info.sample_rate:
            raise ClientError(400, f"sample_rate must be {self.pipe.info.sample_rate} (the model's), got "
                                   f"{start.sample_rate}; resample on the client")
        return start

    async def _serve_stream(self, ws: WebSocket, session: Session) -> None:
        start = await self._start(ws)
        uploaded = self.portraits.get(start.portrait_id) if start.portrait_id is not None else None
        stream = await self.run(self._open, start, uploaded)
        info = self.pipe.info
        lookahead = stream.lookahead_seconds
        await ws.send_json({"type": "ready", "session": session.id, "fps": info.fps, "size": info.image_size,
                            "sample_rate": info.sample_rate, "pcm": start.pcm, "format": start.format,
                            "chunk_frames": info.frames, "preview_every": stream.preview_every,
                            "blink_rate": stream.blinks_per_second,
                            "lookahead_ms": None if lookahead is None else round(lookahead * 1000, 1)})
        session.move("streaming", pcm=start.pcm, format=start.format, steps=stream.core.steps, seed=start.seed)
        # Reading and generating run side by side: the reader keeps taking messages off the connection while a
        # chunk is generated, so pings are answered, a disconnect or a bad message is heard at once, and a stream
        # that falls too far behind is refused with a message instead of timing out (see `_read`).
        inbox: asyncio.Queue = asyncio.Queue()
        reader = asyncio.create_task(self._read(ws, start, session, inbox))
        try:
            while True:
                item = await inbox.get()
                if session.error is not None:
                    raise session.error
                if isinstance(item, np.ndarray):
                    messages = await self.run(self._push, stream, item, start.format)
                    session.pending -= len(item)
                    await self._send(ws, session, messages)
                    continue
                await self._send(ws, session, await self.run(self._finish, stream, start.format))
                stats = stream.stats()
                await ws.send_json({"type": "end", "frames": stats.frames, "seconds": round(stats.seconds, 3),
                                    "chunks": stats.chunks, "nfe": stats.nfe})
                await ws.close(1000)
                return
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read(self, ws: WebSocket, start: StreamStart, session: Session, inbox: asyncio.Queue) -> None:
        """Messages of a started stream into `inbox`: PCM pieces, then "end". A refusal, a disconnect or the
        idle timeout goes to ``session.error`` (and wakes the generator); so does a backlog of received audio
        not yet generated over ``max_backlog_s``: the server cannot keep this stream's pace."""
        rate = self.pipe.info.sample_rate
        limit, backlog = self.cfg.max_stream_seconds * rate, self.cfg.max_backlog_s * rate
        try:
            while True:
                try:
                    msg = await self._receive(ws)
                except ClientError as e:  # idle: only while nothing it sent is still being generated
                    if e.status == 408 and session.pending > 0:
                        continue
                    raise
                if msg.get("bytes") is not None:
                    x = decode_pcm(msg["bytes"], start.pcm)
                    if session.samples + len(x) > limit:
                        raise ClientError(413, f"the stream's audio is over the limit of {self.cfg.max_stream_seconds:g} s")
                    session.samples += len(x)
                    session.pending += len(x)
                    if session.pending > backlog:
                        raise ClientError(429, f"the stream is {session.pending / rate:.1f} s of audio behind (limit "
                                               f"{self.cfg.max_backlog_s:g} s): the server cannot keep its pace; send "
                                               f"audio at most in real time, or whole files to POST /v1/generate")
                    inbox.put_nowait(x)
                    continue
                kind = _message_type(msg.get("text") or "")
                if kind == "end":
                    inbox.put_nowait("end")
                    return
                if kind == "start":
                    raise ClientError(409, "the stream has already started; send audio chunks or an end message")
                raise ClientError(400, f"unknown message type '{kind}'; expected binary audio or {{\"type\": \"end\"}}")
        except (ClientError, WebSocketDisconnect) as e:
            session.error = e
            inbox.put_nowait(None)

    async def _send(self, ws: WebSocket, session: Session, messages: list[bytes]) -> None:
        for data in messages:
            await ws.send_bytes(data)
        session.frames += len(messages)


def check_settings(cfg: ServeConfig, steps: int | None, cfg_audio: float | None, cfg_ref: float | None, seed: int,
                   detector: str) -> None:
    """The generation settings a client may choose (both endpoints), or 400."""
    try:
        check(steps is None or 1 <= steps <= cfg.max_steps, f"steps must be in 1..{cfg.max_steps}, got {steps}")
        check(0 <= seed <= SEED_MAX, f"seed must be in 0..2**63-1, got {seed}")
        check(detector in DETECTORS, f"detector must be one of {', '.join(DETECTORS)}, got '{detector}'")
        for name, scale in (("cfg_audio", cfg_audio), ("cfg_ref", cfg_ref)):
            if scale is not None:
                check_scale(scale, name)
    except LipstepError as e:
        raise ClientError(400, str(e)) from None


def _json_message(text: str) -> dict:
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ClientError(400, f"bad JSON ({e})") from None
    if not isinstance(data, dict):
        raise ClientError(400, "a text message must be a JSON object with a 'type'")
    return data


def _message_type(text: str) -> str:
    return str(_json_message(text).get("type"))[:40]


def _parse_start(text: str) -> StreamStart:
    data = _json_message(text)
    if data.get("type") != "start":
        raise ClientError(409, f"the first message must be {{\"type\": \"start\", ...}}, got type '{data.get('type')}'")
    try:
        start = from_dict(StreamStart, data, prefix="start.")
        start.validate()
    except LipstepError as e:
        raise ClientError(400, str(e)) from None
    return start


async def _refuse(ws: WebSocket, e: ClientError) -> None:
    """Tell the client why, then close with 4000 + the HTTP status (the client may already be gone)."""
    with contextlib.suppress(Exception):
        await ws.send_json({"type": "error", "status": e.status, "message": e.message})
        await ws.close(code=4000 + e.status, reason=e.message[:120])


# ---------------------------------------------------------------------------------------------
# ASGI: request log and body limit


class _RequestGate:
    """Pure ASGI middleware: refuses HTTP bodies over the limit (413) and logs one JSON line per request."""

    def __init__(self, app, max_mb: float):
        self.app, self.max_mb, self.max_bytes = app, max_mb, int(max_mb * 2**20)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status, seen = time.perf_counter(), [500], [0]
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0

        async def limited_receive():
            msg = await receive()
            seen[0] += len(msg.get("body", b""))
            if seen[0] > self.max_bytes:
                raise _TooLarge(self.max_mb)
            return msg

        async def logged_send(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            if declared > self.max_bytes:
                status[0] = 413
                await _respond(send, 413, _TooLarge(self.max_mb).detail)
                return
            await self.app(scope, limited_receive, logged_send)
        finally:
            log_event("request", method=scope.get("method"), path=scope.get("path"), status=status[0],
                      ms=round((time.perf_counter() - t0) * 1000, 1))


class _TooLarge(StarletteHTTPException):
    """A body that grew past the limit while it was read (FastAPI passes HTTP exceptions through as they are)."""

    def __init__(self, limit_mb: float):
        super().__init__(413, f"the request body is over the limit of {limit_mb:g} MB")


async def _respond(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------------
# the app


def create_app(cfg: ServeConfig | None = None, pipe: AvatarPipeline | None = None) -> FastAPI:
    """The FastAPI app; loads the model now (`cfg.model` on `cfg.device`) unless `pipe` is given."""
    cfg = cfg or ServeConfig()
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    pipe = pipe or AvatarPipeline.from_pretrained(cfg.model, device=cfg.device)
    server = AvatarServer(cfg, pipe)
    server.warmup_s = pipe.warmup()  # the first session's first frame should not pay a fresh process's costs

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        server.shutdown()

    app = FastAPI(title="lipstep", version=__version__, lifespan=lifespan,
                  description="Portrait + speech in, lip-synced talking-head video out; streaming over WebSocket "
                              "at /v1/stream (protocol: README, Serving).")
    app.state.server = server
    app.add_middleware(_RequestGate, max_mb=cfg.max_upload_mb)
    _add_error_handlers(app)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})

    app.mount("/static", StaticFiles(directory=WEB), name="static")

    @app.get("/health", summary="Model, limits and sessions in use")
    async def health() -> dict:
        return server.health()

    @app.get("/v1/portraits", summary="The server's example portraits")
    async def list_portraits() -> dict:
        return server.list_portraits()

    @app.get("/v1/portraits/{pid}", summary="A portrait's crop as PNG", response_class=Response,
             responses={200: {"content": {"image/png": {}}, "description": "The crop streams use"}})
    async def portrait_png(pid: str) -> Response:
        return server.portrait_png(pid)

    @app.post("/v1/portraits", summary="Upload a portrait once; streams name it by id")
    async def portraits(image: UploadFile = File(..., description="Portrait image (any format PIL reads)"),
                        detector: str = Form("auto", description="Face detector: auto, haar, dlib or none")) -> dict:
        return await server.add_portrait(image, detector)

    @app.post("/v1/generate", summary="Portrait + speech file -> mp4", response_class=Response,
              responses={200: {"content": {"video/mp4": {}}, "description": "H.264/AAC mp4 with the speech"}})
    async def generate(image: UploadFile = File(..., description="Portrait image (any format PIL reads)"),
                       audio: UploadFile = File(..., description="Speech: wav, flac, mp3, ogg, m4a, or a video"),
                       steps: int | None = Form(None, description="Sampler steps per chunk (default: the model's)"),
                       cfg_audio: float | None = Form(None, description="Audio guidance scale"),
                       cfg_ref: float | None = Form(None, description="Reference guidance scale"),
                       seed: int = Form(0, description="Seed of the noise"),
                       detector: str = Form("auto", description="Face detector: auto, haar, dlib or none"),
                       blink_rate: float | None = Form(None, description="Blinks per second (0 = none; default: "
                                                       "the model's)")):
        return await server.generate(image, audio, steps, cfg_audio, cfg_ref, seed, detector, blink_rate)

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        await server.stream(ws)

    return app


# The page loads nothing from elsewhere: scripts, styles, images and the WebSocket all come from this server.
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; connect-src 'self'; "
               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def _add_error_handlers(app: FastAPI) -> None:
    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)

    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError):
        return error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return error(400, _validation_message(exc))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception):
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); see the server log")


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: a free one), before anything heavy loads; a one-line
    `LipstepError` when the host does not resolve or the port is taken."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise LipstepError(f"--host {host}: cannot resolve it ({getattr(e, 'strerror', None) or e})") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        hint = "; another server may be using it" if e.errno == errno.EADDRINUSE else ""
        raise LipstepError(f"cannot listen on {host}:{port} ({e.strerror}){hint}") from None
    return sock


def serve(cfg: ServeConfig) -> None:
    """Bind the port, load the model, then serve until interrupted (uvicorn; JSON log lines on stderr)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    sock = bind_socket(cfg.host, cfg.port)
    try:
        app = create_app(cfg)
        port = sock.getsockname()[1]
        log_event("server", state="listening", url=f"http://{cfg.host}:{port}", docs=f"http://{cfg.host}:{port}/docs",
                  model=app.state.server.health()["model"], device=cfg.device,
                  warmup_s=round(app.state.server.warmup_s, 3))
        config = uvicorn.Config(app, log_level="warning", access_log=False, ws_max_size=cfg.max_bytes + 4096,
                                ws_ping_interval=cfg.ws_ping_s, ws_ping_timeout=cfg.ws_ping_s)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


__all__ = ["ClientError", "ServeConfig", "StreamStart", "bind_socket", "create_app", "frame_message", "serve"]
