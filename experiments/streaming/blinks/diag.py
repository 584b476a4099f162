"""Where does a blink get lost: the net's clean estimate, or the sampler? (2026-12-06, eighth session)

python experiments/streaming/blinks/diag.py MODEL PREPARED SPLIT [--windows N] [--identity ID] [--out FILE]

Takes N windows of SPLIT that hold a full blink (closure 1), with the reference as motion context (what
generation feeds every re-anchored chunk), and reads the eye band (`lipstep.data.blinks.eye_brightness`) of
(a) the ground truth, (b) the net's clean estimate x0(x_t, t) from the real latents diffused to t, told the
labelled blinks and told open eyes, at t = 0.2, 0.5, 0.8, 1 (no guidance), and (c) full samples from noise with
the model's own sampler, with and without its guidance scales; (d) the guided clean estimate at t = 1 from pure
noise, which a one-step student distilled by output matching learns to make; (e) the clean estimate at t = 0.5 and 1
without the convolutional output head's correction (the transformer's own output). Prints one line per reading (eyes
on frames of closure 1 and of closure 0) and writes them as JSON to --out.
"""

import argparse
import dataclasses
import json

import numpy as np
import torch

from lipstep.codecs.cache import encode_prepared
from lipstep.data.blinks import eye_brightness
from lipstep.data.dataset import WindowConfig, WindowDataset
from lipstep.diffusion.denoiser import Denoiser
from lipstep.diffusion.guidance import multi_cfg
from lipstep.distill.lite import decode_chunk
from lipstep.distill.losses import batch_cond
from lipstep.modeldir import load_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("prepared")
    p.add_argument("split")
    p.add_argument("--windows", type=int, default=12)
    p.add_argument("--identity", default="", help="only this identity's windows (e.g. id0005)")
    p.add_argument("--out", default="")
    a = p.parse_args()
    _, info, codec, _, net = load_model(a.model)
    cache = encode_prepared(a.prepared, codec, progress=False)
    ds = WindowDataset(a.prepared, a.split, WindowConfig(frames=info.frames, motion_frames=info.motion_frames,
                                                         stride=info.frames), latents=cache, pixels=False,
                       residual=info.residual)
    items = [it for it in (ds[i] for i in range(len(ds))) if "blink" in it and float(it["blink"].max()) >= 1.0
             and a.identity in ("", ds.clips[int(it["clip_index"])]["identity"])]
    items = items[:a.windows]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0] if torch.is_tensor(items[0][k])}
    cond = batch_cond(batch, torch.Generator().manual_seed(1), 1.0, residual=True)   # reference as motion
    sched, den = info.make_schedule(), Denoiser(net, info.make_schedule())
    x0, ref, told = batch["latents"], batch["reference_latent"], batch["blink"]
    shut, open_ = told.numpy() >= 0.99, told.numpy() == 0

    def eyes(z):
        frames = ((decode_chunk(codec, z, ref, info.residual).clamp(-1, 1) + 1) * 127.5).permute(0, 1, 3, 4, 2)
        e = np.stack([eye_brightness(f) for f in frames.numpy().astype(np.uint8)])
        return {"shut": round(float(e[shut].mean()), 1), "open": round(float(e[open_].mean()), 1)}

    rows = {"windows": len(items), "truth": eyes(x0)}
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in (0.2, 0.5, 0.8, 1.0):
            x_t = sched.add_noise(x0, torch.randn(x0.shape, generator=g), torch.full((len(items),), t))
            for name, blink in (("told", told), ("told_open", torch.zeros_like(told))):
                rows[f"x0_t{t}_{name}"] = eyes(den(x_t, torch.full((len(items),), t), dataclasses.replace(cond, blink=blink)))
        if net.out_head is not None:  # the transformer's own output: the convolutional head's correction zeroed
            handle = net.out_head.register_forward_hook(lambda module, args, out: torch.zeros_like(out))
            for t in (0.5, 1.0):
                x_t = sched.add_noise(x0, torch.randn(x0.shape, generator=g), torch.full((len(items),), t))
                rows[f"x0_t{t}_told_without_head"] = eyes(den(x_t, torch.full((len(items),), t), cond))
            handle.remove()
        smp = info.sampler
        opts = smp.sampler_options()
        guided = multi_cfg(den, smp.cfg_audio, smp.cfg_ref)     # what a one-step student learns to output at t = 1
        rows["x0_t1.0_told_guided"] = eyes(guided(torch.randn(x0.shape, generator=g), torch.ones(len(items)), cond))
        for ca, cr in ((smp.cfg_audio, smp.cfg_ref), (1.0, 1.0)):
            fn = den if (ca, cr) == (1.0, 1.0) else multi_cfg(den, ca, cr)
            gen = torch.Generator().manual_seed(0)
            z = smp.kind(fn, torch.randn(x0.shape, generator=gen), opts.timesteps(sched, smp.steps), cond,
                         schedule=sched, generator=gen, callback=lambda *_: None, **opts.kwargs())
            rows[f"sampled_cfg{ca}_{cr}"] = eyes(z)
    for k, v in rows.items():
        print(k, v)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
