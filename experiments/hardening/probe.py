"""Hostile bad-input probe of the lipstep CLI. Run: /work/main/.venv/bin/python probe.py [filter]"""
import json, os, shutil, struct, subprocess, sys, time, zlib, math
from pathlib import Path
import numpy as np
from PIL import Image
import soundfile as sf

ROOT = Path("/work/runs/probe")
FX = ROOT / "fx"
CASES = ROOT / "cases"
LIP = "/work/main/.venv/bin/lipstep"
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
ENV.pop("LIPSTEP_DEBUG", None)

# ------------------------------------------------------------------ fixture makers (relative to case cwd)

def txt(p, s="this is just some text, not media\n"):
    p = Path(p); p.parent.mkdir(parents=True, exist_ok=True); p.write_text(s)

def empty(p):
    p = Path(p); p.parent.mkdir(parents=True, exist_ok=True); p.write_bytes(b"")

def trunc(src, dst, n):
    Path(dst).write_bytes(Path(src).read_bytes()[:n])

def cp(src, dst):
    src = Path(src)
    (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)

def wav(p, x, sr=16000, subtype=None):
    sf.write(p, x, sr, subtype=subtype)

def png(p, mode="RGB", size=(64, 64), bits16=False):
    base = Image.open(FX / "face.png").convert("RGB").resize(size)
    if bits16:
        a = (np.asarray(base.convert("L")).astype(np.uint16) * 257)
        Image.fromarray(a).save(p); return
    base.convert(mode).save(p)

def bomb_png(p, w=30000, h=30000):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    Path(p).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))

def lying_wav(p):
    """RIFF header claiming 2 GB of data, 100 bytes present."""
    hdr = b"RIFF" + struct.pack("<I", 0x7ffffff0) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16) + b"data" + struct.pack("<I", 0x7fffff00)
    Path(p).write_bytes(hdr + b"\0" * 100)

def video_only(p, n=10):
    import av
    c = av.open(str(p), "w"); s = c.add_stream("mpeg4", rate=25); s.width = s.height = 64; s.pix_fmt = "yuv420p"
    for i in range(n):
        f = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 10, np.uint8), format="rgb24")
        for pk in s.encode(f): c.mux(pk)
    for pk in s.encode(): c.mux(pk)
    c.close()

def speech(p="speech.wav"):
    cp(FX / "speech.wav", p)

def face(p="face.png"):
    cp(FX / "face.png", p)

def gen_inputs():
    face(); speech()

def model_copy(name="lite", dst="mdl"):
    cp(FX / name, dst)

def setj(p, obj):
    Path(p).write_text(obj if isinstance(obj, str) else json.dumps(obj))

def edit_json(p, fn):
    d = json.loads(Path(p).read_text()); fn(d); Path(p).write_text(json.dumps(d))

# ------------------------------------------------------------------ case registry
cases = []

def case(verb, args, setup=None, kind="bad", timeout=120, name=None, snap_ignore=()):
    cases.append(dict(verb=verb, args=args, setup=setup, kind=kind, timeout=timeout, name=name or " ".join(args)))

G = ["generate", "-i", "face.png", "-a", "speech.wav", "-o", "out.mp4", "-m", "lite"]

def gen(extra_args=(), setup=None, kind="bad", base=None, **kw):
    b = list(base or G)
    case("generate", b + list(extra_args), setup=lambda: (gen_inputs(), setup and setup()), kind=kind, **kw)

def gen_img(setup_img, kind="bad", img="face.png"):
    def s():
        speech(); setup_img()
    a = list(G); a[2] = img
    case("generate", a, setup=s, kind=kind)

def gen_aud(setup_aud, kind="bad", aud="speech.wav"):
    def s():
        face(); setup_aud()
    a = list(G); a[4] = aud
    case("generate", a, setup=s, kind=kind)

# ---- generate: images
gen_img(lambda: None)  # missing image
gen_img(lambda: empty("face.png"))
gen_img(lambda: txt("face.png"))
gen_img(lambda: trunc(FX / "face.png", "face.png", 100))
gen_img(lambda: trunc(FX / "face.png", "face.png", 8))
gen_img(lambda: os.mkdir("face.png"))
gen_img(lambda: cp(FX / "speech.wav", "face.png"))
gen_img(lambda: bomb_png("face.png"))
gen_img(lambda: bomb_png("face.png", 1, 1))  # valid header, broken IDAT
gen_img(lambda: txt("face.svg", "<svg xmlns='http://www.w3.org/2000/svg'/>"), img="face.svg")
gen_img(lambda: png("face.png", "L"), kind="odd")
gen_img(lambda: png("face.png", "RGBA"), kind="odd")
gen_img(lambda: png("face.png", "P"), kind="odd")
gen_img(lambda: png("face.png", "1"), kind="odd")
gen_img(lambda: png("face.png", bits16=True), kind="odd")
gen_img(lambda: png("face.png", size=(1, 1)), kind="odd")
gen_img(lambda: png("face.png", size=(1, 2000)), kind="odd")
gen_img(lambda: png("face.png", size=(3000, 2)), kind="odd")
gen_img(lambda: png("face.jpg", "CMYK"), kind="odd", img="face.jpg")
gen_img(lambda: png("face.webp"), kind="odd", img="face.webp")
gen_img(lambda: Image.open(FX / "face.png").save("face.gif", save_all=True, append_images=[Image.open(FX / "face.png").rotate(30)]), kind="odd", img="face.gif")
gen_img(lambda: face("fäce☃.png"), kind="odd", img="fäce☃.png")
gen_img(lambda: face("f" * 250 + ".png"), kind="odd", img="f" * 250 + ".png")
gen_img(lambda: (os.mkdir("sub"), face("face.png")), kind="odd", img="sub/../face.png")
gen_img(lambda: None, img="f" * 300 + ".png")  # name too long
gen_img(lambda: cp(FX / "out.mp4", "face.mp4"), kind="odd", img="face.mp4")
gen_img(lambda: np.save("face.npy", np.zeros((4, 4))), img="face.npy")
gen_img(lambda: txt("face.png", "\x89PNG\r\n\x1a\n garbage"))

