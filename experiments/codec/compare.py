"""Compare latent codecs on the held-out frames of a prepared directory: fidelity, lip-sync signal, speed, size.

    python experiments/codec/compare.py PREPARED --codec NAME=DIR [--codec NAME=DIR ...]
        [--split test] [--frames 1000] [--train-seconds NAME=S] [--out experiments/codec/results.jsonl]
        [--png experiments/codec/roundtrip.png]

For each codec, on `--frames` evenly spaced frames of `--split` (uint8 frames -> [-1, 1] -> encode ->
decode -> rounded back to uint8, as `lipstep.eval.mouthreader.reconstruct` does):

- ``psnr``: mean per-frame PSNR (dB, RGB, data range 255), each frame capped at 100 dB as `train_codec`
  reports it (an identical frame has infinite PSNR); ``psnr_min``: the worst frame; ``max_abs_err``: the
  largest absolute pixel difference (0 = bit-exact);
- ``ssim``: mean SSIM (`lipstep.eval.ssim.ssim_frames`: 11x11 Gaussian window, sigma 1.5);
- ``mouth_err_real`` / ``mouth_err_codec``: the bundled mouth reader's mean absolute openness error on
  the real frames and on their reconstructions (the approach of experiments/teacher/codec_floor.py),
  ``mouth_ratio`` = codec / real, and the correlations;
- ``colour_shift``: per frame the Euclidean distance (0..255 RGB) between the mean colour of the real
  frame and that of its reconstruction, averaged over frames;
- ``encode_ms`` / ``decode_ms``: milliseconds per frame for a batch of 32 frames on 1 torch thread,
  median of `--repeats` timed repeats after one warm-up;
- ``parameters``, ``latent_shape``, ``train_minutes`` (the codec directory's train.json ``seconds``,
  else `--train-seconds`), and ``meets_bar``: PSNR >= 32 dB and mouth_ratio <= 1.2 (the issue's bar).

Writes one JSON line per codec to `--out` (replacing the file) and, with `--png`, a picture: one row per
held-out frame (frames of different test clips), columns real | each codec's reconstruction, upscaled
`--scale` x with nearest neighbour.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from lipstep.codecs.vae import load_codec
from lipstep.data.dataset import read_manifest
from lipstep.eval.mouthreader import MouthReader, mouth_scores, reconstruct
from lipstep.eval.psnr import psnr_frames
from lipstep.eval.ssim import ssim_frames
from lipstep.eval.train_mouthreader import split_frames

ROOT = Path(__file__).resolve().parents[2]
EVALUATORS = ROOT / "src" / "lipstep" / "weights" / "evaluators" / "mouth"
PSNR_CAP = 100.0
BAR_PSNR, BAR_MOUTH_RATIO = 32.0, 1.2


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"{what} must be NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def colour_shift(real: np.ndarray, recon: np.ndarray) -> float:
    """Mean over frames of |mean RGB(real) - mean RGB(recon)| (Euclidean, 0..255 units)."""
    a = real.reshape(len(real), -1, 3).astype(np.float64).mean(1)
    b = recon.reshape(len(recon), -1, 3).astype(np.float64).mean(1)
    return float(np.linalg.norm(a - b, axis=1).mean())


@torch.no_grad()
def time_codec(codec, frames: np.ndarray, batch: int = 32, repeats: int = 5) -> tuple[float, float]:
    """(encode, decode) milliseconds per frame, batch of `batch`, median of `repeats` after one warm-up."""
    x = torch.from_numpy(frames[:batch]).float().div(127.5).sub(1.0).permute(0, 3, 1, 2).contiguous()
    z = codec.encode(x)
    codec.decode(z)  # warm-up
    enc, dec = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        z = codec.encode(x)
        t1 = time.perf_counter()
        codec.decode(z)
        t2 = time.perf_counter()
        enc.append((t1 - t0) * 1000 / len(x))
        dec.append((t2 - t1) * 1000 / len(x))
    return statistics.median(enc), statistics.median(dec)


def render(path: Path, frames: np.ndarray, recons: dict[str, np.ndarray], rows: list[int], scale: int) -> None:
    """Rows = frames, columns = real | each reconstruction; nearest-neighbour upscale; a label strip on top."""
    from PIL import Image, ImageDraw

    cols = [("real", frames)] + list(recons.items())
    s, gap, head = frames.shape[1] * scale, 4, 14
    W = len(cols) * s + (len(cols) - 1) * gap
    H = head + len(rows) * s + (len(rows) - 1) * gap
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, (name, stack) in enumerate(cols):
        x0 = c * (s + gap)
        draw.text((x0 + 2, 1), name, fill=(0, 0, 0))
        for r, i in enumerate(rows):
            tile = Image.fromarray(stack[i]).resize((s, s), Image.NEAREST)
            canvas.paste(tile, (x0, head + r * (s + gap)))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prepared")
    ap.add_argument("--codec", action="append", required=True, help="NAME=DIR (repeatable)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--frames", type=int, default=1000, help="evenly spaced frames of the split")
    ap.add_argument("--train-seconds", action="append", default=[],
                    help="NAME=S: training time of a codec whose directory has no train.json")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats (median) of encode/decode")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "codec" / "results.jsonl"))
    ap.add_argument("--png", default=None, help="write the round-trip picture here")
    ap.add_argument("--png-rows", type=int, default=4)
    ap.add_argument("--scale", type=int, default=3)
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    codecs = _pairs(args.codec, "--codec")
    train_seconds = {k: float(v) for k, v in _pairs(args.train_seconds, "--train-seconds").items()}
    root = Path(args.prepared)
    rows = read_manifest(root)
    split = split_frames(root, rows, args.split, args.frames)
    if split is None:
        raise SystemExit(f"{root} has no {args.split} frames")
    frames, labels = split
    reader = MouthReader(EVALUATORS)
    mae_real, corr_real = mouth_scores(reader.openness(frames), labels[:, 0])
    date = datetime.date.today().isoformat()
    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} torch thread, torch {torch.__version__}"

    results, recons = [], {}
    for name, path in codecs.items():
        codec = load_codec(path)
        t0 = time.perf_counter()
        recon = reconstruct(codec, frames)
        recon_s = time.perf_counter() - t0
        recons[name] = recon
        p = np.minimum(psnr_frames(frames, recon), PSNR_CAP)
        s = ssim_frames(frames, recon)
        mae_c, corr_c = mouth_scores(reader.openness(recon), labels[:, 0])
        enc_ms, dec_ms = time_codec(codec, frames, repeats=args.repeats)
        info_path = Path(path) / "train.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        seconds = info.get("seconds", train_seconds.get(name))
        row = {
            "codec": name, "path": str(path), "kind": codec.kind, "codec_name": codec.name,
            "split": args.split, "frames": len(frames),
            "latent_shape": [codec.latent_channels] + [frames.shape[1] // codec.downsample] * 2,
            "parameters": codec.num_parameters(),
            "psnr": round(float(p.mean()), 2), "psnr_min": round(float(p.min()), 2),
            "max_abs_err": int(np.abs(recon.astype(np.int16) - frames.astype(np.int16)).max()),
            "ssim": round(float(s.mean()), 4),
            "mouth_err_real": round(mae_real, 4), "mouth_err_codec": round(mae_c, 4),
            "mouth_ratio": round(mae_c / mae_real, 3),
            "corr_real": round(corr_real, 4), "corr_codec": round(corr_c, 4),
            "colour_shift": round(colour_shift(frames, recon), 2),
            "encode_ms": round(enc_ms, 3), "decode_ms": round(dec_ms, 3),
            "reconstruct_s": round(recon_s, 2),
            "train_minutes": None if seconds is None else round(float(seconds) / 60, 2),
            "train_minutes_source": ("train.json" if "seconds" in info else
                                     "--train-seconds" if name in train_seconds else None),
        }
        row["meets_bar"] = bool(row["psnr"] >= BAR_PSNR and row["mouth_ratio"] <= BAR_MOUTH_RATIO)
        row.update(date=date, machine=machine)
        results.append(row)
        print(json.dumps(row), flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in results), encoding="utf-8")
    if args.png:
        # one frame from each of `png_rows` clips spread over the split (clips are contiguous, 100 frames each)
        picks = np.linspace(0, len(frames) - 1, args.png_rows + 2)[1:-1].round().astype(int).tolist()
        render(Path(args.png), frames, recons, picks, args.scale)


if __name__ == "__main__":
    main()
