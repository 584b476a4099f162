import sys, torch, numpy as np
from pathlib import Path
from lipstep.pipeline import AvatarPipeline
from lipstep.data.dataset import WindowDataset, WindowConfig, read_manifest
from lipstep.distill.losses import batch_cond
torch.set_num_threads(2); torch.manual_seed(0)
prep = Path("/work/runs/t8/prepared")
pipe = AvatarPipeline.from_pretrained(sys.argv[1] if len(sys.argv)>1 else "/work/main/src/lipstep/weights/teacher")
net, sched = pipe.denoiser.eval(), pipe.schedule
ds = WindowDataset(prep, "test", WindowConfig(), latents=prep/"latents/pixel-c12-f2-00adb27a3664", pixels=False, residual=4.0)
print(len(ds), [k for k in ds[0].keys()])
items = [ds[i] for i in range(len(ds))]
by = {}
for i,it in enumerate(items):
    by.setdefault(int(it["clip_index"])//4, []).append(i)
print({k:len(v) for k,v in by.items()})
g = torch.Generator().manual_seed(1)
for ident, ids in by.items():
    sel = np.random.default_rng(0).choice(ids, min(16,len(ids)), replace=False)
    b = torch.utils.data.default_collate([items[int(i)] for i in sel])
    x0 = b["latents"]; cond = batch_cond(b)
    eps = torch.randn(x0.shape, generator=g)
    out=[]
    with torch.no_grad():
        for t in [0.02,0.1,0.3,0.5,0.7,1.0]:
            tt = torch.full((len(x0),), t)
            xt = sched.add_noise(x0, eps, tt)
            x0h = pipe_x0 = None
            from lipstep.diffusion.denoiser import Denoiser
            x0h = Denoiser(net, sched).x0(xt, tt, cond)
            out.append(f"{t}:{(x0h-x0).square().mean():.4f}")
    print(ident, "x0^2", f"{x0.square().mean():.4f}", " ".join(out))