# ---- generate: audio
gen_aud(lambda: None)
gen_aud(lambda: empty("speech.wav"))
gen_aud(lambda: txt("speech.wav"))
gen_aud(lambda: trunc(FX / "speech.wav", "speech.wav", 44))
gen_aud(lambda: trunc(FX / "speech.wav", "speech.wav", 20))
gen_aud(lambda: trunc(FX / "speech.wav", "speech.wav", 20000), kind="odd")
gen_aud(lambda: lying_wav("speech.wav"), kind="odd")
gen_aud(lambda: os.mkdir("speech.wav"))
gen_aud(lambda: cp(FX / "face.png", "speech.wav"))
gen_aud(lambda: wav("speech.wav", np.zeros(16000, np.float32)), kind="odd")  # silent
gen_aud(lambda: wav("speech.wav", np.full(16000, np.nan, np.float32), subtype="FLOAT"))
gen_aud(lambda: wav("speech.wav", np.where(np.arange(16000) % 100 == 0, np.nan, 0.1).astype(np.float32), subtype="FLOAT"))
gen_aud(lambda: wav("speech.wav", np.full(16000, np.inf, np.float32), subtype="FLOAT"))
gen_aud(lambda: wav("speech.wav", np.full(16000, 1e30, np.float32), subtype="FLOAT"), kind="odd")
gen_aud(lambda: wav("speech.wav", np.random.default_rng(0).standard_normal((48000, 2)).astype(np.float32) * 0.1, 48000), kind="odd")
gen_aud(lambda: wav("speech.wav", np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1, 8000), kind="odd")
gen_aud(lambda: wav("speech.wav", np.zeros(1, np.float32)), kind="odd")
gen_aud(lambda: wav("speech.wav", np.zeros(0, np.float32)))
gen_aud(lambda: wav("speech.wav", np.zeros((16000, 8), np.float32)), kind="odd")
gen_aud(lambda: wav("speech.wav", np.zeros(16000, np.float32), 1), kind="odd")  # 1 Hz sample rate
gen_aud(lambda: wav("speech.flac", np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1, 44100), kind="odd", aud="speech.flac")
gen_aud(lambda: cp(FX / "out.mp4", "speech.mp4"), kind="odd", aud="speech.mp4")
gen_aud(lambda: video_only("speech.mp4"), aud="speech.mp4")
gen_aud(lambda: txt("speech.mp3"), aud="speech.mp3")
gen_aud(lambda: speech("späch ☃.wav"), kind="odd", aud="späch ☃.wav")

# ---- generate: numbers and options
for extra in (["--steps", "0"], ["--steps", "-1"], ["--steps", "1000000000"], ["--steps", "99999999999999999999"],
              ["--cfg-audio", "nan"], ["--cfg-audio", "inf"], ["--cfg-audio", "-inf"], ["--cfg-audio", "-5"],
              ["--cfg-audio", "1e308"], ["--cfg-ref", "nan"], ["--cfg-ref", "-1e400"],
              ["--seed", "-1"], ["--seed", str(2**63)], ["--seed", "1.5"],
              ["--max-seconds", "0"], ["--max-seconds", "-1"], ["--max-seconds", "nan"], ["--max-seconds", "0.1"],
              ["--max-seconds", "inf"],
              ["--threads", "0"], ["--threads", "-1"], ["--threads", "100000"],
              ["--runtime", "foo"], ["--runtime", "onnx"], ["--runtime", "onnx-int8"], ["--emit", "foo"],
              ["--blink-rate", "-1"], ["--blink-rate", "nan"], ["--blink-rate", "inf"], ["--blink-rate", "99"],
              ["--detector", "foo"], ["--detector", ""], ["--device", "foo"], ["--device", "cuda"], ["--device", "cuda:99"],
              ["--device", "meta"], ["--model", "nonexistent"], ["--model", ""], ["--model", "../../etc"],
              ["--model", "speech.wav"], ["--bogus-option"], ["extra_positional"], ["--steps"]):
    gen(extra, kind="odd" if extra in (["--max-seconds", "inf"], ["--threads", "100000"]) else "bad")
for out in ("out.txt", "out", "nodir/out.mp4", "../out_escape_probe.mp4", "o" * 300 + ".mp4", "speech.wav", "face.png", "."):
    a = list(G); a[6] = out
    case("generate", a, setup=gen_inputs, kind="odd" if out.startswith("..") else "bad")
a = list(G); a[6] = "out.mp4"
case("generate", a, setup=lambda: (gen_inputs(), os.mkdir("out.mp4")))
case("generate", G[:6] + ["lat.mp4", "-m", "lite", "--emit", "latents"], setup=gen_inputs)
case("generate", G[:6] + ["lat.safetensors", "-m", "lite"], setup=gen_inputs)

# ---- generate: damaged model dirs
def dmg(fn, src="lite"):
    def s():
        gen_inputs(); model_copy(src); fn()
    return s
