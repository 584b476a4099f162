"""Where generation loses the mouth that the one-step probe finds: full samples on ground-truth context.

Usage: python sample_probe.py MODEL PREPARED OUT.json [--windows 24] [--steps 25] [--cfg A R ...]

The same held-out test windows as `probe.py` (its seed), with their ground-truth reference and motion
latents. For each guidance setting ``A R`` (audio and reference scale; ``1 1`` is the conditional model
alone) the window is *sampled* from pure noise with the model's DDIM grid, once with its own audio and
once with another window's (rolled within the batch). Read with the bundled mouth reader:

- ``first``: the x0 estimate of the first step (pure noise in: the guided conditional mean),
- ``final``: the sample itself,
- ``steps``: the x0 estimate's MouthErr at every 5th step.

If ``first`` is good and ``final`` is not, sampling (a sample is not the mean) loses the mouth; if
the ``1 1`` sample is good and the guided one is not, guidance does; if both are good, what is left
between this and `lipstep eval` is the generated (not ground-truth) motion context of chained chunks.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from proxy import test_windows  # noqa: E402

from lipstep.diffusion.guidance import multi_cfg  # noqa: E402
from lipstep.eval.mouthreader import MouthReader  # noqa: E402
from lipstep.eval.runner import default_evaluators_dir  # noqa: E402
from lipstep.samplers.ddim import sample_ddim  # noqa: E402
from lipstep.distill.losses import batch_cond  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("prepared", type=Path)
ap.add_argument("out", type=Path)
ap.add_argument("--windows", type=int, default=24)
ap.add_argument("--steps", type=int, default=25)
ap.add_argument("--cfg", type=float, nargs="+", default=[1, 1, 3, 1.5], help="pairs: audio scale, reference scale")
args = ap.parse_args()
if len(args.cfg) % 2:
    ap.error("--cfg takes pairs of scales")

pipe, batch = test_windows(args.model, args.prepared, args.windows)
net, schedule = pipe.denoiser, pipe.schedule
reader = MouthReader(default_evaluators_dir() / "mouth")
x0, labels = batch["latents"], batch["mouth"][..., 0].numpy()
b, t_frames = x0.shape[:2]
other = dict(batch, audio=batch["audio"].roll(1, 0))
s = pipe.info.sampler
timesteps = schedule.timesteps(args.steps, spacing=s.spacing)


def read(z: torch.Tensor) -> np.ndarray:
    frames = np.concatenate([pipe.decode(z[i]) for i in range(len(z))])
    return reader.openness(frames).reshape(b, t_frames)


def err(z: torch.Tensor) -> float:
    return float(np.abs(read(z) - labels).mean())


def model_fn(x_t, t, cond):
    return net(x_t, schedule.model_time(t), cond)


rows = {"model": args.model, "windows": int(b), "frames": int(t_frames), "steps": args.steps,
        "codec_reconstruction": err(x0), "label_std": float(labels.std()), "settings": []}
print(f"codec reconstruction MouthErr {rows['codec_reconstruction']:.4f}", flush=True)
for a_scale, r_scale in zip(args.cfg[::2], args.cfg[1::2]):
    den = multi_cfg(model_fn, a_scale, r_scale)
    row = {"cfg_audio": a_scale, "cfg_ref": r_scale}
    for name, bt in (("own", batch), ("other", other)):
        t0 = time.time()
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
        x0s = {}

        def keep(i, t, x, x0_hat):
            if i % 5 == 0 or i == args.steps - 1:
                x0s[i] = x0_hat.clone()

        with torch.no_grad():
            z = sample_ddim(den, noise, timesteps, batch_cond(bt), schedule=schedule, callback=keep)
        final = read(z)
        row[name] = {"first": err(x0s[0]), "final": float(np.abs(final - labels).mean()),
                     "final_std": float(final.std()),
                     "steps": {str(i): err(v) for i, v in sorted(x0s.items())}, "seconds": round(time.time() - t0)}
        print(json.dumps({"cfg": [a_scale, r_scale], name: row[name]}), flush=True)
    row["ratio_final"] = row["own"]["final"] / row["other"]["final"]
    row["ratio_first"] = row["own"]["first"] / row["other"]["first"]
    rows["settings"].append(row)
args.out.parent.mkdir(parents=True, exist_ok=True)
args.out.write_text(json.dumps(rows, indent=2) + "\n")
print("done", flush=True)
