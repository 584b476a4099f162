"""How much of the mouth state can the teacher's audio input predict at all?

Fits a small regressor from the teacher's audio condition (the log-mel window of one video frame,
optionally with its neighbours' windows) to the labelled mouth openness, on the training split, and
scores it on the first SECONDS of the first CLIPS test clips: the same frames `lipstep eval` scores.
The MAE it reaches is a rough floor for the part of the teacher's MouthErr that comes from the audio
(the evaluation's mouth reader adds its own error on top: 0.049 on ground-truth frames).

    python experiments/teacher/audio_mouth_bound.py PREPARED OUT.json [--context 0 2] [--steps 1500]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def load_split(prepared: Path, split: str):
    with open(prepared / "manifest.jsonl") as f:
        rows = [json.loads(line) for line in f]
    out = []
    for r in rows:
        if r.get("split") == split:
            z = np.load(prepared / r["shard"])
            out.append((z["mel"].astype(np.float32), z["mouth"][:, 0].astype(np.float32)))
    return out


def with_context(mel: np.ndarray, c: int) -> np.ndarray:
    """[T, K, D] -> [T, (2c+1)·K, D]: each frame's window with its c neighbours' on each side (edge-padded)."""
    if c == 0:
        return mel
    pad = np.concatenate([mel[:1].repeat(c, 0), mel, mel[-1:].repeat(c, 0)])
    return np.concatenate([pad[i:i + len(mel)] for i in range(2 * c + 1)], axis=1)


class Regressor(nn.Module):
    def __init__(self, d: int, width: int = 128):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(d, width, 3, padding=1), nn.GELU(),
                                  nn.Conv1d(width, width, 3, padding=1), nn.GELU())
        self.head = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 1))

    def forward(self, x):  # [B, K, D]
        h = self.conv(x.transpose(1, 2)).mean(-1)
        return self.head(h).squeeze(-1)


def run(prepared: Path, context: int, steps: int, clips: int, seconds: float, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train = load_split(prepared, "train")
    test = load_split(prepared, "test")[:clips]
    x = np.concatenate([with_context(m, context) for m, _ in train])
    y = np.concatenate([o for _, o in train])
    mean, std = x.mean(), x.std()
    xt = torch.from_numpy((x - mean) / std)
    yt = torch.from_numpy(y)
    net = Regressor(x.shape[-1])
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    t0 = time.time()
    for _ in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(xt), 256))
        loss = nn.functional.l1_loss(net(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    n = round(seconds * 25)
    errs, corrs = [], []
    with torch.no_grad():
        for mel, open_ in test:
            xm = torch.from_numpy((with_context(mel, context)[:n] - mean) / std)
            p = net(xm).clamp(0, 1).numpy()
            errs.append(float(np.abs(p - open_[:n]).mean()))
            corrs.append(float(np.corrcoef(p, open_[:n])[0, 1]))
    return {"context_frames": context, "audio_ms": 160 + 80 * context, "steps": steps,
            "train_frames": len(y), "test_clips": len(test), "seconds": seconds,
            "mae": round(float(np.mean(errs)), 4), "corr": round(float(np.mean(corrs)), 3),
            "per_clip_mae": [round(e, 4) for e in errs], "train_seconds": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("prepared", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--context", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=2.0)
    a = ap.parse_args()
    results = []
    for c in a.context:
        r = run(a.prepared, c, a.steps, a.clips, a.seconds)
        print(json.dumps(r))
        results.append(r)
    a.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