GM = G[:-1] + ["mdl"]
for label, fn in [
    ("lipstep.json text", lambda: txt("mdl/lipstep.json")),
    ("lipstep.json empty", lambda: empty("mdl/lipstep.json")),
    ("lipstep.json list", lambda: setj("mdl/lipstep.json", [1, 2])),
    ("lipstep.json string", lambda: setj("mdl/lipstep.json", '"hello"')),
    ("lipstep.json null", lambda: setj("mdl/lipstep.json", "null")),
    ("lipstep.json {}", lambda: setj("mdl/lipstep.json", {})),
    ("lipstep.json missing", lambda: os.remove("mdl/lipstep.json")),
    ("lipstep.json dir", lambda: (os.remove("mdl/lipstep.json"), os.mkdir("mdl/lipstep.json"))),
    ("sampler list", lambda: edit_json("mdl/lipstep.json", lambda d: d.update(sampler=[1]))),
    ("sampler nested garbage", lambda: edit_json("mdl/lipstep.json", lambda d: d.update(sampler={"name": {"x": [None]}}))),
    ("sampler steps -3", lambda: edit_json("mdl/lipstep.json", lambda d: d["sampler"].update(steps=-3))),
    ("sampler steps str", lambda: edit_json("mdl/lipstep.json", lambda d: d["sampler"].update(steps="four"))),
    ("sampler name bogus", lambda: edit_json("mdl/lipstep.json", lambda d: d["sampler"].update(name="bogus"))),
    ("frames 0", lambda: edit_json("mdl/lipstep.json", lambda d: d.update(frames=0))),
    ("frames huge", lambda: edit_json("mdl/lipstep.json", lambda d: d.update(frames=10**9))),
    ("fps nan", lambda: setj("mdl/lipstep.json", Path("mdl/lipstep.json").read_text().replace('"fps": 25.0', '"fps": NaN'))),
    ("fps 0", lambda: edit_json("mdl/lipstep.json", lambda d: d.update(fps=0))),
    ("sample_rate -1", lambda: edit_json("mdl/lipstep.json", lambda d: d.update(sample_rate=-1))),
    ("image_size 65", lambda: edit_json("mdl/lipstep.json", lambda d: d.update(image_size=65))),
    ("motion_frames > frames", lambda: edit_json("mdl/lipstep.json", lambda d: d.update(motion_frames=20))),
    ("unknown key", lambda: edit_json("mdl/lipstep.json", lambda d: d.update(bogus=1))),
    ("format 99", lambda: edit_json("mdl/lipstep.json", lambda d: d.update(format=99))),
    ("kind bogus", lambda: edit_json("mdl/lipstep.json", lambda d: d.update(kind="bogus"))),
    ("schedule bogus", lambda: edit_json("mdl/lipstep.json", lambda d: d.update(schedule="bogus"))),
    ("blinks nan", lambda: setj("mdl/lipstep.json", Path("mdl/lipstep.json").read_text().replace('"blinks_per_second": 0.2583', '"blinks_per_second": NaN'))),
    ("blinks -1", lambda: edit_json("mdl/lipstep.json", lambda d: d.update(blinks_per_second=-1))),
    ("components ../..", lambda: edit_json("mdl/lipstep.json", lambda d: d.update(components="../../fx/turbo1"))),
    ("components self", lambda: edit_json("mdl/lipstep.json", lambda d: d.update(components="."))),
    ("components abs", lambda: edit_json("mdl/lipstep.json", lambda d: d.update(components="/etc"))),
    ("components nonexist", lambda: edit_json("mdl/lipstep.json", lambda d: d.update(components="nope"))),
    ("trained list", lambda: edit_json("mdl/lipstep.json", lambda d: d.update(trained=[1]))),
    ("denoiser safetensors text", lambda: txt("mdl/denoiser/model.safetensors")),
    ("denoiser safetensors empty", lambda: empty("mdl/denoiser/model.safetensors")),
    ("denoiser safetensors trunc", lambda: trunc(FX / "lite/denoiser/model.safetensors", "mdl/denoiser/model.safetensors", 5000)),
    ("denoiser safetensors missing", lambda: os.remove("mdl/denoiser/model.safetensors")),
    ("denoiser checksums garbage", lambda: txt("mdl/denoiser/checksums.json")),
    ("denoiser checksums removed", lambda: os.remove("mdl/denoiser/checksums.json")),
    ("denoiser safetensors swapped (eyes)", lambda: cp(FX / "lite/eyes/model.safetensors", "mdl/denoiser/model.safetensors")),
    ("denoiser config text", lambda: txt("mdl/denoiser/config.json")),
    ("denoiser config list", lambda: setj("mdl/denoiser/config.json", [])),
    ("denoiser config width str", lambda: edit_json("mdl/denoiser/config.json", lambda d: d.update({k: "x" for k in list(d)[1:2]}))),
    ("codec config text", lambda: txt("mdl/codec/config.json")),
    ("codec config null", lambda: setj("mdl/codec/config.json", "null")),
    ("codec config kind bogus", lambda: edit_json("mdl/codec/config.json", lambda d: d.update(kind="bogus"))),
    ("codec dir missing", lambda: shutil.rmtree("mdl/codec")),
    ("audio config text", lambda: txt("mdl/audio/config.json")),
    ("audio config nested", lambda: setj("mdl/audio/config.json", {"a": {"b": [{"c": None}]}})),
    ("eyes safetensors text", lambda: txt("mdl/eyes/model.safetensors")),
    ("eyes config garbage", lambda: setj("mdl/eyes/config.json", [None])),
    ("model dir is a file", lambda: (shutil.rmtree("mdl"), txt("mdl"))),
    ("model dir empty", lambda: (shutil.rmtree("mdl"), os.mkdir("mdl"))),
]:
    case("generate", GM, setup=dmg(fn), name=f"generate -m mdl [{label}]")
case("generate", GM, setup=dmg(lambda: (shutil.rmtree("mdl/codec"), cp(FX / "trun/model/codec", "mdl/codec"), edit_json("mdl/codec/config.json", lambda d: None))), name="generate -m mdl [codec from another run]", kind="odd")

# ---- decode
def dec_setup(fn=None):
    def s():
        cp(FX / "lat.safetensors", "lat.safetensors")
        if fn: fn()
    return s
D = ["decode", "lat.safetensors", "out.mp4"]
case("decode", D, setup=lambda: None)
for label, fn in [("text", lambda: txt("lat.safetensors")), ("empty", lambda: empty("lat.safetensors")),
                  ("trunc", lambda: trunc(FX / "lat.safetensors", "lat.safetensors", 3000)),
                  ("trunc half", lambda: trunc(FX / "lat.safetensors", "lat.safetensors", 700000)),
                  ("dir", lambda: (os.remove("lat.safetensors"), os.mkdir("lat.safetensors"))),
                  ("a model's weights", lambda: cp(FX / "lite/denoiser/model.safetensors", "lat.safetensors")),
                  ("header json garbage", lambda: Path("lat.safetensors").write_bytes(struct.pack("<Q", 10) + b"[1,2,3]   ")),
                  ("header huge len", lambda: Path("lat.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")),
                  ("metadata damaged", lambda: _damage_lat_meta()),
                  ("metadata values nan", lambda: _damage_lat_meta(nan=True))]:
    case("decode", D, setup=dec_setup(fn), name=f"decode [{label}]")
for extra in (["-m", "teacher"], ["-m", "turbo1"], ["-m", "nonexistent"], ["-m", "mdl"]):
    case("decode", D + extra, setup=dec_setup(lambda: model_copy("lite") if False else txt("mdl")), kind="odd" if extra[1] in ("turbo1",) else "bad")
for out in ("out.txt", "nodir/out.mp4", "lat.safetensors", "out"):
    case("decode", ["decode", "lat.safetensors", out], setup=dec_setup())


def _damage_lat_meta(nan=False):
    from safetensors import safe_open
    from safetensors.numpy import save_file
    with safe_open(str(FX / "lat.safetensors"), "np") as f:
        meta = dict(f.metadata() or {}); t = {k: f.get_tensor(k) for k in f.keys()}
    for k in list(meta):
        meta[k] = "NaN" if nan else "{garbage"
    if nan:
        for k in t:
            if t[k].dtype.kind == "f": t[k] = np.full_like(t[k], np.nan)
    save_file(t, "lat.safetensors", metadata=meta)

