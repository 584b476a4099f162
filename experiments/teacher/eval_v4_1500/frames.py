"""Frame-level view of a `lipstep eval` run's saved videos: the bundled mouth reader's openness of the
generated half against the labels, at lags -2..2, the affine fit gen ~ k * label + b and the error by
label range.

    python frames.py PREPARED EVAL_DIR [EVAL_DIR ...]
"""
import glob
import os
import sys

import numpy as np

from lipstep.data.dataset import open_shard, read_manifest
from lipstep.data.media import read_video
from lipstep.eval.mouthreader import MouthReader
from lipstep.eval.runner import default_evaluators_dir

prepared = sys.argv[1]
reader = MouthReader(os.path.join(default_evaluators_dir(), "mouth"))
rows = {r["id"]: r for r in read_manifest(prepared)}
for d in sys.argv[2:]:
    gens, labels = [], []
    for v in sorted(glob.glob(os.path.join(d, "videos", "*.mp4"))):
        cid = os.path.basename(v)[:-4]
        frames = read_video(v).frames  # ground truth | generated, side by side
        gen = frames[:, :, frames.shape[2] // 2:]
        lab = np.asarray(open_shard(os.path.join(prepared, rows[cid]["shard"]), keys=("mouth",))["mouth"])
        gens.append(reader.openness(gen))
        labels.append(lab[:len(gen), 0])
    print(d, "clips:", len(gens))
    for lag in (-2, -1, 0, 1, 2):
        e = np.mean([np.abs(np.roll(g, lag)[2:-2] - l[2:-2]).mean() for g, l in zip(gens, labels)])
        c = np.mean([np.corrcoef(np.roll(g, lag)[2:-2], l[2:-2])[0, 1] for g, l in zip(gens, labels)])
        print(f"  lag {lag:+d}: MouthErr {e:.3f} corr {c:.3f}")
    g, l = np.concatenate(gens), np.concatenate(labels)
    k, b = np.polyfit(l, g, 1)
    print(f"  gen ~ {k:.2f} * label + {b:.3f}; residual std {np.std(g - (k * l + b)):.3f}")
    for lo, hi in [(0, 0.02), (0.02, 0.3), (0.3, 0.6), (0.6, 1.01)]:
        m = (l >= lo) & (l < hi)
        print(f"  label in [{lo}, {hi}): {m.sum()} frames, generated {g[m].mean():.3f}, label {l[m].mean():.3f}, "
              f"MouthErr {np.abs(g[m] - l[m]).mean():.3f}")
