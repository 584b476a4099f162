import sys, json, numpy as np, torch
from pathlib import Path
from safetensors.torch import load_file
from lipstep.train.teacher import TeacherConfig, build_teacher_net, audio_stats
from lipstep.codecs.vae import load_codec
from lipstep.audio.encoders import build_audio_encoder
from lipstep.pipeline import AvatarPipeline, ModelInfo
from lipstep.data.dataset import read_manifest, open_shard
from PIL import Image
torch.set_num_threads(1)
step = sys.argv[1]
CONFIGS = eval(sys.argv[2]) if len(sys.argv) > 2 else [(3, 1.5, 25, 0.0), (1, 1, 25, 0.0), (2, 1, 25, 0.0)]
prep = Path("/work/runs/t8/prepared")
cfg = TeacherConfig()
codec = load_codec("/work/runs/t8/codec"); codec.cfg.image_size = 64
audio = build_audio_encoder(cfg.audio)
net = build_teacher_net(cfg, codec, audio.feature_dim, audio.window, audio_stats(prep))
sd = load_file(f"/work/runs/t8/teacher/checkpoints/step_{step}/denoiser/ema.safetensors")
missing, unexpected = net.load_state_dict(sd, strict=False); print("missing", missing[:3], "unexpected", unexpected[:3])
net.eval()
info = ModelInfo(schedule="vp_x0", residual=4.0, image_size=64)
pipe = AvatarPipeline(info, codec, audio, net)
row = [r for r in read_manifest(prep) if r["split"] == "test"][0]
d = open_shard(prep / row["shard"], ("frames", "audio", "mel"))
n = 32
real = np.asarray(d["frames"][:n])
z = pipe.encode_image(real[0])
feats = audio.encode(d["audio"], 32)
rows = [np.concatenate([real[i] for i in range(0, n, 4)], 1)]
for ca, cr, st, eta in CONFIGS:
    pipe.info.sampler.options["eta"] = eta
    lat, _ = pipe.generate_latents(z, feats, steps=st, cfg_audio=ca, cfg_ref=cr, n_frames=n, seed=0)
    fr = pipe.decode(lat)
    err = np.abs(fr.astype(float) - real.astype(float)).mean()
    print(ca, cr, st, eta, "L1", round(err, 2), flush=True)
    rows.append(np.concatenate([fr[i] for i in range(0, n, 4)], 1))
img = np.concatenate(rows, 0)
Image.fromarray(img).resize((img.shape[1] * 2, img.shape[0] * 2), Image.NEAREST).save(f"/tmp/probe_{step}.png")
