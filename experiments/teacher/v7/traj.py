import sys, numpy as np, torch
from pathlib import Path
from PIL import Image
from safetensors.torch import load_file
from lipstep.pipeline import AvatarPipeline
from lipstep.data.dataset import read_manifest, open_shard
from lipstep.diffusion.cond import Cond
from lipstep.diffusion.guidance import multi_cfg
from lipstep.samplers.ddim import sample_ddim
torch.set_num_threads(1)
prep = Path("/work/runs/t8/prepared")
pipe = AvatarPipeline.from_pretrained("/work/main/src/lipstep/weights/teacher"); pipe.denoiser.float()
if len(sys.argv) > 1 and sys.argv[1]: pipe.denoiser.load_state_dict(load_file(sys.argv[1]), strict=False)
pipe.denoiser.eval()
row = [r for r in read_manifest(prep) if r["split"] == "test"][0]
d = open_shard(prep / row["shard"], ("frames", "audio", "mel"))
real = np.asarray(d["frames"][:8]); ref = pipe.encode_image(real[0])
feats = pipe.audio_encoder.encode(d["audio"], 8)[None]
cond = Cond(reference=ref, audio=feats.float(), motion=torch.zeros(1, 2, *ref.shape[1:]))
ca, cr = (float(sys.argv[2]), float(sys.argv[3])) if len(sys.argv) > 3 else (3.0, 1.5)
den = multi_cfg(pipe.model_fn(), ca, cr)
ts = pipe.schedule.timesteps(25)
gen = torch.Generator().manual_seed(0)
noise = torch.randn((1, 8, *ref.shape[1:]), generator=gen)
rows = []
def cb(i, t, x, x0):
    if i % 3 == 0 or i == 24:
        fr = pipe.decode((ref[:, None] + x0 / 4)[0])
        rows.append(np.concatenate([fr[0], fr[4], fr[7]], 1))
        print(i, round(float(t[0]), 3), "x0 abs mean", round(float(x0.abs().mean()), 4), "max", round(float(x0.abs().max()), 2), flush=True)
with torch.no_grad():
    z = sample_ddim(den, noise, ts, cond, schedule=pipe.schedule, callback=cb)
img = np.concatenate([np.concatenate(rows[:5], 1), np.concatenate(rows[5:] + [rows[0]*0]*(10-len(rows)), 1)], 0)
Image.fromarray(img).resize((img.shape[1]*2, img.shape[0]*2), Image.NEAREST).save("/tmp/diag/traj.png")
