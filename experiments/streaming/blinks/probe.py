"""Does a blink-conditioned model draw the blinks it is told? (teacher probe, 2026-12-06 seventh session)

python experiments/streaming/blinks/probe.py MODEL PREPARED OUT [--rate R] [--seconds S] [--identity I]

Streams S seconds of a test identity's own speech through `AvatarPipeline.open_stream` with the blink schedule
at R blinks per second (the model's own rate by default), reads the eye band of every frame
(`lipstep.data.blinks.eye_brightness`) and writes OUT/probe.json (per-frame closure told and eye brightness, the
mean eye brightness by told closure), OUT/blinks.png (rows: frames around each told blink's peak, -3..+3) and
OUT/blinks_eyes.png (the same frames' eye band, enlarged 4x).
"""

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from lipstep.data.blinks import BlinkSchedule, eye_brightness
from lipstep.data.dataset import open_shard, read_manifest
from lipstep.data.media import write_image
from lipstep.eval.runner import contact_sheet
from lipstep.pipeline import AvatarPipeline


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("prepared")
    p.add_argument("out")
    p.add_argument("--rate", type=float, default=0.0)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--identity", type=int, default=1)
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = AvatarPipeline.from_pretrained(a.model)
    if a.rate:
        pipe.info = dataclasses.replace(pipe.info, blinks_per_second=a.rate)
    rows = [r for r in read_manifest(a.prepared) if r["split"] == "test"]
    person = sorted({r["identity"] for r in rows})[a.identity]
    clips = [open_shard(Path(a.prepared) / r["shard"]) for r in rows if r["identity"] == person]
    audio = np.concatenate([np.asarray(c["audio"], np.float32) for c in clips])[:round(a.seconds * 16000)]
    stream = pipe.open_stream(np.asarray(clips[0]["frames"][0]), seed=0)
    frames = [f.image for f in stream.push(audio)] + [f.image for f in stream.finish()]
    frames = np.stack(frames)
    told = BlinkSchedule(pipe.info.blinks_per_second, pipe.info.fps, 0).frames(0, len(frames))
    eyes = eye_brightness(frames)
    by_level = {str(v): round(float(eyes[np.isclose(told, v)].mean()), 2)
                for v in (0.0, 0.3, 0.35, 0.7, 0.85, 1.0) if np.isclose(told, v).any()}
    peaks = [i for i in range(len(told)) if told[i] == told.max() and told.max() > 0]
    sheet = [frames[max(0, i - 3):i + 4] for i in peaks if 3 <= i < len(frames) - 3][:6]
    if sheet:
        write_image(out / "blinks.png", contact_sheet(sheet, 7))
        s = frames.shape[1]  # the eye band (rows 0.16-0.56, columns 0.1-0.9 of the crop), 4x nearest
        crops = [[f[round(0.16 * s):round(0.56 * s), round(0.1 * s):round(0.9 * s)].repeat(4, 0).repeat(4, 1)
                  for f in row] for row in sheet]
        write_image(out / "blinks_eyes.png", contact_sheet(crops, 7))
    result = {"model": a.model, "identity": person, "rate": pipe.info.blinks_per_second, "frames": len(frames),
              "eye_by_told_closure": by_level, "told": told.round(3).tolist(), "eyes": eyes.round(1).tolist()}
    (out / "probe.json").write_text(json.dumps(result))
    print(json.dumps({k: v for k, v in result.items() if k not in ("told", "eyes")}))


if __name__ == "__main__":
    main()
