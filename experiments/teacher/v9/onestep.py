import sys, torch, numpy as np
from pathlib import Path
from PIL import Image
from lipstep.pipeline import AvatarPipeline
from lipstep.data.dataset import WindowDataset, WindowConfig
from lipstep.distill.losses import batch_cond
from lipstep.diffusion.denoiser import Denoiser
from lipstep.samplers.ddim import sample_ddim
torch.set_num_threads(2)
prep = Path("/work/runs/t8/prepared")
pipe = AvatarPipeline.from_pretrained("/work/main/src/lipstep/weights/teacher")
if len(sys.argv)>2:
    from safetensors.torch import load_file; pipe.denoiser.load_state_dict(load_file(sys.argv[2]), strict=False)
net, sched = pipe.denoiser.eval(), pipe.schedule
D = Denoiser(net, sched)
ds = WindowDataset(prep, "test", WindowConfig(), latents=prep/"latents/pixel-c12-f2-00adb27a3664", pixels=False, residual=4.0)
clip = int(sys.argv[1]) if len(sys.argv)>1 else 0
it = [ds[i] for i in range(len(ds)) if int(ds[i]["clip_index"])==clip][5]
b = torch.utils.data.default_collate([it]); x0 = b["latents"]; cond = batch_cond(b)
ref = b["reference_latent"]
def dec(x): return pipe.decode((ref[:, None] + x / 4)[0])[3]
g = torch.Generator().manual_seed(1); eps = torch.randn(x0.shape, generator=g)
rows=[dec(x0)]
with torch.no_grad():
    for t in [0.05,0.2,0.4,0.6,0.8,1.0]:
        tt=torch.full((1,),t); xt=sched.add_noise(x0,eps,tt); rows.append(dec(D.x0(xt,tt,cond)))
    # sampling from pure noise and from SDEdit t=0.5 with cfg 1
    ts = sched.timesteps(25)
    z = sample_ddim(D, eps, ts, cond, schedule=sched); rows.append(dec(z))
    ts2 = ts[ts<=0.5]; z = sample_ddim(D, sched.add_noise(x0,eps,torch.full((1,),float(ts2[0]))), ts2, cond, schedule=sched); rows.append(dec(z))
img=np.concatenate(rows,1)
Image.fromarray(img).resize((img.shape[1]*3,img.shape[0]*3),Image.NEAREST).save(f"/tmp/diag/onestep{clip}_{sys.argv[3] if len(sys.argv)>3 else 0}.png")
