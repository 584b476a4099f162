"""`lipstep demo` / `make demo`: the main job on the embedded default.

It renders a small synthetic world with identities never seen in training (a different seed from
the bundled model's training world), takes one of its portraits as the example portrait,
synthesizes example speech with espeak-ng (both from `lipstep.data.examples`), and generates a
lip-synced talking video with the fastest bundled model (`lipstep models`). It writes::

    OUT/portrait.png        the example portrait
    OUT/speech.wav          the example speech (+ speech.phonemes.json)
    OUT/talk.mp4            the generated talking head with the speech muxed in
    OUT/contact_sheet.png   top: generated frames over time; below: rendered world clips
    OUT/bench/bench.md      with a teacher and a student bundled: `lipstep bench` of all bundled
                            models side by side on the same portrait and speech (also printed)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lipstep import modeldir
from lipstep.data.examples import example_portrait, example_speech
from lipstep.data.media import read_video
from lipstep.eval.bench import format_table, run_bench
from lipstep.eval.runner import write_contact_sheet
from lipstep.pipeline import generate_file


def contact_sheet(world_dir: Path, out_png: Path, clips: int = 4, frames: int = 8, *,
                  generated: np.ndarray | None = None) -> Path:
    """A PNG grid (`lipstep.eval.runner.contact_sheet`): the `generated` frames first if given, then one row per
    world clip; `frames` evenly spaced frames per row."""
    rows = [json.loads(line) for line in (world_dir / "manifest.jsonl").read_text().splitlines()][:clips]
    videos = [read_video(world_dir / row["video"], audio="none").frames for row in rows]
    return write_contact_sheet(out_png, ([generated] if generated is not None else []) + videos, frames)


def bench_bundled(out: Path, seconds: float = 2.0) -> dict | None:
    """`lipstep bench` of every bundled model on the demo's inputs (``out/bench``); None when only one is bundled."""
    names = list(modeldir.bundled_models())
    if len(names) < 2:
        return None
    print(f"benchmarking the bundled models {', '.join(names)} on {seconds:g} s of the speech "
          f"(1 warm-up + 1 timed run each; the teacher takes about a minute per run on 2 CPU cores)", flush=True)
    report = run_bench(names, out / "bench", image=out / "portrait.png", audio=out / "speech.wav", seconds=seconds,
                       warmup=1, repeats=1)
    print(format_table(report))
    return report


def run_demo(out: Path, model: str | None = None, *, bench_seconds: float = 2.0) -> None:
    out = Path(out)
    model_dir = modeldir.resolve_model(model)
    portrait = example_portrait(out)
    speech, seconds = example_speech(out)
    print(f"example portrait {portrait}; example speech {speech} ({seconds:.2f} s)")
    path, res, seconds = generate_file(model_dir, portrait, out / "speech.wav", out / "talk.mp4")
    print(f"model {model_dir.name}: {res.frames} frames ({res.seconds:.2f} s of video), {res.chunks} chunks x "
          f"{res.steps} steps, NFE {res.nfe}, {seconds:.1f} s on this machine "
          f"({res.frames / seconds:.1f} frames/s)")
    generated = read_video(path, audio="none").frames  # the video was written frame by frame, not kept
    sheet = contact_sheet(out / "world", out / "contact_sheet.png", generated=generated)
    print(f"talking video: {path}")
    print(f"contact sheet: {sheet}")
    if bench_seconds > 0:
        report = bench_bundled(out, bench_seconds)
        if report is not None:
            print(f"benchmark: {out / 'bench' / 'bench.md'}")
