"""The example inputs of `lipstep demo` and `lipstep bench`: a portrait of an unseen identity and speech.

The portrait comes from a small synthetic world rendered with a seed the bundled models were not
trained on (so its identities are new to them); the speech is `EXAMPLE_TEXT` spoken by espeak-ng.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from lipstep.data.media import write_audio
from lipstep.data.render import Pose, render_frame, sample_identity
from lipstep.data.speech import synthesize
from lipstep.data.world import WorldConfig, synthesize_world
from lipstep.fsutil import write_json_atomic

EXAMPLE_TEXT = "Hello! I am a talking avatar, and my lips follow every word you give me."


def example_portrait(out: Path, *, workers: int = 0, progress: bool = True) -> Path:
    """Render the world of unseen identities in ``out/world``; copy its first portrait to ``out/portrait.png``."""
    out = Path(out)
    cfg = WorldConfig(identities=4, clips_per_identity=1, seconds=3.0, seed=2026)
    world = synthesize_world(cfg, out / "world", workers=workers, progress=progress)
    if progress:
        print(world)
    rows = [json.loads(line) for line in (out / "world" / "manifest.jsonl").read_text().splitlines()]
    portrait = out / "portrait.png"
    shutil.copyfile(out / "world" / "identities" / f"{rows[0]['identity']}.png", portrait)
    return portrait


def example_faces(n: int, size: int, seed: int = 2026) -> list[np.ndarray]:
    """Neutral portraits (uint8 [size, size, 3]) of the first `n` identities of `example_portrait`'s world: the
    same identities (``make_identity`` draws them from this generator first) without rendering any clip."""
    return [render_frame(sample_identity(np.random.default_rng([seed, i, 1])), (0.0, 0.5, 0.2), Pose(), 0.0, size)
            for i in range(n)]


def example_speech(out: Path) -> tuple[Path, float]:
    """`EXAMPLE_TEXT` spoken by espeak-ng into ``out/speech.wav`` (+ speech.phonemes.json): (path, seconds)."""
    out = Path(out)
    speech = synthesize(EXAMPLE_TEXT, voice="en-us+f3")
    write_audio(out / "speech.wav", speech.wav, speech.sample_rate)
    write_json_atomic(out / "speech.phonemes.json", [{"phoneme": p.symbol, "start": round(p.start, 4),
                                                      "end": round(p.end, 4)} for p in speech.phonemes])
    return out / "speech.wav", speech.seconds


def example_inputs(directory: Path, *, portrait: bool = True, speech: bool = True) -> tuple[Path, Path]:
    """``directory/portrait.png`` and ``directory/speech.wav``, each made once if asked for (no world kept)."""
    paths = directory / "portrait.png", directory / "speech.wav"
    if portrait and not paths[0].is_file():
        example_portrait(directory, workers=1, progress=False)
        shutil.rmtree(directory / "world")  # only its first portrait is needed
    if speech and not paths[1].is_file():
        example_speech(directory)
    return paths


__all__ = ["EXAMPLE_TEXT", "example_faces", "example_inputs", "example_portrait", "example_speech"]