# ---- say
for args, kind in [(["", "-o", "x.wav"], "bad"), (["   ", "-o", "x.wav"], "bad"), (["hello", "-o", "x.txt"], "bad"),
                   (["hello", "-o", "x"], "bad"), (["hello", "-o", "nodir/x.wav"], "bad"), (["hello", "-o", "."], "bad"),
                   (["hello", "-o", "x.wav", "--rate", "0"], "bad"), (["hello", "-o", "x.wav", "--rate", "-5"], "bad"),
                   (["hello", "-o", "x.wav", "--rate", "100000"], "bad"), (["hello", "-o", "x.wav", "--pitch", "100"], "bad"),
                   (["hello", "-o", "x.wav", "--pitch", "-1"], "bad"), (["hello", "-o", "x.wav", "--voice", "xx-garbage"], "bad"),
                   (["hello", "-o", "x.wav", "--voice", "../../../etc/passwd"], "bad"), (["hello", "-o", "x.wav", "--voice", ""], "bad"),
                   (["héllo wörld ☃ 你好", "-o", "x.wav"], "odd"), (["\x01\x02\x03", "-o", "x.wav"], "bad"),
                   (["!!! ??? ...", "-o", "x.wav"], "odd"), (["hello", "-o", "x" * 300 + ".wav"], "bad"),
                   (["hello", "-o", "x.wav", "--rate", "abc"], "bad"), (["hello", "-o", "x.mp4"], "bad"),
                   (["<speak>hello</speak>", "-o", "x.wav"], "odd"), (["hello " * 3000, "-o", "x.wav"], "odd")]:
    case("say", ["say"] + args, kind=kind)
case("say", ["say", "hello", "-o", "x.wav"], setup=lambda: os.mkdir("x.wav"))

# ---- synth
S = ["synth", "--out", "w", "--identities", "1", "--clips-per-identity", "1", "--seconds", "0.5", "--size", "32", "--workers", "1"]
def synth(extra, kind="bad", setup=None, base=None):
    case("synth", (base or S) + extra, setup=setup, kind=kind)
for extra in (["--identities", "0"], ["--identities", "-1"], ["--identities", "1000000000"], ["--clips-per-identity", "0"],
              ["--clips-per-identity", "-3"], ["--seconds", "0"], ["--seconds", "-1"], ["--seconds", "nan"], ["--seconds", "inf"],
              ["--seconds", "1e9"], ["--size", "0"], ["--size", "16"], ["--size", "100000"], ["--size", "33"], ["--seed", "-1"],
              ["--quality", "foo"], ["--workers", "-1"], ["--workers", "100000"],
              ["foo=1"], ["size=abc"], ["size="], ["=5"], ["novalue"], ["moderate=5"], ["moderate.offset_prob=2"],
              ["moderate.nope=1"], ["rate_range=abc"], ["rate_range=[1]"], ["rate_range=[200,100]"], ["crf=-1"],
              ["blinks_per_second=nan"], ["identities=1e99"], ["ünïcode=1"], ["sise=64"], ["moderate.offset_prob=nan"],
              ["val_fraction=0.9", "test_fraction=0.9"], ["rate_range=[1e9,2e9]"], ["seed=-5"], ["lead_silence=[-1,-2]"],
              ["head_motion=inf"], ["quality=moderate", "moderate.compress_crf=999"], ["rate_range={\"a\":1}"],
              ["rate_range=null"]):
    synth(extra)
synth([], setup=lambda: txt("w"))  # out is a file
synth([], setup=lambda: (os.mkdir("w"), txt("w/config.json")))
synth([], setup=lambda: (os.mkdir("w"), setj("w/config.json", [1])))
synth([], setup=lambda: (os.mkdir("w"), setj("w/config.json", "null")))
synth([], setup=lambda: (cp(FX / "w", "w"), txt("w/manifest.jsonl", "garbage\n{\n")), kind="odd")
synth([], setup=lambda: (cp(FX / "w", "w"), setj("w/config.json", {"identities": {"x": [None]}})))
synth([], setup=lambda: (cp(FX / "w", "w"), txt("w/clips/id0000_c00/clip.mp4")), kind="odd")
synth([], setup=lambda: (cp(FX / "w", "w"), txt("w/clips/id0000_c00/row.json", "[")), kind="odd")
synth([], base=["synth", "--out", "a/../" + "ü" * 3, "--identities", "1", "--clips-per-identity", "1", "--seconds", "0.5", "--size", "32", "--workers", "1"], kind="odd")

# ---- prepare
P = ["prepare", "w", "--out", "p", "--size", "32", "--workers", "1"]
def prep(setup, extra=(), kind="bad", base=None):
    case("prepare", (base or P) + list(extra), setup=setup, kind=kind)
W = lambda: cp(FX / "w", "w")
prep(None)
prep(lambda: txt("w"))
prep(lambda: os.mkdir("w"))
prep(lambda: (os.mkdir("w"), txt("w/a.mp4"), txt("w/b.mp4")))
prep(lambda: (os.mkdir("w"), empty("w/a.mp4")))
prep(lambda: (os.mkdir("w"), cp(FX / "face.png", "w/a.mp4")))
prep(lambda: (os.mkdir("w"), video_only("w/a.mp4")))
prep(lambda: (W(), txt("w/manifest.jsonl", "garbage\n")))
prep(lambda: (W(), setj("w/manifest.jsonl", "[1,2]\n")))
prep(lambda: (W(), setj("w/manifest.jsonl", "null\n")))
prep(lambda: (W(), empty("w/manifest.jsonl")))
prep(lambda: (W(), txt("w/config.json")))
prep(lambda: (W(), setj("w/config.json", [1])))
prep(lambda: (W(), os.remove("w/config.json")), kind="odd")
prep(lambda: (W(), edit_json("w/config.json", lambda d: d.update(size="big"))))
prep(lambda: (W(), txt("w/identities.json")), kind="odd")
prep(lambda: (W(), [txt(f"w/clips/id000{i}_c00/clip.mp4") for i in range(3)]))
prep(lambda: (W(), [trunc(FX / f"w/clips/id000{i}_c00/clip.mp4", f"w/clips/id000{i}_c00/clip.mp4", 500) for i in range(3)]))
prep(lambda: (W(), txt("w/clips/id0000_c00/clip.mp4")), kind="odd")
prep(lambda: (W(), txt("w/clips/id0000_c00/labels.npz")), kind="odd")
prep(lambda: (W(), [txt(f"w/clips/id000{i}_c00/labels.npz") for i in range(3)]))
prep(lambda: (W(), txt("w/clips/id0000_c00/row.json", "{[")), kind="odd")
prep(lambda: (W(), [shutil.rmtree(f"w/clips/id000{i}_c00") for i in range(3)]))
for extra in (["--size", "0"], ["--size", "-1"], ["--size", "7"], ["--size", "100000"], ["--detector", "foo"],
              ["--workers", "-1"], ["foo=1"], ["size=abc"], ["novalue"], ["fps=0"], ["fps=nan"], ["sample_rate=-1"],
              ["mel.n_mels=0"], ["sise=3"]):
    prep(W, extra)
