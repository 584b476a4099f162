import sys, numpy as np, torch
from pathlib import Path
from PIL import Image
from lipstep.pipeline import AvatarPipeline
from lipstep.data.dataset import read_manifest, open_shard
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv)>3 else 2)
prep = Path("/work/runs/t8/prepared")
src = sys.argv[1]
if src.endswith(".safetensors"):
    from safetensors.torch import load_file
    pipe = AvatarPipeline.from_pretrained("/work/main/src/lipstep/weights/teacher"); pipe.denoiser.float()
    import dataclasses, os
    from lipstep.nets.dit import AvatarDiT
    pipe.denoiser = AvatarDiT(dataclasses.replace(pipe.denoiser.cfg, out_head=int(os.environ.get("HEAD", "0"))))
    pipe.denoiser.load_state_dict(load_file(src), strict=True)
else:
    pipe = AvatarPipeline.from_pretrained(src); pipe.denoiser.float()
pipe.denoiser.eval(); print("anchor_every", pipe.info.anchor_every)
tag = sys.argv[2]
rows_all = [r for r in read_manifest(prep) if r["split"] == "test"]
n = 32; out=[]
for ci, row in enumerate(rows_all[:3:2]):
    d = open_shard(prep / row["shard"], ("frames", "audio", "mel"))
    real = np.asarray(d["frames"][:n]); z = pipe.encode_image(real[0])
    feats = pipe.audio_encoder.encode(d["audio"], 32)
    out.append(np.concatenate([real[i] for i in range(0, n, 4)], 1))
    for eta in (0.0, 1.0):
        pipe.info.sampler.options["eta"] = eta
        lat, _ = pipe.generate_latents(z, feats, steps=25, cfg_audio=3, cfg_ref=1.5, n_frames=n, seed=0)
        fr = pipe.decode(lat)
        print(tag, row["id"], "eta", eta, "L1", round(float(np.abs(fr.astype(float) - real.astype(float)).mean()), 2), flush=True)
        out.append(np.concatenate([fr[i] for i in range(0, n, 4)], 1))
img = np.concatenate(out, 0)
Image.fromarray(img).resize((img.shape[1] * 2, img.shape[0] * 2), Image.NEAREST).save(f"/tmp/diag/probe_{tag}.png")
