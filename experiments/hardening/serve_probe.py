"""Bad-request probe of `lipstep serve` on 127.0.0.1:8765 (server started separately)."""
import asyncio, base64, io, json, math, os, struct, sys, time, urllib.request, urllib.error, uuid
from pathlib import Path
import numpy as np
import websockets

BASE = "http://127.0.0.1:8765"
WSURL = "ws://127.0.0.1:8765/v1/stream"
FX = Path("/work/runs/probe/fx")
FACE = (FX / "face.png").read_bytes()
SPEECH = (FX / "speech.wav").read_bytes()
results = []


def multipart(fields):
    b = uuid.uuid4().hex
    out = io.BytesIO()
    for name, val in fields:
        out.write(f"--{b}\r\n".encode())
        if isinstance(val, tuple):
            fn, data = val
            out.write(f'Content-Disposition: form-data; name="{name}"; filename="{fn}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode())
            out.write(data)
        else:
            out.write(f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
            out.write(val.encode() if isinstance(val, str) else val)
        out.write(b"\r\n")
    out.write(f"--{b}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={b}"


def http(method, path, body=None, ctype=None, headers=None, timeout=60):
    req = urllib.request.Request(BASE + path, data=body, method=method)
    if ctype:
        req.add_header("Content-Type", ctype)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("content-type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type"), e.read()
    except Exception as e:
        return "EXC", None, repr(e).encode()


def health():
    s, _, b = http("GET", "/health", timeout=20)
    return s == 200


def check_http(name, status, ctype, body, expect_ok=False):
    problems = []
    text = body[:300].decode("utf8", "replace") if isinstance(body, bytes) else str(body)
    if expect_ok:
        if status != 200 and not (isinstance(status, int) and 400 <= status < 500):
            problems.append(f"status {status}")
    elif not (isinstance(status, int) and 400 <= status < 500):
        problems.append(f"status {status} (want 4xx)")
    if status != 200:
        try:
            j = json.loads(body)
            if not (isinstance(j, dict) and isinstance(j.get("error"), str) and "\n" not in j["error"]):
                problems.append("not a one-line JSON error")
        except Exception:
            problems.append("body not JSON")
    if "Traceback" in text:
        problems.append("traceback")
    if not health():
        problems.append("SERVER DOWN after request")
    results.append(dict(kind="http", name=name, status=status, body=text, problems=problems))
    print(("FAIL " + "; ".join(problems) if problems else "ok"), status, name[:90], "::", text[:200], flush=True)


def post(name, path, fields, expect_ok=False):
    body, ct = multipart(fields)
    s, c, b = http("POST", path, body, ct)
    check_http(name, s, c, b, expect_ok)


IMG = ("image", ("face.png", FACE))
AUD = ("audio", ("speech.wav", SPEECH))
TXT = b"just some text, not media\n"


def nan_wav():
    import soundfile as sf
    bio = io.BytesIO(); sf.write(bio, np.full(8000, np.nan, np.float32), 16000, format="WAV", subtype="FLOAT"); return bio.getvalue()


def silent_wav(n=16000, sr=16000, ch=1):
    import soundfile as sf
    bio = io.BytesIO(); sf.write(bio, np.zeros((n, ch), np.float32), sr, format="WAV"); return bio.getvalue()


def png_bytes(size=(64, 64), mode="RGB"):
    from PIL import Image
    im = Image.open(io.BytesIO(FACE)).convert("RGB").resize(size).convert(mode)
    bio = io.BytesIO(); im.save(bio, "PNG"); return bio.getvalue()


def http_cases():
    check_http("GET /nope", *http("GET", "/nope"))
    check_http("GET /v1/../../etc/passwd", *http("GET", "/v1/../../etc/passwd"))
    check_http("GET /static/../server.py", *http("GET", "/static/..%2f..%2fserver.py"))
    check_http("GET /v1/portraits/bogus", *http("GET", "/v1/portraits/bogus"))
    check_http("GET /v1/portraits/" + "x" * 5000, *http("GET", "/v1/portraits/" + "x" * 5000))
    check_http("GET /v1/portraits/%00", *http("GET", "/v1/portraits/%00"))
    check_http("DELETE /health", *http("DELETE", "/health"))
    check_http("GET /v1/generate", *http("GET", "/v1/generate"))
    check_http("POST /v1/generate no body", *http("POST", "/v1/generate"))
    check_http("POST /v1/generate json body", *http("POST", "/v1/generate", b'{"image": 1}', "application/json"))
    check_http("POST /v1/generate garbage multipart", *http("POST", "/v1/generate", b"garbage\r\n--x", "multipart/form-data; boundary=x"))
    check_http("POST /v1/generate multipart no boundary", *http("POST", "/v1/generate", b"abc", "multipart/form-data"))
    check_http("POST /v1/generate huge content-length", *http("POST", "/v1/generate", b"x" * 10, "multipart/form-data; boundary=x", {"Content-Length": "10"}))
    post("generate: missing audio", "/v1/generate", [IMG])
    post("generate: missing image", "/v1/generate", [AUD])
    post("generate: image text", "/v1/generate", [("image", ("a.png", TXT)), AUD])
    post("generate: image empty", "/v1/generate", [("image", ("a.png", b"")), AUD])
    post("generate: image truncated", "/v1/generate", [("image", ("a.png", FACE[:100])), AUD])
    post("generate: image as a field not file", "/v1/generate", [("image", "notafile"), AUD])
    post("generate: audio text", "/v1/generate", [IMG, ("audio", ("a.wav", TXT))])
    post("generate: audio empty", "/v1/generate", [IMG, ("audio", ("a.wav", b""))])
    post("generate: audio truncated header", "/v1/generate", [IMG, ("audio", ("a.wav", SPEECH[:44]))])
    post("generate: audio is png", "/v1/generate", [IMG, ("audio", ("a.wav", FACE))])
    post("generate: audio NaN", "/v1/generate", [IMG, ("audio", ("a.wav", nan_wav()))])
    post("generate: audio silent (odd)", "/v1/generate", [IMG, ("audio", ("a.wav", silent_wav()))], expect_ok=True)
    post("generate: audio 48k stereo (odd)", "/v1/generate", [IMG, ("audio", ("a.wav", silent_wav(48000, 48000, 2)))], expect_ok=True)
    post("generate: image 1x1 (odd)", "/v1/generate", [("image", ("a.png", png_bytes((1, 1)))), AUD], expect_ok=True)
    post("generate: image 1x2000 (odd)", "/v1/generate", [("image", ("a.png", png_bytes((1, 2000)))), AUD], expect_ok=True)
    post("generate: image RGBA (odd)", "/v1/generate", [("image", ("a.png", png_bytes(mode="RGBA"))), AUD], expect_ok=True)
    for k, v in [("steps", "-1"), ("steps", "0"), ("steps", "100000"), ("steps", "abc"), ("steps", "1.5"), ("steps", "9" * 40),
                 ("cfg_audio", "nan"), ("cfg_audio", "inf"), ("cfg_audio", "-1"), ("cfg_audio", "1e400"), ("cfg_ref", "nan"),
                 ("seed", "-1"), ("seed", str(2 ** 63)), ("seed", "9" * 400), ("blink_rate", "99"), ("blink_rate", "-1"),
                 ("blink_rate", "nan"), ("blink_rate", "inf"), ("detector", "foo"), ("detector", ""), ("steps", ""),
                 ("cfg_audio", "")]:
        post(f"generate: {k}={v[:30]}", "/v1/generate", [IMG, AUD, (k, v)])
    post("generate: unknown field", "/v1/generate", [IMG, AUD, ("bogus", "1"), ("steps", "-5")])
    post("generate: huge text field", "/v1/generate", [IMG, AUD, ("detector", "x" * 2_000_000)])
    post("generate: over 20 MB", "/v1/generate", [IMG, ("audio", ("a.wav", b"\0" * (21 * 2 ** 20)))])
    post("generate: filename traversal", "/v1/generate", [("image", ("../../../../tmp/evil.png", TXT)), AUD])
    post("generate: non-ascii filename", "/v1/generate", [("image", ("fäce☃.png", FACE)), ("audio", ("späch.wav", TXT))])
    post("portraits: missing image", "/v1/portraits", [])
    post("portraits: text image", "/v1/portraits", [("image", ("a.png", TXT))])
    post("portraits: empty image", "/v1/portraits", [("image", ("a.png", b""))])
    post("portraits: wav as image", "/v1/portraits", [("image", ("a.png", SPEECH))])
    post("portraits: detector foo", "/v1/portraits", [IMG, ("detector", "foo")])
    post("portraits: 1x2000 (odd)", "/v1/portraits", [("image", ("a.png", png_bytes((1, 2000))))], expect_ok=True)
    post("portraits: 16-bit (odd)", "/v1/portraits", [("image", ("a.png", png_bytes(mode="I;16")))], expect_ok=True)
    post("portraits: 1x1 (odd)", "/v1/portraits", [("image", ("a.png", png_bytes((1, 1))))], expect_ok=True)
    # decompression bomb header
    import zlib
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    post("portraits: bomb header", "/v1/portraits", [("image", ("a.png", bomb))])
    check_http("POST /v1/portraits json", *http("POST", "/v1/portraits", b"[]", "application/json"))
    check_http("POST /health", *http("POST", "/health", b"x", "text/plain"))


async def ws_case(name, send_steps, expect="error"):
    """send_steps: list of items (str -> text, bytes -> binary, ("sleep", s)). Expect an error message + close."""
    problems, got = [], []
    try:
        async with websockets.connect(WSURL, max_size=None, open_timeout=20) as ws:
            for item in send_steps:
                if isinstance(item, tuple):
                    await asyncio.sleep(item[1]); continue
                await ws.send(item)
            try:
                while True:
                    m = await asyncio.wait_for(ws.recv(), timeout=40)
                    got.append(m if isinstance(m, str) else f"<{len(m)} bytes>")
                    if isinstance(m, str) and '"error"' in m:
                        break
                    if isinstance(m, str) and json.loads(m).get("type") == "end":
                        break
                    if len(got) > 400:
                        break
            except websockets.ConnectionClosed as e:
                got.append(f"closed {e.code} {e.reason}")
            except asyncio.TimeoutError:
                got.append("TIMEOUT waiting")
            code = ws.close_code
    except Exception as e:
        got.append(f"EXC {e!r}")
        code = None
    errs = [g for g in got if isinstance(g, str) and '"type": "error"' in g or '"type":"error"' in g]
    if expect == "error":
        if not errs:
            problems.append("no error message")
        else:
            try:
                j = json.loads(errs[0])
                st = j.get("status")
                if not (isinstance(st, int) and 400 <= st < 500):
                    problems.append(f"status {st}")
                if "\n" in str(j.get("message")):
                    problems.append("multi-line message")
            except Exception:
                problems.append("error not JSON")
    if any("Traceback" in str(g) for g in got):
        problems.append("traceback")
    if not health():
        problems.append("SERVER DOWN")
    text = " | ".join(str(g)[:200] for g in got[:4])
    results.append(dict(kind="ws", name=name, got=text, problems=problems))
    print(("FAIL " + "; ".join(problems) if problems else "ok"), "WS", name[:80], "::", text[:300], flush=True)


def start(**kw):
    d = {"type": "start", "portrait": base64.b64encode(FACE).decode()}
    d.update(kw)
    return json.dumps({k: v for k, v in d.items() if v is not ...})


async def ws_cases():
    pcm = np.zeros(1600, np.float32).tobytes()
    E = json.dumps({"type": "end"})
    await ws_case("not JSON", ["hello there"])
    await ws_case("JSON list", ["[1,2,3]"])
    await ws_case("JSON null", ["null"])
    await ws_case("JSON string", ['"start"'])
    await ws_case("type missing", ['{"portrait": "x"}'])
    await ws_case("type wrong", ['{"type": "stop"}'])
    await ws_case("missing portrait", ['{"type": "start"}'])
    await ws_case("both portrait and id", [start(portrait_id="abc")])
    await ws_case("portrait_id unknown", ['{"type": "start", "portrait_id": "nope"}'])
    await ws_case("portrait not base64", [start(portrait="!!!notbase64$$$")])
    await ws_case("portrait base64 of text", [start(portrait=base64.b64encode(TXT).decode())])
    await ws_case("portrait empty string", [start(portrait="")])
    await ws_case("portrait is a number", [start(portrait=12345)])
    await ws_case("portrait nested", [start(portrait={"a": [None]})])
    await ws_case("portrait 1x2000 (odd)", [start(portrait=base64.b64encode(png_bytes((1, 2000))).decode()), pcm, E], expect="any")
    for k, v in [("steps", -1), ("steps", 0), ("steps", 10 ** 9), ("steps", "four"), ("steps", 1.5), ("cfg_audio", float("nan")),
                 ("cfg_audio", float("inf")), ("cfg_ref", -1), ("seed", -1), ("seed", 2 ** 70), ("blink_rate", 99), ("blink_rate", -1),
                 ("blink_rate", float("nan")), ("sample_rate", 44100), ("sample_rate", 0), ("sample_rate", "x"), ("pcm", "mp3"),
                 ("format", "gif"), ("detector", "foo"), ("preview_every", -1), ("preview_every", 10 ** 9), ("bogus", 1),
                 ("steps", None), ("seed", True)]:
        await ws_case(f"start {k}={str(v)[:20]}", [start(**{k: v})], expect="any" if (k, v) in (("steps", None), ("seed", True), ("preview_every", 10 ** 9)) else "error")
    await ws_case("binary before start", [pcm])
    await ws_case("empty binary before start", [b""])
    await ws_case("odd-length s16 chunk", [start(pcm="s16le"), b"\x01\x02\x03"])
    await ws_case("f32 chunk not multiple of 4", [start(), b"\0" * 7])
    await ws_case("NaN pcm", [start(), np.full(1600, np.nan, np.float32).tobytes(), E])
    await ws_case("inf pcm", [start(), np.full(1600, np.inf, np.float32).tobytes(), E])
    await ws_case("huge-amplitude pcm (odd)", [start(), np.full(1600, 1e30, np.float32).tobytes(), E], expect="any")
    await ws_case("second start", [start(), start()])
    await ws_case("text garbage after start", [start(), "garbage"])
    await ws_case("unknown type after start", [start(), '{"type": "pause"}'])
    await ws_case("over-size message", [start(), b"\0" * (21 * 2 ** 20)])
    await ws_case("huge text start", ["{" + '"a":1,' * 100000 + '"type":"start"}'])


def main():
    assert health(), "server not up"
    http_cases()
    asyncio.run(ws_cases())
    Path("/work/runs/probe/serve_results.json").write_text(json.dumps(results, indent=1))
    print(len(results), "server cases;", sum(bool(r["problems"]) for r in results), "failures")


if __name__ == "__main__":
    main()
