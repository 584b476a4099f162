"""Load test of `lipstep serve` over loopback: concurrent streams at a live pace and a stream of malformed requests.

``sessions`` WebSocket clients each stream ``seconds`` of espeak-ng speech at the pace a microphone would: the
40-ms piece covering audio [t, t + 0.04) is sent at ``t0 + t + 0.04``. Meanwhile one client sends malformed
requests one after another (bad JSON, a wrong sample rate, messages and uploads over the size limit, unknown ids,
wrong order, abrupt disconnects), another polls ``/health`` and the server's resident memory (psutil, when its
pid is known). The report records, per session, frame **latency** (a frame's arrival minus the moment its first
audio sample was spoken, ``t0 + frame.time``: the playback delay a client needs to show it in sync), the part of
it the server added (**excess**: latency minus the floor that chunking imposes, a chunk of frames leaving once its
audio and the encoder's look-ahead have been sent), and whether the session **kept real time** (its excess grew by
less than 5 % of the audio time; growth 0.2 s/s means the server made 1 s of video per 1.2 s); every status code
seen; whether every malformed request got the 4xx expected; and whether the server stayed up.

``run_loadtest(url, cfg, pid)`` returns the report (a dict); ``format_markdown`` renders it; ``launch_server``
starts ``lipstep serve`` in a subprocess for it. The script is ``experiments/streaming/loadtest.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from lipstep.config import check
from lipstep.data.speech import make_sentence, synthesize
from lipstep.errors import LipstepError

VOICES = ("en-us", "en-us+f3", "en+m3", "en-us+f2", "en-gb-scotland+m1", "en+f4")


@dataclass
class LoadConfig:
    sessions: int = 16              # concurrent streams
    seconds: float = 120.0          # audio each stream sends, at a live pace
    piece_ms: float = 40.0          # PCM piece size (sent once its audio has been spoken)
    stagger_s: float = 0.05         # session k starts k * stagger_s after the first (clients are not in phase)
    malformed_pause_s: float = 0.2  # pause between two malformed requests (one at a time)
    sample_every_s: float = 0.5     # /health and RSS sampling period
    drain_s: float = 120.0          # after its audio, how long a session waits for its last frames
    portrait_id: str = "example-1"  # a portrait the server offers (GET /v1/portraits)
    seed: int = 0                   # speech text and voices

    def validate(self) -> None:
        check(1 <= self.sessions <= 256, f"sessions must be in 1..256, got {self.sessions}")
        check(0 < self.seconds <= 3600, f"seconds must be in (0, 3600], got {self.seconds}")
        check(5 <= self.piece_ms <= 1000, f"piece_ms must be in 5..1000, got {self.piece_ms}")
        check(self.stagger_s >= 0 and self.malformed_pause_s >= 0, "stagger_s and malformed_pause_s must be >= 0")
        check(self.sample_every_s > 0 and self.drain_s > 0, "sample_every_s and drain_s must be > 0")


# ---------------------------------------------------------------------------------------------
# speech


def speech_track(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """`seconds` of espeak-ng sentences in several voices with 0.2-0.8 s pauses (float32, mono)."""
    rng = np.random.default_rng(seed)
    pieces, total, need = [], 0, int(seconds * sample_rate)
    while total < need:
        text = make_sentence(rng, int(rng.integers(4, 12)))
        voice = VOICES[int(rng.integers(len(VOICES)))]
        wav = synthesize(text, voice=voice, rate=int(rng.integers(140, 190)), sample_rate=sample_rate).wav
        pause = np.zeros(int(rng.uniform(0.2, 0.8) * sample_rate), np.float32)
        pieces += [wav.astype(np.float32), pause]
        total += len(wav) + len(pause)
    return np.concatenate(pieces)[:need]


def wav_bytes(wav: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wav, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# one stream


@dataclass
class SessionRecord:
    index: int
    audio_s: float = 0.0
    frames: list = field(default_factory=list)   # (index, time, arrival - t0)
    end: dict | None = None                      # the server's end message
    error: str | None = None
    close_code: int | None = None
    ready: dict | None = None
    send_lag_s: float = 0.0                      # how late a piece went out: TCP backpressure or the client's CPU
    closed_at_s: float | None = None             # when the stream ended, since t0
    ended: float | None = None                   # when the stream ended (perf_counter)


async def _receive_frames(ws, rec: SessionRecord, t0: list) -> None:
    async for message in ws:
        now = time.perf_counter()
        if isinstance(message, bytes):
            (n,) = struct.unpack("<I", message[:4])
            header = json.loads(message[4:4 + n])
            rec.frames.append((header["index"], header["time"], now - t0[0]))
            continue
        data = json.loads(message)
        if data.get("type") == "end":
            rec.end = data
        elif data.get("type") == "error":
            rec.error = f"{data.get('status')}: {data.get('message')}"


async def stream_session(ws_url: str, rec: SessionRecord, pcm: np.ndarray, cfg: LoadConfig, sample_rate: int) -> None:
    """One live-paced stream; fills `rec` (frames with arrival times, the end message, errors)."""
    piece = round(cfg.piece_ms / 1000 * sample_rate)
    t0 = [None]  # when audio time 0 was spoken (perf_counter), set once the server is ready
    receiver = None
    try:
        async with connect(ws_url, max_size=None, ping_interval=None, open_timeout=60, close_timeout=10) as ws:
            await ws.send(json.dumps({"type": "start", "portrait_id": cfg.portrait_id, "pcm": "f32le",
                                      "format": "jpeg", "seed": rec.index}))
            ready = json.loads(await ws.recv())
            if ready.get("type") != "ready":
                rec.error = f"{ready.get('status')}: {ready.get('message')}"
                await ws.wait_closed()
                rec.close_code = ws.close_code
                return
            rec.ready = ready
            t0[0] = time.perf_counter()
            receiver = asyncio.create_task(_receive_frames(ws, rec, t0))
            for i, start in enumerate(range(0, len(pcm), piece)):
                chunk = pcm[start:start + piece]
                due = t0[0] + (start + len(chunk)) / sample_rate
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                rec.send_lag_s = max(rec.send_lag_s, time.perf_counter() - due)
                if receiver.done():
                    break
                await ws.send(chunk.astype("<f4").tobytes())
                rec.audio_s = (start + len(chunk)) / sample_rate
            if not receiver.done():
                await ws.send(json.dumps({"type": "end"}))
            await asyncio.wait_for(receiver, timeout=cfg.drain_s)
            rec.close_code = ws.close_code
    except ConnectionClosed as e:
        rec.close_code = e.rcvd.code if e.rcvd else None
        status = _refusal(e)
        rec.error = rec.error or (f"{status}: {e.rcvd.reason}" if status else f"{type(e).__name__}: {e}")
    except (WebSocketException, OSError, asyncio.TimeoutError) as e:
        rec.error = rec.error or f"{type(e).__name__}: {e}"
    finally:
        rec.ended = time.perf_counter()
        if t0[0] is not None:
            rec.closed_at_s = rec.ended - t0[0]
        if receiver is not None:  # a send failed first: the receiver's own ending is the same closed connection
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, WebSocketException, OSError):
                await receiver


def _refusal(e: ConnectionClosed) -> int | None:
    """The HTTP status of a refusal the server closed with (close code 4000 + status), else None."""
    code = e.rcvd.code if e.rcvd else None
    return code - 4000 if code is not None and 4400 <= code < 4600 else None


def session_summary(rec: SessionRecord) -> dict:
    """Latency percentiles, the floor chunking imposes, the excess's growth and whether it kept real time."""
    out = {"session": rec.index, "audio_s": round(rec.audio_s, 2), "frames": len(rec.frames),
           "server_frames": rec.end.get("frames") if rec.end else None, "error": rec.error,
           "close_code": rec.close_code, "client_send_lag_s": round(rec.send_lag_s, 3),
           "closed_at_s": None if rec.closed_at_s is None else round(rec.closed_at_s, 1)}
    if not rec.frames or rec.ready is None:
        return {**out, "kept_real_time": False}
    index, times, arrival = (np.array(v, float) for v in zip(*rec.frames))
    fps, chunk = rec.ready["fps"], rec.ready["chunk_frames"]
    lookahead = (rec.ready.get("lookahead_ms") or 0.0) / 1000
    chunk_end = (index // chunk + 1) * chunk / fps                       # the audio a frame's chunk needs ...
    floor = np.minimum(chunk_end + lookahead, rec.audio_s) - times       # ... plus the look-ahead, once spoken
    latency = arrival - times
    excess = latency - floor
    growth = float(np.polyfit(times, excess, 1)[0]) if len(times) > 2 and np.ptp(times) > 0 else 0.0
    complete = rec.end is not None and rec.end.get("frames") == len(rec.frames)
    pct = lambda x, q: round(float(np.percentile(x, q)), 3)
    return {**out, "first_frame_s": round(float(arrival[0]), 3),
            "latency_p50_s": pct(latency, 50), "latency_p95_s": pct(latency, 95),
            "latency_max_s": round(float(latency.max()), 3),
            "excess_p50_s": pct(excess, 50), "excess_p95_s": pct(excess, 95),
            "floor_mean_s": round(float(floor.mean()), 3), "excess_growth_s_per_s": round(growth, 4),
            "in_order": bool(np.all(np.diff(index) == 1) and np.all(np.diff(times) > 0)),
            "complete": complete, "kept_real_time": bool(complete and growth < 0.05)}


# ---------------------------------------------------------------------------------------------
# malformed requests


class Malformed:
    """The malformed requests, each a coroutine returning the status the server answered (None: none due)."""

    def __init__(self, url: str, http: httpx.AsyncClient, max_bytes: int, portrait_png: bytes, sample_rate: int):
        self.url, self.ws_url, self.http = url, "ws" + url[len("http"):] + "/v1/stream", http
        self.max_bytes, self.portrait_png, self.sample_rate = max_bytes, portrait_png, sample_rate
        self.start = json.dumps({"type": "start", "portrait_id": "example-1"})

    def cases(self) -> list[tuple[str, int | None, object]]:
        """(name, expected status, coroutine function)."""
        return [
            ("ws bad JSON", 400, lambda: self._ws(['{"type": "start", "portrait_id": '])),
            ("ws wrong sample rate", 400, lambda: self._ws([json.dumps({"type": "start", "portrait_id": "example-1",
                                                                        "sample_rate": 44100})])),
            ("ws unknown portrait id", 404, lambda: self._ws([json.dumps({"type": "start",
                                                                          "portrait_id": "no-such-id"})])),
            ("ws audio before start", 409, lambda: self._ws([b"\x00" * 640])),
            ("ws unknown message type", 400, lambda: self._ws([self.start, json.dumps({"type": "pause"})])),
            ("ws odd PCM bytes", 400, lambda: self._ws([self.start, b"\x00" * 7])),
            ("ws message over the limit", 413, lambda: self._ws([b"\x00" * (self.max_bytes + 4)])),
            ("ws abrupt disconnect", None, self._abort),
            ("http upload over the limit", 413, self._oversized_upload),
            ("http not an image", 400, lambda: self._post("/v1/portraits", {"image": ("x.png", b"not an image")})),
            ("http unknown portrait id", 404, lambda: self._get("/v1/portraits/no-such-id")),
            ("http bad steps", 400, lambda: self._post("/v1/generate", {
                "image": ("p.png", self.portrait_png),
                "audio": ("a.wav", wav_bytes(np.zeros(self.sample_rate // 2, np.float32), self.sample_rate))},
                {"steps": "0"})),
        ]

    async def _ws(self, messages: list) -> int | None:
        """Send `messages`; the status of the error the server answers (or of the close code it refuses with)."""
        try:
            async with connect(self.ws_url, max_size=None, ping_interval=None, open_timeout=60) as ws:
                for m in messages:
                    await ws.send(m)
                async for reply in ws:
                    if isinstance(reply, str) and json.loads(reply).get("type") == "error":
                        return int(json.loads(reply)["status"])
                return ws.close_code
        except ConnectionClosed as e:  # refused before our messages were all sent (e.g. 429, server busy)
            return _refusal(e) or (e.rcvd.code if e.rcvd else None)

    async def _abort(self) -> int | None:
        """Start a stream, send 0.25 s, drop the TCP connection; None, or the status if the server refused first."""
        try:
            async with connect(self.ws_url, max_size=None, ping_interval=None, open_timeout=60,
                               close_timeout=1) as ws:
                await ws.send(self.start)
                await ws.recv()
                await ws.send(np.zeros(self.sample_rate // 4, "<f4").tobytes())
                ws.transport.abort()  # no close frame, no end message: the TCP connection just drops
        except ConnectionClosed as e:
            return _refusal(e)
        return None

    async def _oversized_upload(self) -> int:
        """A body declared over the limit; the server must answer 413 before reading it (so only 1 KB is sent:
        writing the whole body would race the server closing the connection after its answer)."""
        host, port = self.url.split("//", 1)[1].rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(f"POST /v1/generate HTTP/1.1\r\nhost: {host}\r\ncontent-type: multipart/form-data; "
                         f"boundary=x\r\ncontent-length: {self.max_bytes + 1}\r\n\r\n".encode() + b"x" * 1024)
            await writer.drain()
            return int((await reader.readline()).split()[1])
        finally:
            writer.close()

    async def _post(self, path: str, files: dict, data: dict | None = None) -> int:
        return (await self.http.post(self.url + path, files=files, data=data or {})).status_code

    async def _get(self, path: str) -> int:
        return (await self.http.get(self.url + path)).status_code


async def _malformed_loop(m: Malformed, deadline: float, pause: float, results: list) -> None:
    """Every case once, then round after round until the deadline."""
    first = True
    while first or time.perf_counter() < deadline:
        for name, expected, run in m.cases():
            if not first and time.perf_counter() >= deadline:
                return
            try:
                status = await asyncio.wait_for(run(), timeout=60)
                problem = None
            except (OSError, asyncio.TimeoutError, httpx.HTTPError, WebSocketException, ValueError, KeyError) as e:
                # a refused connection, a timeout or a reply out of protocol is a finding, not a crash of the test
                status, problem = None, f"{type(e).__name__}: {str(e)[:120]}"
            results.append({"case": name, "expected": expected, "status": status, "problem": problem})
            await asyncio.sleep(pause)
        first = False


# ---------------------------------------------------------------------------------------------
# the server's health and memory


async def _get_health(http: httpx.AsyncClient, url: str) -> httpx.Response:
    """GET /health, tried twice: a kept-alive connection the server closed while idle is not an outage."""
    try:
        return await http.get(url + "/health", timeout=10)
    except httpx.TransportError:
        return await http.get(url + "/health", timeout=10)


async def _monitor(http: httpx.AsyncClient, url: str, pid: int | None, every: float, stop: asyncio.Event,
                   health: list, rss: list, t_start: float) -> None:
    process = psutil.Process(pid) if pid else None
    while not stop.is_set():
        t = round(time.perf_counter() - t_start, 2)
        try:
            r = await _get_health(http, url)
            health.append((t, r.status_code, r.json().get("sessions") if r.status_code == 200 else None))
        except httpx.HTTPError as e:
            health.append((t, None, type(e).__name__))
        if process is not None:
            try:
                cpu = process.cpu_times()
                rss.append((t, round(process.memory_info().rss / 2**20, 1), round(cpu.user + cpu.system, 2)))
            except psutil.Error:
                rss.append((t, None, None))
        try:
            await asyncio.wait_for(stop.wait(), timeout=every)
        except asyncio.TimeoutError:
            pass


# ---------------------------------------------------------------------------------------------
# the whole run


async def _run(url: str, cfg: LoadConfig, pid: int | None) -> dict:
    async with httpx.AsyncClient(timeout=60) as http:
        info = (await http.get(url + "/health")).json()
        sample_rate, max_bytes = info["sample_rate"], int(info["limits"]["max_upload_mb"] * 2**20)
        portrait = await http.get(f"{url}/v1/portraits/{cfg.portrait_id}")
        if portrait.status_code != 200:
            raise LipstepError(f"the server has no portrait '{cfg.portrait_id}' (GET /v1/portraits lists them)")
        track = speech_track(cfg.seconds, sample_rate, cfg.seed)
        records = [SessionRecord(k) for k in range(cfg.sessions)]
        t_start = time.perf_counter()
        stop, health, rss, malformed = asyncio.Event(), [], [], []
        monitor = asyncio.create_task(_monitor(http, url, pid, cfg.sample_every_s, stop, health, rss, t_start))
        m = Malformed(url, http, max_bytes, portrait.content, sample_rate)
        bad = asyncio.create_task(_malformed_loop(m, t_start + cfg.seconds, cfg.malformed_pause_s, malformed))

        async def session(rec: SessionRecord):
            await asyncio.sleep(rec.index * cfg.stagger_s)
            pcm = np.roll(track, rec.index * len(track) // cfg.sessions)  # each session a different stretch
            await stream_session(m.ws_url, rec, pcm, cfg, sample_rate)

        await asyncio.gather(*(session(r) for r in records))
        await bad
        await asyncio.sleep(cfg.sample_every_s * 2)  # a last look at the server after everything ended
        stop.set()
        await monitor
        final = await _final_health(http, url)
        wall = time.perf_counter() - t_start
    streaming_s = max(r.ended for r in records) - t_start
    return build_report(url, cfg, info, pid, records, malformed, health, rss, final, wall, streaming_s)


async def _final_health(http: httpx.AsyncClient, url: str) -> dict:
    try:
        r = await _get_health(http, url)
        return {"status": r.status_code, "sessions": r.json().get("sessions")}
    except httpx.HTTPError as e:
        return {"status": None, "error": type(e).__name__}


def run_loadtest(url: str, cfg: LoadConfig | None = None, pid: int | None = None) -> dict:
    """Run the load test against the server at `url` (http://host:port); `pid` lets it read the server's RSS."""
    cfg = cfg or LoadConfig()
    cfg.validate()
    return asyncio.run(_run(url.rstrip("/"), cfg, pid))


def _status_counts(records, malformed, health) -> dict:
    counts: dict[str, int] = {}

    def add(key):
        counts[key] = counts.get(key, 0) + 1

    for _, status, _sessions in health:
        add(f"GET /health {status}")
    for rec in records:
        add(f"WS /v1/stream session close {rec.close_code}" + (f" ({rec.error[:70]})" if rec.error else ""))
    for row in malformed:
        add(f"{row['case']}: {row['status']}")
    return dict(sorted(counts.items()))


def build_report(url, cfg, info, pid, records, malformed, health, rss, final, wall, streaming_s) -> dict:
    sessions = [session_summary(r) for r in records]
    cases: dict[str, dict] = {}
    for row in malformed:
        c = cases.setdefault(row["case"], {"expected": row["expected"], "sent": 0, "as_expected": 0, "statuses": {}})
        c["sent"] += 1
        c["as_expected"] += row["status"] == row["expected"] and row["problem"] is None
        key = str(row["status"]) if row["problem"] is None else row["problem"]
        c["statuses"][key] = c["statuses"].get(key, 0) + 1
    rss_values = [v for _, v, _ in rss if v is not None]
    cpu = [(t, c) for t, _, c in rss if c is not None]
    cpu_s = round(cpu[-1][1] - cpu[0][1], 2) if len(cpu) > 1 else None
    during = [c for t, c in cpu if t <= streaming_s]  # samples until the last stream ended
    cores_streaming = round((during[-1] - during[0]) / streaming_s, 2) if len(during) > 1 and streaming_s > 0 else None
    frames = sum(s["frames"] for s in sessions)
    ok_health = [s for _, s, _ in health if s == 200]
    done = [s for s in sessions if "latency_p50_s" in s]
    malformed_ok = all((r["status"] == r["expected"]) and r["problem"] is None for r in malformed)
    every_4xx = all(r["expected"] is None or (r["status"] is not None and 400 <= r["status"] < 500)
                    for r in malformed)
    summary = {
        "sessions": cfg.sessions, "audio_s_each": cfg.seconds, "wall_s": round(wall, 1),
        "sessions_complete": sum(bool(s.get("complete")) for s in sessions),
        "sessions_real_time": sum(s["kept_real_time"] for s in sessions),
        "session_close_codes": _counts(str(s["close_code"]) for s in sessions),
        "frames_received": frames, "frames_per_s_all_sessions": round(frames / wall, 1),
        "server_cpu_s": cpu_s, "server_cores_used": round(cpu_s / (cpu[-1][0] - cpu[0][0]), 2) if cpu_s else None,
        "streams_ended_at_s": round(streaming_s, 1), "server_cores_while_streaming": cores_streaming,
        "frames_per_server_cpu_s": round(frames / cpu_s, 1) if cpu_s else None,
        "streams_closed_at_s_median": _median(s["closed_at_s"] for s in sessions),
        "latency_p50_s_median": _median(s["latency_p50_s"] for s in done),
        "latency_p95_s_worst": max((s["latency_p95_s"] for s in done), default=None),
        "excess_p95_s_worst": max((s["excess_p95_s"] for s in done), default=None),
        "excess_growth_s_per_s_median": _median(s["excess_growth_s_per_s"] for s in done),
        "first_frame_s_median": _median(s["first_frame_s"] for s in done),
        "client_send_lag_s_worst": max((s["client_send_lag_s"] for s in sessions), default=None),
        "malformed_sent": len(malformed), "malformed_all_as_expected": malformed_ok,
        "malformed_all_4xx": every_4xx,
        "health_checks": len(health), "health_failures": len(health) - len(ok_health),
        "server_up_at_end": final.get("status") == 200, "sessions_in_use_at_end": final.get("sessions"),
        "rss_mb_start": rss_values[0] if rss_values else None, "rss_mb_peak": max(rss_values, default=None),
        "rss_mb_end": rss_values[-1] if rss_values else None,
    }
    return {"url": url, "config": asdict(cfg), "server": {k: info.get(k) for k in
            ("model", "kind", "fps", "image_size", "sample_rate", "chunk_frames", "limits")}, "pid": pid,
            "summary": summary, "sessions": sessions, "malformed": cases,
            "status_counts": _status_counts(records, malformed, health),
            "rss_mb": rss[:: max(1, len(rss) // 240)], "health": health[:: max(1, len(health) // 240)]}


def _counts(keys) -> dict:
    out: dict[str, int] = {}
    for key in keys:
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def _median(values):
    values = [v for v in values if v is not None]
    return round(float(np.median(values)), 3) if values else None


# ---------------------------------------------------------------------------------------------
# the report as markdown


def format_markdown(report: dict, notes: list[str] = ()) -> str:
    s, cfg, srv = report["summary"], report["config"], report["server"]
    lines = [f"# Load test: {cfg['sessions']} streams x {cfg['seconds']:g} s, model `{srv['model']}`", ""]
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    lines += [
        (f"- server {report['url']}, {srv['image_size']} px at {srv['fps']} fps, chunks of {srv['chunk_frames']} "
         f"frames, limits {srv['limits']}"),
        (f"- sessions complete {s['sessions_complete']}/{s['sessions']}, kept real time "
         f"{s['sessions_real_time']}/{s['sessions']}; close codes {s['session_close_codes']}, streams ended after "
         f"{s['streams_closed_at_s_median']} s (median); wall {s['wall_s']} s"),
        (f"- frames received {s['frames_received']} ({s['frames_per_s_all_sessions']} per second of wall time, all "
         f"sessions together; live pace would be {srv['fps'] * s['sessions']:g})"),
        (f"- latency (arrival - when the frame's audio began): median of p50 {s['latency_p50_s_median']} s, "
         f"worst p95 {s['latency_p95_s_worst']} s; first frame (median) {s['first_frame_s_median']} s"),
        (f"- excess over the chunking floor: worst p95 {s['excess_p95_s_worst']} s, median growth "
         f"{s['excess_growth_s_per_s_median']} s per s of audio"),
        (f"- malformed requests {s['malformed_sent']}: all 4xx {s['malformed_all_4xx']}, all as expected "
         f"{s['malformed_all_as_expected']}"),
        (f"- server up: {s['health_checks'] - s['health_failures']}/{s['health_checks']} health checks answered 200; "
         f"at the end {'up' if s['server_up_at_end'] else 'DOWN'}, {s['sessions_in_use_at_end']} sessions in use"),
        f"- server RSS (MB): start {s['rss_mb_start']}, peak {s['rss_mb_peak']}, end {s['rss_mb_end']}",
        (f"- server CPU: {s['server_cpu_s']} s over the run, {s['server_cores_used']} cores on average, "
         f"{s.get('server_cores_while_streaming')} until the last stream ended (at {s.get('streams_ended_at_s')} s); "
         f"{s['frames_per_server_cpu_s']} frames per CPU second"),
        (f"- worst lateness of a piece the client sent: {s['client_send_lag_s_worst']} s (the client's own CPU "
         f"or TCP backpressure)"), "",
        ("| session | audio s | frames | p50 s | p95 s | max s | excess p95 s | growth s/s | real time | ended s "
         "| error |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["sessions"]:
        lines.append(f"| {r['session']} | {r['audio_s']} | {r['frames']} | {r.get('latency_p50_s', '–')} | "
                     f"{r.get('latency_p95_s', '–')} | {r.get('latency_max_s', '–')} | {r.get('excess_p95_s', '–')} | "
                     f"{r.get('excess_growth_s_per_s', '–')} | {'yes' if r['kept_real_time'] else 'no'} | "
                     f"{r['closed_at_s']} | {(r['error'] or '')[:90]} |")
    lines += ["", "| malformed request | expected | sent | as expected | statuses |", "|---|---|---|---|---|"]
    for name, c in report["malformed"].items():
        lines.append(f"| {name} | {c['expected'] if c['expected'] is not None else '(none)'} | {c['sent']} | "
                     f"{c['as_expected']} | {c['statuses']} |")
    lines += ["", "| status | count |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report["status_counts"].items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# a server to test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_server(model: str | None, port: int, settings: list[str], log: Path,
                  timeout: float = 300.0) -> subprocess.Popen:
    """`lipstep serve` in a subprocess (stderr to `log`), once /health answers; raises if it does not start."""
    cmd = [sys.executable, "-m", "lipstep", "serve", "--port", str(port), *(["--model", model] if model else []),
           *settings]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"))  # noqa: SIM115
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LipstepError(f"lipstep serve exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise LipstepError(f"lipstep serve did not answer within {timeout:g} s; see {log}")


__all__ = ["LoadConfig", "format_markdown", "free_port", "launch_server", "run_loadtest", "speech_track"]
