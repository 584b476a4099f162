"""`lipstep serve`: /health, /v1/portraits, /v1/generate and the /v1/stream WebSocket on a tiny in-memory model
(FastAPI's TestClient, no network): true streaming, the same frames as a whole call, limits, and a one-line 4xx
for every malformed request."""

import base64
import io
import json
import logging
import re
import struct

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from PIL import Image

from lipstep.data.media import probe
from lipstep.errors import ConfigError
from lipstep.server import ServeConfig, create_app
from tests.mediafixtures import SR, speech_like
from tests.tinypipe import portrait, tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

LIMITS = {"max_upload_mb": 0.2, "max_audio_seconds": 1.5, "max_stream_seconds": 2.0, "idle_timeout_s": 0.5,
          "max_sessions": 2}


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def client(pipe):
    with TestClient(create_app(ServeConfig(**LIMITS), pipe)) as c:
        yield c


def _png(image=None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(portrait() if image is None else image).save(buf, format="PNG")
    return buf.getvalue()


def _wav(seconds: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, speech_like(seconds), SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _frame(data: bytes) -> tuple[dict, np.ndarray]:
    (n,) = struct.unpack("<I", data[:4])
    header = json.loads(data[4:4 + n])
    return header, np.asarray(Image.open(io.BytesIO(data[4 + n:])).convert("RGB"))


def _start(**extra) -> str:
    return json.dumps({"type": "start", "portrait": base64.b64encode(_png()).decode(), "format": "png", "seed": 3,
                       **extra})


def _refused(ws) -> tuple[int, str, int]:
    """(status, message, close code) of the error a stream ends with."""
    msg = ws.receive_json()
    assert msg["type"] == "error", msg
    close = ws.receive()
    assert close["type"] == "websocket.close"
    return msg["status"], msg["message"], close["code"]


# ------------------------------------------------------------------------------------------------- HTTP


def test_health_and_docs(client):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["fps"] == 25 and body["image_size"] == 16 and body["sessions"] == 0
    assert body["limits"]["max_sessions"] == 2
    assert client.get("/docs").status_code == 200
    assert "/v1/generate" in client.get("/openapi.json").json()["paths"]


def test_generate_returns_the_mp4(client, pipe, tmp_path):
    r = client.post("/v1/generate", files={"image": ("me.png", _png()), "audio": ("speech.wav", _wav(1.03))},
                    data={"seed": "3"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "video/mp4" and r.headers["x-lipstep-frames"] == "26"
    (tmp_path / "out.mp4").write_bytes(r.content)
    info = probe(tmp_path / "out.mp4")
    assert info["frames"] == 26 and info["has_audio"] and info["width"] == 16


BAD_GENERATE = {
    "no image": ({"audio": ("a.wav", _wav(0.5))}, {}, 400, "image: Field required"),
    "not an image": ({"image": ("me.png", b"hello"), "audio": ("a.wav", _wav(0.5))}, {}, 400,
                     "image: not an image"),
    "empty audio": ({"image": ("me.png", _png()), "audio": ("a.wav", b"")}, {}, 400, "audio: the file is empty"),
    "garbage audio": ({"image": ("me.png", _png()), "audio": ("a.wav", b"\x00garbage" * 50)}, {}, 400,
                      "audio: cannot decode"),
    "audio too long": ({"image": ("me.png", _png()), "audio": ("a.wav", _wav(2.0))}, {}, 413, "over the limit of 1.5"),
    "audio too short": ({"image": ("me.png", _png()), "audio": ("a.wav", _wav(0.01))}, {}, 400, "shorter than one"),
    "steps not a number": ({"image": ("me.png", _png()), "audio": ("a.wav", _wav(0.5))}, {"steps": "abc"}, 400,
                           "steps: "),
    "steps zero": ({"image": ("me.png", _png()), "audio": ("a.wav", _wav(0.5))}, {"steps": "0"}, 400,
                   "steps must be in 1..100"),
    "steps too many": ({"image": ("me.png", _png()), "audio": ("a.wav", _wav(0.5))}, {"steps": "1000000"}, 400,
                       "steps must be in 1..100"),
    "seed too large": ({"image": ("me.png", _png()), "audio": ("a.wav", _wav(0.5))}, {"seed": str(2**70)}, 400,
                       "seed must be in"),
    "bad scale": ({"image": ("me.png", _png()), "audio": ("a.wav", _wav(0.5))}, {"cfg_audio": "-1"}, 400,
                  "cfg_audio must be a guidance scale"),
    "bad blink rate": ({"image": ("me.png", _png()), "audio": ("a.wav", _wav(0.5))}, {"blink_rate": "nan"}, 400,
                       "blink rate must be in 0..5"),
    "bad detector": ({"image": ("me.png", _png()), "audio": ("a.wav", _wav(0.5))}, {"detector": "eyes"}, 400,
                     "detector must be one of"),
    "body too large": ({"image": ("me.png", b"x" * 300_000), "audio": ("a.wav", _wav(0.5))}, {}, 413,
                       "request body is over the limit of 0.2 MB"),
}


@pytest.mark.parametrize("case", list(BAD_GENERATE))
def test_generate_refuses_bad_requests_in_one_line(client, case):
    files, data, status, message = BAD_GENERATE[case]
    r = client.post("/v1/generate", files=files, data=data)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error and "\n" not in error and "Traceback" not in r.text


def test_a_body_over_the_limit_without_a_length_is_refused_while_read(client):
    def body():
        for _ in range(40):
            yield b"x" * 10_000

    r = client.post("/v1/generate", content=body(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and "over the limit" in r.json()["error"]


def test_the_page_and_its_files_are_served_from_here(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    links = re.findall(r'(?:src|href)="([^"]*)"', r.text)
    assert "/static/app.js" in links and "/static/style.css" in links
    assert all(link.startswith(("/", "data:")) for link in links)  # nothing from another origin
    for name in ("app.js", "style.css", "pcm-worklet.js"):
        assert client.get(f"/static/{name}").status_code == 200
    assert client.get("/static/nope.js").json() == {"error": "Not Found"}


def test_example_portraits_are_listed_served_and_streamable(client):
    listed = client.get("/v1/portraits").json()["portraits"]
    assert [p["id"] for p in listed] == ["example-1", "example-2", "example-3", "example-4"]
    r = client.get("/v1/portraits/example-2")
    assert r.headers["content-type"] == "image/png"
    assert np.asarray(Image.open(io.BytesIO(r.content))).shape == (16, 16, 3)
    assert client.get("/v1/portraits/nope").status_code == 404
    uploaded = client.post("/v1/portraits", files={"image": ("me.png", _png())}).json()["id"]
    assert client.get(f"/v1/portraits/{uploaded}").status_code == 200
    assert uploaded not in {p["id"] for p in client.get("/v1/portraits").json()["portraits"]}
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_text(json.dumps({"type": "start", "portrait_id": "example-1"}))
        assert ws.receive_json()["type"] == "ready"
        ws.send_text(json.dumps({"type": "end"}))
        while ws.receive()["type"] != "websocket.close":
            pass


def test_unknown_routes_and_methods_are_one_line_json(client):
    assert client.get("/nope").json() == {"error": "Not Found"}
    assert client.get("/v1/generate").status_code == 405


# -------------------------------------------------------------------------------------------- streaming


def test_stream_sends_frames_before_the_end_and_equals_a_whole_call(client, pipe, caplog):
    speech = speech_like(1.03, seed=1)
    whole = pipe(portrait(), speech, seed=3).frames
    caplog.set_level(logging.INFO, logger="lipstep.serve")
    frames = []
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_text(_start())
        ready = ws.receive_json()
        assert ready["type"] == "ready" and ready["chunk_frames"] == 4 and ready["lookahead_ms"] == 66.0
        ws.send_bytes(speech[:8000].astype("<f4").tobytes())  # 0.5 s: two whole chunks and their look-ahead
        frames += [_frame(ws.receive_bytes()) for _ in range(8)]  # before the end message is sent
        assert client.get("/health").json()["sessions"] == 1
        ws.send_bytes(speech[8000:].astype("<f4").tobytes())
        ws.send_text(json.dumps({"type": "end"}))
        while (msg := ws.receive())["type"] == "websocket.send" and msg.get("bytes"):
            frames.append(_frame(msg["bytes"]))
        end = json.loads(msg["text"])
    assert end["type"] == "end" and end["frames"] == 26 == len(frames)
    headers = [h for h, _ in frames]
    assert [h["index"] for h in headers] == list(range(26))
    assert np.allclose([h["time"] for h in headers], np.arange(26) / 25)
    assert all(isinstance(h["voice"], bool) and h["format"] == "png" for h in headers)
    assert np.array_equal(np.stack([im for _, im in frames]), whole)  # PNG: exactly the frames of `__call__`
    states = [json.loads(r.message).get("state") for r in caplog.records if '"session"' in r.message]
    assert states == ["created", "streaming", "closed"]


def test_stream_with_previews_sends_a_frame_before_its_chunk_is_complete(client):
    speech = speech_like(0.5, seed=2)
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_text(_start(preview_every=1))
        ready = ws.receive_json()
        assert ready["preview_every"] == 1 and ready["blink_rate"] == 0  # the tiny model draws none
        ws.send_bytes(speech[:640 + 1056].astype("<f4").tobytes())   # frame 0 and the look-ahead; chunk 0 needs 3616
        header, _ = _frame(ws.receive_bytes())
        assert header["index"] == 0
        ws.send_bytes(speech[640 + 1056:].astype("<f4").tobytes())
        ws.send_text(json.dumps({"type": "end"}))
        indices = [0]
        while (msg := ws.receive())["type"] == "websocket.send" and msg.get("bytes"):
            indices.append(_frame(msg["bytes"])[0]["index"])
        end = json.loads(msg["text"])
    assert indices == list(range(len(indices))) and end["frames"] == len(indices), (indices, end)
    assert end["nfe"] > end["chunks"] * 2 * 3  # previews cost evaluations


def test_stream_int16_jpeg_and_an_uploaded_portrait(client):
    r = client.post("/v1/portraits", files={"image": ("me.png", _png())})
    assert r.status_code == 200 and r.json()["size"] == 16
    pcm = (speech_like(0.3) * 32767).astype("<i2").tobytes()
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_text(json.dumps({"type": "start", "portrait_id": r.json()["id"], "pcm": "s16le"}))
        assert ws.receive_json()["type"] == "ready"
        ws.send_bytes(pcm)
        ws.send_text(json.dumps({"type": "end"}))
        header, image = _frame(ws.receive_bytes())
        assert header["index"] == 0 and header["format"] == "jpeg" and image.shape == (16, 16, 3)
        n = 1
        while (msg := ws.receive())["type"] == "websocket.send" and msg.get("bytes"):
            n += 1
        assert json.loads(msg["text"])["frames"] == n == 8


BAD_STREAMS = {
    "bad json": ([_start()[:-3]], 400, "bad JSON", 4400),
    "audio first": ([b"\x00" * 8], 409, "send the start message", 4409),
    "end first": ([json.dumps({"type": "end"})], 409, "the first message must be", 4409),
    "unknown key": ([_start(volume=3)], 400, "unknown config key 'start.volume'", 4400),
    "wrong type": ([_start(seed="x")], 400, "start.seed: expected an integer", 4400),
    "both portraits": ([_start(portrait_id="abc")], 400, "exactly one of portrait and portrait_id", 4400),
    "unknown portrait": ([json.dumps({"type": "start", "portrait_id": "abc"})], 404, "unknown portrait_id", 4404),
    "not base64": ([json.dumps({"type": "start", "portrait": "%%%"})], 400, "portrait: not valid base64", 4400),
    "not an image": ([json.dumps({"type": "start", "portrait": base64.b64encode(b"hi").decode()})], 400,
                     "portrait: not an image", 4400),
    "sample rate": ([_start(sample_rate=44100)], 400, "sample_rate must be 16000", 4400),
    "bad pcm": ([_start(pcm="mp3")], 400, "start.pcm: must be one of", 4400),
    "bad preview": ([_start(preview_every=9)], 400, "preview_every must be in 0..4", 4400),
    "bad blink rate": ([_start(blink_rate=9)], 400, "blink rate must be in 0..5", 4400),
    "blinks nothing draws": ([_start(blink_rate=0.5)], 400, "nothing to draw blinks with", 4400),
    "steps too many": ([_start(steps=10**9)], 400, "steps must be in 1..100", 4400),
    "bad scale": ([_start(cfg_ref=1e9)], 400, "cfg_ref must be a guidance scale", 4400),
    "odd bytes": ([_start(), b"\x00" * 7], 400, "whole number of 4-byte samples", 4400),
    "nan audio": ([_start(), np.array([0, np.nan], "<f4").tobytes()], 400, "NaN", 4400),
    "second start": ([_start(), _start()], 409, "already started", 4409),
    "unknown type": ([_start(), json.dumps({"type": "pause"})], 400, "unknown message type 'pause'", 4400),
    "too long": ([_start(), np.zeros(int(2.5 * SR), "<f4").tobytes()], 413, "over the limit of 2 s", 4413),
    "message too large": ([_start(), b"\x00" * 300_000], 413, "over the limit of 0.2 MB", 4413),
}


@pytest.mark.parametrize("case", list(BAD_STREAMS))
def test_stream_refuses_bad_messages_with_a_status_and_one_line(client, case):
    messages, status, message, code = BAD_STREAMS[case]
    with client.websocket_connect("/v1/stream") as ws:
        for i, m in enumerate(messages):
            ws.send_bytes(m) if isinstance(m, bytes) else ws.send_text(m)
            if i == 0 and len(messages) > 1:
                assert ws.receive_json()["type"] == "ready"
        got = _refused(ws)
    assert got[0] == status and message in got[1] and got[2] == code and "\n" not in got[1]
    assert client.get("/health").json()["sessions"] == 0  # the slot is free again


def test_idle_streams_are_closed(client):
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_text(_start())
        assert ws.receive_json()["type"] == "ready"
        status, message, code = _refused(ws)  # nothing sent for idle_timeout_s = 0.5
    assert status == 408 and "no message for 0.5 s" in message and code == 4408


def test_sessions_over_the_limit_get_429(client):
    with client.websocket_connect("/v1/stream") as a, client.websocket_connect("/v1/stream") as b:
        for ws in (a, b):
            ws.send_text(_start())
            assert ws.receive_json()["type"] == "ready"
        with client.websocket_connect("/v1/stream") as c:
            status, message, code = _refused(c)
        r = client.post("/v1/generate", files={"image": ("me.png", _png()), "audio": ("a.wav", _wav(0.5))})
        for ws in (a, b):
            ws.send_text(json.dumps({"type": "end"}))
            while ws.receive()["type"] != "websocket.close":
                pass
    assert status == 429 and "busy" in message and code == 4429
    assert r.status_code == 429 and "busy" in r.json()["error"]


def test_the_servers_preview_setting_is_the_default_of_streams_that_do_not_ask(pipe):
    with TestClient(create_app(ServeConfig(preview_every=2), pipe)) as c:
        assert c.get("/health").json()["preview_every"] == 2
        for start, expected in ((_start(), 2), (_start(preview_every=0), 0)):
            with c.websocket_connect("/v1/stream") as ws:
                ws.send_text(start)
                assert ws.receive_json()["preview_every"] == expected
                ws.send_text(json.dumps({"type": "end"}))
                while ws.receive()["type"] != "websocket.close":
                    pass


def test_a_stream_too_far_behind_is_refused_with_its_backlog(pipe):
    """Audio received and not yet generated over ``max_backlog_s``: 429 at once, naming the delay (not a silent
    keepalive timeout later)."""
    with TestClient(create_app(ServeConfig(max_backlog_s=0.3), pipe)) as c, c.websocket_connect("/v1/stream") as ws:
        ws.send_text(_start())
        assert ws.receive_json()["type"] == "ready"
        ws.send_bytes(speech_like(0.2).astype("<f4").tobytes())   # within the backlog: generated
        ws.send_bytes(speech_like(1.0).astype("<f4").tobytes())   # 1 s more at once: over it
        while (msg := ws.receive())["type"] == "websocket.send" and msg.get("bytes"):
            pass
        error = json.loads(msg["text"])
        close = ws.receive()
        assert c.get("/health").json()["limits"]["max_backlog_s"] == 0.3
    assert error["status"] == 429 and "of audio behind (limit 0.3 s)" in error["message"] and close["code"] == 4429


def test_config_is_typed_and_validated(pipe):
    with pytest.raises(ConfigError, match="max_sessions"):
        create_app(ServeConfig(max_sessions=0), pipe)
    with pytest.raises(ConfigError, match="max_backlog_s must be > 0"):
        create_app(ServeConfig(max_backlog_s=0), pipe)
    assert ServeConfig().host == "127.0.0.1"


@pytest.mark.parametrize("args, message", [(["max_sessions=0"], "max_sessions must be >= 1"),
                                           (["max_session=2"], "unknown config key 'max_session'"),
                                           (["--port", "0"], "port must be in 1..65535")])
def test_serve_refuses_bad_settings_before_loading_the_model(args, message, capsys):
    from lipstep.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and message in err


def test_upload_names_are_only_a_format_hint(client):
    for name in ("../../etc/passwd", "a.\x00png", "x" * 500 + ".wav"):
        r = client.post("/v1/portraits", files={"image": (name, _png())})
        assert r.status_code == 200, (name, r.text)
    r = client.post("/v1/portraits", files={"image": ("", _png())})  # no file name: a form field, not a file
    assert r.status_code == 400 and r.json()["error"].startswith("image: ")


def test_bad_portrait_uploads_are_4xx_with_one_line(client):
    """POST /v1/portraits with garbage, an empty or truncated image, no image, or a bad detector."""
    png = _png()
    cases = [({"image": ("me.png", b"\x89PNG garbage" * 20)}, {}),
             ({"image": ("me.png", b"")}, {}),
             ({"image": ("me.png", png[:60])}, {}),
             ({"image": ("me.png", png)}, {"detector": "yolo"}),
             ({}, {}),
             ({"portrait": ("me.png", png)}, {})]
    for files, data in cases:
        r = client.post("/v1/portraits", files=files or None, data=data)
        assert 400 <= r.status_code < 500, (files.keys(), data, r.status_code, r.text)
        message = r.json()["error"]
        assert message and "\n" not in message and "Traceback" not in message, message
    assert client.get("/health").status_code == 200
