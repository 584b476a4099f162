"""Parity of the recipe-interface refactor (issue 20): the same seeds give the same losses and frames.

    python experiments/recipe_interface/parity.py record OUT.json   # with the code before the refactor
    python experiments/recipe_interface/parity.py check  OUT.json   # with the code after it

Records, on the tests' tiny synthetic world (32 px, tiny nets, CPU, one thread):

- the teacher's training losses for 20 steps (`lipstep train teacher`'s library function);
- PeRFlow's losses for 20 steps from the same seed, once from a pair bank (16 pairs) and once with
  the teacher solved online, mixed supervision on (the default);
- sha256 of the frames the bundled `fada` and `teacher` generate for a fixed portrait and 1 s of audio.

Losses come from the TensorBoard scalars the loop writes (log_every = 1), so both versions of the code
are measured by the same reader. `check` prints the largest relative difference of each series.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lipstep.data.dataset import WindowConfig  # noqa: E402
from lipstep.distill.perflow import PerflowConfig  # noqa: E402
from lipstep.pipeline import AvatarPipeline  # noqa: E402
from lipstep.train.loop import TrainConfig  # noqa: E402
from lipstep.train.mouth_head import MouthHeadConfig  # noqa: E402
from lipstep.train.teacher import TeacherConfig, train_teacher  # noqa: E402
from tests.mediafixtures import make_tiny_avatar_data  # noqa: E402

try:  # before the refactor
    from lipstep.distill.perflow import distill_perflow  # noqa: E402
except ImportError:  # after it: one runner for every recipe
    from lipstep.distill.perflow import PerflowRecipe  # noqa: E402
    from lipstep.train.runner import run_recipe  # noqa: E402

    def distill_perflow(prepared, teacher, out, cfg, progress=True):
        return run_recipe(PerflowRecipe(teacher, cfg), prepared, out, progress=progress)

STEPS = 20


def scalars(run: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "logs"))
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        if tag.startswith("throughput"):
            continue
        out[tag] = [e.value for e in sorted(acc.Scalars(tag), key=lambda e: e.step)]
    return out


def frames_hash(model: str) -> str:
    pipe = AvatarPipeline.from_pretrained(model)
    g = np.random.default_rng(0)
    image = (g.random((64, 64, 3)) * 255).astype(np.uint8)
    t = np.arange(16000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    steps = None if pipe.info.kind == "student" else 4
    res = pipe(image, audio, steps=steps, seed=0)
    return hashlib.sha256(res.frames.tobytes()).hexdigest()


def measure() -> dict:
    torch.set_num_threads(1)
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = make_tiny_avatar_data(Path(tmp))
        cfg = TeacherConfig(preset="tiny", window=WindowConfig(frames=4, motion_frames=2), val_clips=0,
                            mouth_head=MouthHeadConfig(steps=30, batch_size=32, min_corr=-1))
        cfg.train = TrainConfig(steps=STEPS, batch_size=2, checkpoint_every=STEPS, log_every=1)
        cfg.sampler.steps = 3
        train_teacher(root / "prepared", root / "codec", root / "teacher", cfg, progress=False)
        out["teacher"] = scalars(root / "teacher")
        for name, pairs in (("perflow_bank", 16), ("perflow_online", 0)):
            pcfg = PerflowConfig(solver_steps=2, pairs=pairs, val_clips=0)
            pcfg.train = TrainConfig(steps=STEPS, batch_size=2, checkpoint_every=STEPS, log_every=1, warmup_steps=5)
            distill_perflow(root / "prepared", root / "teacher" / "model", root / name, pcfg, progress=False)
            out[name] = scalars(root / name)
    out["frames_sha256"] = {m: frames_hash(m) for m in ("fada", "teacher")}
    return out


def compare(old: dict, new: dict) -> dict:
    report = {}
    for run in ("teacher", "perflow_bank", "perflow_online"):
        for tag, values in old[run].items():
            got = new[run].get(tag)
            if got is None:
                report[f"{run}/{tag}"] = "missing"
                continue
            a, b = np.asarray(values, np.float64), np.asarray(got, np.float64)
            if a.shape != b.shape:
                report[f"{run}/{tag}"] = f"length {len(b)} != {len(a)}"
                continue
            report[f"{run}/{tag}"] = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-12)))
    for m, h in old["frames_sha256"].items():
        report[f"frames/{m}"] = "identical" if new["frames_sha256"].get(m) == h else "DIFFERENT"
    return report


if __name__ == "__main__":
    mode, path = sys.argv[1], Path(sys.argv[2])
    result = measure()
    if mode == "record":
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {path}")
    else:
        rep = compare(json.loads(path.read_text()), result)
        for k, v in rep.items():
            print(f"{k:45s} {v}")
        worst = max((v for v in rep.values() if isinstance(v, float)), default=0.0)
        bad = [k for k, v in rep.items() if not isinstance(v, float) and v != "identical"]
        print(f"largest relative difference {worst:.3g}; {'problems: ' + ', '.join(bad) if bad else 'frames identical'}")