prep(lambda: (W(), txt("p")))
prep(W, base=["prepare", "w", "--out", "w", "--size", "32", "--workers", "1"], kind="odd")
prep(W, base=["prepare", "w", "--out", "w/clips", "--size", "32", "--workers", "1"], kind="odd")
prep(lambda: (W(), os.mkdir("p"), txt("p/config.json")))
prep(lambda: (W(), cp(FX / "p", "p"), setj("p/config.json", {"size": [None]})))
prep(lambda: (W(), cp(FX / "p", "p"), txt("p/manifest.jsonl", "garbage\n")))
prep(lambda: (W(), cp(FX / "p", "p"), txt("p/shards/id0000_c00.npz")), kind="odd")
prep(lambda: (W(), cp(FX / "p", "p")), extra=["--size", "64"], kind="odd")

# ---- train codec / teacher
PD = lambda: cp(FX / "p64", "p")
def pdmg(fn):
    return lambda: (PD(), fn())
C = ["train", "codec", "--data", "p", "--out", "c", "--steps", "1", "--batch", "2"]
for label, s, extra in [
    ("data missing", None, []), ("data is file", lambda: txt("p"), []), ("data empty dir", lambda: os.mkdir("p"), []),
    ("data is raw world", lambda: cp(FX / "w64", "p"), []),
    ("manifest garbage", pdmg(lambda: txt("p/manifest.jsonl", "garbage\n")), []),
    ("manifest list", pdmg(lambda: txt("p/manifest.jsonl", "[1]\n")), []),
    ("manifest empty", pdmg(lambda: empty("p/manifest.jsonl")), []),
    ("config text", pdmg(lambda: txt("p/config.json")), []),
    ("config null", pdmg(lambda: setj("p/config.json", "null")), []),
    ("all shards text", pdmg(lambda: [txt(f"p/shards/id000{i}_c00.npz") for i in range(3)]), []),
    ("all shards truncated", pdmg(lambda: [trunc(FX / f"p64/shards/id000{i}_c00.npz", f"p/shards/id000{i}_c00.npz", 300) for i in range(3)]), []),
    ("shards removed", pdmg(lambda: shutil.rmtree("p/shards")), []),
    ("steps 0", PD, ["--steps", "0"]), ("steps -1", PD, ["--steps", "-1"]), ("batch 0", PD, ["--batch", "0"]),
    ("batch -1", PD, ["--batch", "-1"]), ("kind foo", PD, ["codec.kind=foo"]), ("channels abc", PD, ["codec.block_out_channels=abc"]),
    ("channels []", PD, ["codec.block_out_channels=[]"]), ("channels neg", PD, ["codec.block_out_channels=[-1,-2]"]),
    ("unknown key", PD, ["codec.bogus=1"]), ("lr nan", PD, ["lr=nan"]), ("mistyped", PD, ["codek.kind=pixel"]),
    ("out is file", lambda: (PD(), txt("c")), []),
]:
    case("train codec", C + extra, setup=s, name=f"train codec [{label}]")
case("train codec", C + ["codec.kind=pixel"], setup=PD, kind="odd", name="train codec [pixel, valid]")

T = ["train", "teacher", "--data", "p", "--codec", "c", "--out", "run", "--preset", "tiny", "--steps", "1"]
CD = lambda: cp(FX / "lite/codec", "c")
for label, s, extra in [
    ("codec missing", PD, []), ("codec is file", lambda: (PD(), txt("c")), []),
    ("codec config text", lambda: (PD(), CD(), txt("c/config.json")), []),
    ("codec config list", lambda: (PD(), CD(), setj("c/config.json", [1])), []),
    ("codec empty dir", lambda: (PD(), os.mkdir("c")), []),
    ("codec/data size mismatch (32px data)", lambda: (cp(FX / "p", "p"), CD()), []),
    ("data missing", CD, []),
    ("preset huge", lambda: (PD(), CD()), ["--preset", "huge"]),
    ("steps -1", lambda: (PD(), CD()), ["--steps", "-1"]),
    ("batch 0", lambda: (PD(), CD()), ["--batch-size", "0"]),
    ("lr nan", lambda: (PD(), CD()), ["train.lr=nan"]),
    ("lr -1", lambda: (PD(), CD()), ["train.lr=-1"]),
    ("cfg abc", lambda: (PD(), CD()), ["sampler.cfg_audio=abc"]),
    ("unknown", lambda: (PD(), CD()), ["trian.lr=1"]),
    ("section=5", lambda: (PD(), CD()), ["train=5"]),
    ("resume no out", lambda: (PD(), CD()), ["--resume"]),
    ("resume out empty", lambda: (PD(), CD(), os.mkdir("run")), ["--resume"]),
]:
    case("train teacher", T + extra, setup=s, name=f"train teacher [{label}]")

def resume_setup(fn):
    def s():
        PD(); CD(); cp(FX / "trun", "run"); fn()
    return s
def all_ckpt(fn):
    for d in Path("run/checkpoints").glob("step_*"):
        fn(d)
TR = T[:-1] + ["2", "--resume"]
for label, fn in [
    ("run config text", lambda: txt("run/config.json")),
    ("run config list", lambda: setj("run/config.json", [1, 2])),
    ("run config string", lambda: setj("run/config.json", '"x"')),
    ("run config null", lambda: setj("run/config.json", "null")),
    ("run config nested garbage", lambda: edit_json("run/config.json", lambda d: d.update(train={"lr": {"x": [None]}}))),
    ("run config unknown key", lambda: edit_json("run/config.json", lambda d: d.update(bogus=1))),
    ("all train_state text", lambda: all_ckpt(lambda d: txt(d / "train_state.pt"))),
    ("all train_state truncated", lambda: all_ckpt(lambda d: trunc(d / "train_state.pt", d / "train_state.pt", 200))),
    ("all weights text", lambda: all_ckpt(lambda d: txt(d / "denoiser/model.safetensors"))),
    ("all checksums garbage", lambda: all_ckpt(lambda d: txt(d / "checksums.json"))),
    ("latest ../../", lambda: txt("run/checkpoints/latest", "../../../etc\n")),
    ("latest garbage + states gone", lambda: (txt("run/checkpoints/latest", "\x00\xff garbage"), all_ckpt(lambda d: os.remove(d / "train_state.pt")))),
    ("latest is dir", lambda: (os.remove("run/checkpoints/latest"), os.mkdir("run/checkpoints/latest"))),
    ("checkpoints is a file", lambda: (shutil.rmtree("run/checkpoints"), txt("run/checkpoints"))),
    ("ckpt dirs emptied", lambda: all_ckpt(lambda d: (shutil.rmtree(d), os.mkdir(d)))),
    ("train_state pickle bomb-ish", lambda: all_ckpt(lambda d: Path(d / "train_state.pt").write_bytes(b"\x80\x04cos\nsystem\n(S'true'\ntR."))),
]:
    case("train teacher", TR, setup=resume_setup(fn), name=f"train teacher --resume [{label}]", timeout=150)

