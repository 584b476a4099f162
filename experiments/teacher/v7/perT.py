import sys, torch, numpy as np
from pathlib import Path
from lipstep.pipeline import AvatarPipeline
from lipstep.data.dataset import WindowDataset, WindowConfig
from lipstep.distill.losses import batch_cond
torch.set_num_threads(2); torch.manual_seed(0)
prep = Path("/work/runs/t8/prepared")
pipe = AvatarPipeline.from_pretrained(sys.argv[1] if len(sys.argv)>1 else "/work/runs/t8/teacher/model")
net, sched = pipe.denoiser.eval(), pipe.schedule
ds = WindowDataset(prep, "test", WindowConfig(), latents=prep/"latents/pixel-c12-f2-00adb27a3664", pixels=False, residual=4.0)
idx = np.random.default_rng(0).choice(len(ds), 24, replace=False)
b = torch.utils.data.default_collate([ds[int(i)] for i in idx])
x0 = b["latents"]; cond = batch_cond(b)
print("x0 std", x0.std().item(), "abs mean", x0.abs().mean().item(), "frac |x|>0.1", (x0.abs()>0.1).float().mean().item())
g = torch.Generator().manual_seed(1)
eps = torch.randn(x0.shape, generator=g)
print(" t   snr     net_x0_mse  zero_mse  copy_mse(x_t/a)  net_mse_on_moving  net_mse_static")
mov = (x0.abs().amax(dim=(1,2),keepdim=True) > 0.05).float().expand_as(x0)
with torch.no_grad():
    for t in [0.02,0.05,0.1,0.2,0.3,0.5,0.7,1.0]:
        tt = torch.full((len(x0),), t)
        xt = sched.add_noise(x0, eps, tt)
        pred = net(xt, sched.model_time(tt), cond)
        x0h = sched.to_x0(pred, xt, tt)
        a, s = sched.coeffs(tt, x0)
        e = (x0h - x0).square()
        print(f"{t:.2f} {sched.snr(torch.tensor(t)).item():8.3f} {e.mean():.5f} {x0.square().mean():.5f} {((xt/a)-x0).square().mean():.5f}"
              f"  {(e*mov).sum()/mov.sum():.5f} {(e*(1-mov)).sum()/(1-mov).sum():.5f}")
last = b["motion_latents"][:, -1:].expand_as(x0)
print("copy-last-motion mse", (last-x0).square().mean().item(), "moving", ((last-x0).square()*mov).sum().item()/mov.sum().item())
for k in range(8):
    print("frame",k,"copy-last mse", (last[:,k]-x0[:,k]).square().mean().item())
