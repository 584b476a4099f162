"""Where the teacher loses the mouth: one-step x0 predictions at fixed noise levels.

Usage: python probe.py MODEL PREPARED OUT.json [--windows 64] [--cfg-audio 1]

For held-out test windows (ground-truth reference and motion latents, as in training), the clean
window is noised to t, the denoiser predicts x0 once, the codec decodes it, and the bundled mouth
reader reads the openness of every frame. MouthErr against the window's labels is reported for the
right audio and for another window's audio (rolled within the batch), per noise level. If the
one-step prediction at high noise already has the right mouth (a low ratio), the denoiser knows the
mouth and sampling loses it; if not, the denoiser's audio conditioning is what is weak.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from proxy import test_windows  # noqa: E402

from lipstep.eval.mouthreader import MouthReader  # noqa: E402
from lipstep.eval.runner import default_evaluators_dir  # noqa: E402
from lipstep.distill.losses import batch_cond  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("prepared", type=Path)
ap.add_argument("out", type=Path)
ap.add_argument("--windows", type=int, default=64)
ap.add_argument("--cfg-audio", type=float, default=1.0)
ap.add_argument("--levels", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8, 0.9, 1.0])
args = ap.parse_args()

pipe, batch = test_windows(args.model, args.prepared, args.windows)
net, schedule = pipe.denoiser, pipe.schedule
reader = MouthReader(default_evaluators_dir() / "mouth")
x0, labels = batch["latents"], batch["mouth"][..., 0].numpy()      # [B, T, C, h, w], [B, T] openness
b, t_frames = x0.shape[:2]
other = dict(batch, audio=batch["audio"].roll(1, 0))
other_labels = labels[np.roll(np.arange(b), 1)]


def read(z: torch.Tensor) -> np.ndarray:
    frames = np.concatenate([pipe.decode(z[i]) for i in range(len(z))])
    return reader.openness(frames).reshape(b, t_frames)


@torch.no_grad()
def x0_hat(bt: dict, t: float, eps: torch.Tensor) -> torch.Tensor:
    tt = torch.full((b,), t)
    x_t = schedule.add_noise(x0, eps, tt)
    cond = batch_cond(bt)
    pred = net(x_t, schedule.model_time(tt), cond)
    if args.cfg_audio != 1.0:
        uncond = net(x_t, schedule.model_time(tt), cond.drop(audio=True))
        pred = uncond + args.cfg_audio * (pred - uncond)
    return schedule.to_x0(pred, x_t, tt)


rows = {"model": args.model, "windows": int(b), "frames": int(t_frames), "cfg_audio": args.cfg_audio,
        "codec_reconstruction": None, "levels": []}
gt = read(x0)
rows["codec_reconstruction"] = float(np.abs(gt - labels).mean())
rows["other_labels_vs_labels"] = float(np.abs(other_labels - labels).mean())
print(f"codec reconstruction MouthErr {rows['codec_reconstruction']:.4f}; "
      f"other labels {rows['other_labels_vs_labels']:.4f}")
for t in args.levels:
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(int(t * 1000)))
    own, oth = read(x0_hat(batch, t, eps)), read(x0_hat(other, t, eps))
    row = {"t": t, "own": float(np.abs(own - labels).mean()), "other": float(np.abs(oth - labels).mean()),
           "other_vs_its_labels": float(np.abs(oth - other_labels).mean()),
           "own_pred_std": float(own.std()), "label_std": float(labels.std())}
    row["ratio"] = row["own"] / row["other"]
    rows["levels"].append(row)
    print(json.dumps(row), flush=True)
args.out.parent.mkdir(parents=True, exist_ok=True)
args.out.write_text(json.dumps(rows, indent=2) + "\n")