# ---- evaluators/eyes/visemes
for sub in ("mouth-reader", "syncnet", "features", "identity", "evaluators", "eyes", "visemes"):
    base = ["train", sub, "--data", "p", "--out", "o"]
    case(f"train {sub}", base, setup=None, name=f"train {sub} [data missing]")
    case(f"train {sub}", base, setup=lambda: txt("p"), name=f"train {sub} [data is text file]")
    case(f"train {sub}", base, setup=lambda: cp(FX / "w64", "p"), name=f"train {sub} [data is raw world]")
    case(f"train {sub}", base, setup=pdmg(lambda: txt("p/manifest.jsonl", "{bad\n")), name=f"train {sub} [manifest garbage]")
    if sub not in ("evaluators",):
        case(f"train {sub}", base + ["--steps", "-1"], setup=PD, name=f"train {sub} [steps -1]")
        case(f"train {sub}", base + ["bogus=1"], setup=PD, name=f"train {sub} [unknown override]")
case("train evaluators", ["train", "evaluators", "--data", "p", "--out", "o", "--only", "foo"], setup=PD)
case("train eyes", ["train", "eyes", "--data", "p", "--out", "o", "--codec", "c"], setup=lambda: (PD(), os.mkdir("c"), txt("c/config.json")))
case("train eyes", ["train", "eyes", "--data", "p", "--out", "o", "--model", "nonexistent"], setup=PD)
case("train eyes", ["train", "eyes", "--data", "p", "--out", "o", "--model", "lite", "--codec", "c"], setup=lambda: (PD(), CD()))
case("train mouth-reader", ["train", "mouth-reader", "--data", "p", "--out", "o", "--codec", "c"], setup=lambda: (PD(), os.mkdir("c"), setj("c/config.json", [1])))
case("train visemes", ["train", "visemes", "--data", "p", "--out", "o", "--world", "w"], setup=lambda: (PD(), txt("w")))
case("train visemes", ["train", "visemes", "--data", "p", "--out", "o", "--world", "w"], setup=lambda: (PD(), cp(FX / "w64", "w"), txt("w/manifest.jsonl", "[")))
case("train", ["train", "bogus"])
case("train", ["train"], kind="odd")

# ---- distill
DS = {"perflow": ["distill", "perflow", "--teacher", "teacher"], "dmd": ["distill", "dmd", "--teacher", "teacher"],
      "adversarial": ["distill", "adversarial", "--student", "turbo1", "--teacher", "teacher"],
      "lite": ["distill", "lite", "--source", "turbo1", "--teacher", "teacher"]}
for sub, base in DS.items():
    b = base + ["--data", "p", "--out", "run", "--steps", "1", "--batch-size", "1"]
    case(f"distill {sub}", b, setup=None, name=f"distill {sub} [data missing]")
    case(f"distill {sub}", b, setup=lambda: cp(FX / "p", "p"), name=f"distill {sub} [32px data vs 64px teacher]")
    case(f"distill {sub}", b, setup=pdmg(lambda: [txt(f"p/shards/id000{i}_c00.npz") for i in range(3)]), name=f"distill {sub} [all shards text]")
    tb = list(b); tb[tb.index("--teacher") + 1] = "nonexistent"
    case(f"distill {sub}", tb, setup=PD, name=f"distill {sub} [teacher nonexistent]")
    tb = list(b); tb[tb.index("--teacher") + 1] = "mdl"
    case(f"distill {sub}", tb, setup=lambda: (PD(), model_copy("lite"), txt("mdl/lipstep.json")), name=f"distill {sub} [teacher lipstep.json text]")
    case(f"distill {sub}", tb, setup=lambda: (PD(), model_copy("lite"), txt("mdl/denoiser/model.safetensors")), name=f"distill {sub} [teacher weights text]")
    tb = list(b); tb[tb.index("--teacher") + 1] = "lite"
    case(f"distill {sub}", tb, setup=PD, name=f"distill {sub} [teacher is a student]", kind="odd")
    case(f"distill {sub}", b[:-4] + ["--steps", "-1"], setup=PD, name=f"distill {sub} [steps -1]")
    case(f"distill {sub}", b[:-2] + ["--batch-size", "0"], setup=PD, name=f"distill {sub} [batch 0]")
    case(f"distill {sub}", b + ["bogus.key=1"], setup=PD, name=f"distill {sub} [unknown override]")
    case(f"distill {sub}", b + ["--resume"], setup=PD, name=f"distill {sub} [--resume, no run]")
    case(f"distill {sub}", b + ["--resume"], setup=lambda: (PD(), os.mkdir("run"), setj("run/config.json", [None])), name=f"distill {sub} [--resume, config list]")
case("distill perflow", DS["perflow"] + ["--data", "p", "--out", "run", "student_steps=0"], setup=PD)
case("distill perflow", DS["perflow"] + ["--data", "p", "--out", "run", "mixed.mode=fixed:abc"], setup=PD)
case("distill dmd", DS["dmd"] + ["--data", "p", "--out", "run", "fake_lr=nan"], setup=PD)
case("distill dmd", DS["dmd"] + ["--data", "p", "--out", "run", "student_steps=-4"], setup=PD)
case("distill adversarial", ["distill", "adversarial", "--student", "nonexistent", "--teacher", "teacher", "--data", "p", "--out", "run"], setup=PD)
case("distill adversarial", ["distill", "adversarial", "--student", "teacher", "--teacher", "teacher", "--data", "p", "--out", "run", "--steps", "1"], setup=PD, kind="odd")
case("distill lite", DS["lite"] + ["--data", "p", "--out", "run", "width_factor=0"], setup=PD)
case("distill lite", DS["lite"] + ["--data", "p", "--out", "run", "identity_net=nonexistent_dir"], setup=PD)
case("distill", ["distill", "bogus"])

