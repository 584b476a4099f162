"""What chaining chunks costs the mouth: generation with generated against ground-truth motion frames.

Usage: python chain_probe.py MODEL PREPARED OUT.json [--clips 8] [--seconds 2] [--cfg-audio A --cfg-ref R]

The clips, reference (first frame), audio features, sampler, guidance and seed of `lipstep eval` (own
audio). Each clip is generated chunk by chunk twice: as the pipeline does (motion frames = the last
frames of the previous generated chunk) and teacher-forced (motion frames = the codec latents of the
real previous frames; the first chunk gets the reference in both, as in the pipeline). MouthErr is the
evaluation's: the bundled mouth reader's openness of the decoded frames against the clip's labels. The
"chained" column reproduces `lipstep eval`'s mouth_err; the difference to "forced" is what chained
generation loses.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from proxy import load  # noqa: E402

from lipstep.data.dataset import read_manifest  # noqa: E402
from lipstep.diffusion.cond import Cond  # noqa: E402
from lipstep.diffusion.guidance import multi_cfg  # noqa: E402
from lipstep.eval.mouthreader import MouthReader  # noqa: E402
from lipstep.eval.runner import _clip_data, default_evaluators_dir  # noqa: E402
from lipstep.samplers import SAMPLERS  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("prepared", type=Path)
ap.add_argument("out", type=Path)
ap.add_argument("--clips", type=int, default=8)
ap.add_argument("--seconds", type=float, default=2.0)
ap.add_argument("--cfg-audio", type=float, default=None)
ap.add_argument("--cfg-ref", type=float, default=None)
args = ap.parse_args()

pipe = load(args.model)
pipe.denoiser.float().eval()
info, s = pipe.info, pipe.info.sampler
cfg_a = s.cfg_audio if args.cfg_audio is None else args.cfg_audio
cfg_r = s.cfg_ref if args.cfg_ref is None else args.cfg_ref
reader = MouthReader(default_evaluators_dir() / "mouth")
rows = [r for r in read_manifest(args.prepared) if r.get("split") == "test" and int(r.get("frames", 0)) > 0]
T, M = info.frames, info.motion_frames
den = multi_cfg(pipe.model_fn(), cfg_a, cfg_r)
timesteps = pipe.schedule.timesteps(s.steps, spacing=s.spacing)
extra = {"eta": s.eta} if s.name == "ddim" else {}


@torch.no_grad()
def generate(ref: torch.Tensor, feats: torch.Tensor, n: int, gt_latents: torch.Tensor | None) -> np.ndarray:
    """The pipeline's chunk loop (same seed and noise); ``gt_latents`` given = teacher-forced motion."""
    gen = torch.Generator().manual_seed(0)
    C, h, w = ref.shape[1:]
    motion, out = ref[:, None].expand(1, M, C, h, w), []
    for k in range(math.ceil(n / T)):
        cond = Cond(reference=ref, audio=feats[k * T:(k + 1) * T][None].float(), motion=motion)
        noise = torch.randn((1, T, C, h, w), generator=gen)
        z = SAMPLERS[s.name](den, noise, timesteps, cond, schedule=pipe.schedule, generator=gen, **extra)
        out.append(z[0])
        if gt_latents is not None:
            end = min((k + 1) * T, len(gt_latents))
            motion = gt_latents[end - M:end][None]
        else:
            motion = z[:, -M:]
    return pipe.decode(torch.cat(out)[:n])


result = {"model": args.model, "cfg_audio": cfg_a, "cfg_ref": cfg_r, "clips": []}
for row in rows[:args.clips]:
    gt, wav, truth = _clip_data(args.prepared, row, args.seconds, info.fps, info.sample_rate)
    n = pipe.n_frames(len(wav))
    n = min(n, len(gt))
    ref = pipe.encode_image(gt[0])
    feats = pipe.audio_encoder.encode(wav, math.ceil(n / T) * T)
    with torch.no_grad():
        gt_lat = torch.cat([pipe.encode_image(f) for f in gt[:n]])
    clip = {"clip": row["id"], "frames": n}
    for name, forced in (("chained", None), ("forced", gt_lat)):
        frames = generate(ref, feats, n, forced)
        clip[name] = float(np.abs(reader.openness(frames[:n]) - truth[:n]).mean())
    clip["gt_frames"] = float(np.abs(reader.openness(gt[:n]) - truth[:n]).mean())
    result["clips"].append(clip)
    print(json.dumps(clip), flush=True)
for key in ("chained", "forced", "gt_frames"):
    result[key] = float(np.mean([c[key] for c in result["clips"]]))
print(json.dumps({k: result[k] for k in ("chained", "forced", "gt_frames")}), flush=True)
args.out.parent.mkdir(parents=True, exist_ok=True)
args.out.write_text(json.dumps(result, indent=2) + "\n")
