import sys, torch, numpy as np
from pathlib import Path
from PIL import Image
from lipstep.pipeline import AvatarPipeline
from lipstep.data.dataset import WindowDataset, WindowConfig
from lipstep.distill.losses import batch_cond
from lipstep.diffusion.denoiser import Denoiser
torch.set_num_threads(1)
prep = Path("/work/runs/t8/prepared")
pipe = AvatarPipeline.from_pretrained("/work/main/src/lipstep/weights/teacher")
D = Denoiser(pipe.denoiser.float().eval(), pipe.schedule); sched = pipe.schedule
ds = WindowDataset(prep, "test", WindowConfig(), latents=prep/"latents/pixel-c12-f2-00adb27a3664", pixels=False, residual=4.0)
its = [ds[i] for i in range(len(ds)) if int(ds[i]["clip_index"])==0][5:6]
b = torch.utils.data.default_collate(its); x0 = b["latents"]; cond = batch_cond(b); ref = b["reference_latent"]
def dec(x): return pipe.decode((ref[:, None] + x / 4)[0])[3]
rows=[]
with torch.no_grad():
  for t in [0.4, 0.7]:
    preds=[]
    for seed in range(6):
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        tt=torch.full((1,),t); preds.append(D.x0(sched.add_noise(x0,eps,tt),tt,cond))
    P=torch.stack(preds); mean=P.mean(0)
    print(t, "err of single", float((P-x0).square().mean()), "err of mean-of-6", float((mean-x0).square().mean()), "var across eps", float(P.var(0).mean()))
    rows.append(np.concatenate([dec(x0)]+[dec(p) for p in preds[:4]]+[dec(mean)],1))
img=np.concatenate(rows,0); Image.fromarray(img).resize((img.shape[1]*3,img.shape[0]*3),Image.NEAREST).save("/tmp/diag/noisedep.png")