# ---- export
E = ["export", "lite", "o"]
for extra, s, kind in [([], lambda: txt("o"), "bad"), ([], lambda: (os.mkdir("o"), txt("o/x")), "bad"),
                       (["--steps", "0"], None, "bad"), (["--steps", "-1"], None, "bad"), (["--steps", "100000"], None, "bad"),
                       (["--blink-rate", "nan"], None, "bad"), (["--blink-rate", "-1"], None, "bad"), (["--blink-rate", "inf"], None, "bad"),
                       (["--eyes", "nonexistent"], None, "bad"), (["--eyes", "e"], lambda: txt("e"), "bad"),
                       (["--eyes", "e"], lambda: (os.mkdir("e"), txt("e/config.json"), txt("e/model.safetensors")), "bad"),
                       (["--eyes", "e"], lambda: cp(FX / "lite/denoiser", "e"), "bad"),
                       (["--quality-bar", "maybe"], None, "bad"), (["--evidence", "x"], None, "bad"),
                       (["--int8"], None, "bad"), (["--model", "teacher"], None, "bad"), (["--out", "o2"], None, "bad")]:
    case("export", E + extra, setup=s, kind=kind)
case("export", ["export", "nonexistent", "o"])
case("export", ["export"])
case("export", ["export", "lite"])
case("export", ["export", "mdl", "o"], setup=lambda: (model_copy("lite"), txt("mdl/lipstep.json")))
case("export", ["export", "mdl", "o"], setup=lambda: (model_copy("lite"), trunc(FX / "lite/denoiser/model.safetensors", "mdl/denoiser/model.safetensors", 999)))
case("export", ["export", "mdl", "o"], setup=lambda: (model_copy("lite"), edit_json("mdl/lipstep.json", lambda d: d.update(components="../.."))))
case("export", ["export", "mdl", "mdl"], setup=lambda: model_copy("lite"))
case("export", ["export", "mdl", "mdl/sub"], setup=lambda: model_copy("lite"))
case("export", ["export", "lite", "o", "--half"], kind="odd")
case("export", ["export", "turbo4", "o" * 300], kind="bad")

# ---- eval
EV = ["eval", "--data", "p", "--out", "o", "-m", "lite", "--max-clips", "1", "--seconds", "0.5", "--save-videos", "0"]
for extra, s in [([], None), ([], lambda: txt("p")), ([], lambda: cp(FX / "w64", "p")),
                 ([], pdmg(lambda: txt("p/manifest.jsonl", "x\n"))),
                 ([], pdmg(lambda: [txt(f"p/shards/id000{i}_c00.npz") for i in range(3)])),
                 ([], lambda: cp(FX / "p", "p")),
                 (["--split", "foo"], PD), (["--max-clips", "-1"], PD), (["--seconds", "-1"], PD), (["--seconds", "nan"], PD),
                 (["--audio-shift", "nan"], PD), (["--audio-shift", "inf"], PD), (["--long", "-1"], PD), (["--long", "nan"], PD),
                 (["--long", "inf"], PD), (["--long", "1", "--long-block", "0"], PD), (["--long", "1", "--identities", "-1"], PD),
                 (["--evaluators", "ev"], lambda: (PD(), txt("ev"))), (["--evaluators", "ev"], lambda: (PD(), os.mkdir("ev"))),
                 (["--syncnet", "s.model"], lambda: (PD(), txt("s.model"))), (["--inception", "i.pth"], lambda: (PD(), txt("i.pth"))),
                 (["--arcface", "a.onnx"], lambda: (PD(), txt("a.onnx"))), (["--i3d", "i3d.pt"], lambda: (PD(), txt("i3d.pt"))),
                 (["--weights-dir", "wd"], lambda: (PD(), txt("wd"))), (["--weights-dir", "wd"], lambda: (PD(), os.mkdir("wd"), txt("wd/syncnet_v2.model"))),
                 (["--runtime", "onnx"], PD), (["--runtime", "bogus"], PD), (["--save-videos", "-1"], PD),
                 (["--steps", "0"], PD), (["--cfg-audio", "nan"], PD), (["--device", "cuda"], PD), (["-m", "nonexistent"], PD),
                 ([], lambda: (PD(), txt("o")))]:
    case("eval", EV + extra, setup=s)

# ---- soak
SK = ["soak", "--data", "p", "--out", "o", "-m", "lite", "--seconds", "1", "--pace", "0", "--speech", "0.5", "--pause", "0.2", "--block", "1"]
for extra, s in [([], None), ([], lambda: txt("p")), ([], pdmg(lambda: txt("p/manifest.jsonl", "x\n"))),
                 (["--seconds", "-1"], PD), (["--seconds", "0"], PD), (["--seconds", "nan"], PD), (["--seconds", "inf"], PD),
                 (["--pace", "-1"], PD), (["--pace", "nan"], PD), (["--piece", "0"], PD), (["--piece", "-1"], PD),
                 (["--piece", "nan"], PD), (["--piece", "1e9"], PD), (["--speech", "0"], PD), (["--speech", "-1"], PD),
                 (["--pause", "-1"], PD), (["--pause", "nan"], PD), (["--block", "0"], PD), (["--block", "-1"], PD),
                 (["--identity", "99"], PD), (["--identity", "-1"], PD), (["--split", "foo"], PD),
                 (["--preview-every", "-1"], PD), (["--threads", "-1"], PD), (["--runtime", "onnx"], PD),
                 (["--steps", "0"], PD), (["--evaluators", "ev"], lambda: (PD(), txt("ev"))), (["-m", "mdl"], lambda: (PD(), model_copy("lite"), setj("mdl/lipstep.json", "null")))]:
    case("soak", SK + extra, setup=s)

