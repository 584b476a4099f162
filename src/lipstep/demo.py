"""`lipstep demo` / `make demo`: the main job on the embedded default.

Until a trained generator is bundled, the demo renders a small synthetic world, prepares it for
training, and writes a contact sheet of mouth states so the result can be looked at.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def contact_sheet(world_dir: Path, out_png: Path, clips: int = 4, frames: int = 8) -> Path:
    """A PNG grid: one row per clip, `frames` evenly spaced frames per row."""
    from lipstep.data.media import read_video, write_image

    rows = [json.loads(line) for line in (world_dir / "manifest.jsonl").read_text().splitlines()][:clips]
    grid = []
    for row in rows:
        video = read_video(world_dir / row["video"], audio="none")
        idx = np.linspace(0, len(video.frames) - 1, frames).round().astype(int)
        grid.append(np.concatenate(list(video.frames[idx]), axis=1))
    write_image(out_png, np.concatenate(grid, axis=0))
    return out_png


def run_demo(out: Path) -> None:
    from lipstep.data.prepare import PrepareConfig, prepare_dataset
    from lipstep.data.world import WorldConfig, synthesize_world

    out = Path(out)
    world = synthesize_world(WorldConfig(identities=4, clips_per_identity=1, seconds=3.0), out / "world")
    print(world)
    prepared = prepare_dataset(out / "world", out / "prepared", PrepareConfig(size=64))
    print(prepared)
    sheet = contact_sheet(out / "world", out / "contact_sheet.png")
    first = json.loads((out / "world" / "manifest.jsonl").read_text().splitlines()[0])
    print(f"example clip (video + speech): {out / 'world' / first['video']}")
    print(f"contact sheet of mouth states: {sheet}")