# ---- bench
B = ["bench", "--out", "o", "--seconds", "0.5", "--repeats", "1", "--warmup", "0", "--models"]
for models, extra, s in [(["nonexistent"], [], None), (["lite@0"], [], None), (["lite@-1"], [], None), (["lite@abc"], [], None),
                         (["@"], [], None), (["lite@"], [], None), ([""], [], None), (["lite@100000"], [], None),
                         (["lite"], ["--threads", "0"], None), (["lite"], ["--threads", "-1"], None),
                         (["lite"], ["--runtime", "foo"], None), (["lite"], ["--runtime", "onnx"], None), (["lite"], ["--emit", "foo"], None),
                         (["lite"], ["--device-gflops", "abc"], None), (["lite"], ["--device-gflops", "rpi=-1"], None),
                         (["lite"], ["--device-gflops", "rpi=nan"], None), (["lite"], ["--device-gflops", "=5"], None),
                         (["lite"], ["--eval", "x=m.json"], lambda: txt("m.json")), (["lite"], ["--eval", "x=m.json"], lambda: setj("m.json", [1])),
                         (["lite"], ["--eval", "x=m.json"], lambda: setj("m.json", {"a": {"b": None}})),
                         (["lite"], ["--eval", "m.json"], lambda: setj("m.json", {})), (["lite"], ["--eval", "x=nonexistent.json"], None),
                         (["lite"], ["--metric", "bogus_metric"], None),
                         (["lite"], ["--seconds", "0"], None), (["lite"], ["--seconds", "-1"], None), (["lite"], ["--seconds", "nan"], None),
                         (["lite"], ["--repeats", "0"], None), (["lite"], ["--warmup", "-1"], None),
                         (["lite"], ["--image", "f.png"], lambda: txt("f.png")), (["lite"], ["--audio", "a.wav"], lambda: txt("a.wav")),
                         (["lite"], ["--audio", "a.wav"], lambda: wav("a.wav", np.full(8000, np.nan, np.float32), subtype="FLOAT")),
                         (["lite"], ["--cfg-audio", "inf"], None), (["lite", "mdl"], [], lambda: (model_copy("lite"), txt("mdl/denoiser/model.safetensors"))),
                         (["lite"], [], lambda: txt("o"))]:
    case("bench", B + models + extra, setup=s)

# ---- demo / models / top-level
for extra, s in [(["--bench-seconds", "-1"], None), (["--bench-seconds", "nan"], None), (["--model", "nonexistent"], None),
                 (["--out", "d"], lambda: txt("d")), (["--model", "mdl"], lambda: (model_copy("lite"), setj("mdl/lipstep.json", []))),
                 (["--bench-seconds", "inf"], None)]:
    case("demo", ["demo", "--out", "d"] + extra if "--out" not in extra else ["demo"] + extra, setup=s)
case("models", ["models", "extra"])
case("models", ["models", "--bogus"])
case("top", ["bogusverb"])
case("top", ["generate", "--imag", "x"])
case("top", [], kind="odd")

# ---- serve (bad options only; must fail fast)
for extra in (["--port", "-1"], ["--port", "70000"], ["--port", "abc"], ["--host", "bad host name!"], ["--host", "256.1.1.1"],
              ["--model", "nonexistent"], ["max_sessions=0"], ["workers=abc"], ["foo=1"], ["--device", "foo"],
              ["max_upload_mb=nan"], ["idle_timeout_s=-1"], ["jpeg_quality=101"], ["max_steps=0"], ["port=5"],
              ["--model", "mdl"], ["threads=-1"], ["max_audio_seconds=inf"]):
    s = (lambda: (model_copy("lite"), txt("mdl/lipstep.json"))) if extra == ["--model", "mdl"] else None
    case("serve", ["serve", "--port", "8799"] + extra if "--port" not in extra else ["serve"] + extra, setup=s, timeout=60,
         kind="odd" if extra == ["max_audio_seconds=inf"] else "bad")

# ------------------------------------------------------------------ runner
def snapshot(d):
    out = {}
    for p in Path(d).rglob("*"):
        try:
            st = p.lstat(); out[str(p.relative_to(d))] = (st.st_size, st.st_mtime_ns, p.is_dir())
        except OSError:
            pass
    return out

def stderr_lines(err):
    lines = []
    for raw in err.splitlines():
        segs = [s for s in raw.split("\r") if s.strip()]
        if segs:
            lines.append(segs[-1])
    return [l for l in lines if l.strip()]

def run_case(i, c):
    d = CASES / f"{i:03d}"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    esc = ROOT / "out_escape_probe.mp4"
    if esc.exists():
        esc.unlink()
    cwd0 = os.getcwd(); os.chdir(d)
    try:
        if c["setup"]:
            c["setup"]()
    finally:
        os.chdir(cwd0)
    before = snapshot(d)
    t0 = time.time()
    try:
        r = subprocess.run(["bash", "-c", "ulimit -v 10000000; exec nice -n 15 \"$0\" \"$@\"", LIP] + c["args"], cwd=d, env=ENV, capture_output=True, text=True,
                           timeout=c["timeout"], errors="replace")
        rc, out, err = r.returncode, r.stdout, r.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = "TIMEOUT", (e.stdout or b"").decode("utf8", "replace") if isinstance(e.stdout, bytes) else (e.stdout or ""), \
            (e.stderr or b"").decode("utf8", "replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    dt = time.time() - t0
    after = snapshot(d)
    new = sorted(k for k in after if k not in before)
    changed = sorted(k for k in after if k in before and after[k] != before[k] and not after[k][2])
    removed = sorted(k for k in before if k not in after)
    if esc.exists():
        new.append(str(esc))
    lines = stderr_lines(err)
    problems = []
    if rc == "TIMEOUT":
        problems.append("timeout")
    elif rc == 0:
        if c["kind"] == "bad":
            problems.append("accepted (rc 0)")
    else:
        if rc == 1 and "internal error" in err:
            problems.append("internal error (rc 1)")
        elif rc != 2:
            problems.append(f"rc {rc}")
        if "Traceback" in err:
            problems.append("traceback")
        if len(lines) != 1:
            problems.append(f"{len(lines)} stderr lines")
        if not lines or not lines[-1].startswith("error: "):
            problems.append("no 'error: ' line")
        if new:
            problems.append(f"left behind {new[:5]}")
        if changed:
            problems.append(f"modified {changed[:5]}")
        if removed:
            problems.append(f"removed {removed[:5]}")
    res = dict(i=i, verb=c["verb"], name=c["name"], args=c["args"], kind=c["kind"], rc=rc, secs=round(dt, 1),
               stderr=err[-1500:], stdout=out[-500:], new=new[:20], problems=problems)
    return res

if __name__ == "__main__":
    flt = sys.argv[1] if len(sys.argv) > 1 else None
    start = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    res_path = ROOT / "results.jsonl"
    print(f"{len(cases)} cases", flush=True)
    with open(res_path, "a") as fh:
        for i, c in enumerate(cases):
            if i < start or (flt and not c["verb"].startswith(flt)):
                continue
            if os.environ.get("PASS") and i % 2 != int(os.environ["PASS"]):
                continue
            r = run_case(i, c)
            fh.write(json.dumps(r) + "\n"); fh.flush()
            tag = "FAIL " + "; ".join(r["problems"]) if r["problems"] else "ok"
            print(f"{i:03d} [{r['verb']}] rc={r['rc']} {r['secs']}s {tag} :: {r['name'][:100]} :: {stderr_lines(r['stderr'])[-1:] }"[:400], flush=True)
