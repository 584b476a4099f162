"""Proxy for the mouth-expert loss: fine-tune the bundled teacher v3 with or without it.

Usage: python finetune.py PREPARED OUT MOUTH_WEIGHT STEPS (see experiments/teacher/README.md).
"""
import sys
from pathlib import Path

from lipstep.codecs.cache import encode_prepared
from lipstep.data.dataset import WindowConfig, WindowDataset
from lipstep.pipeline import AvatarPipeline, save_model
from lipstep.train.expert import train_mouth_expert
from lipstep.train.loop import TrainConfig, train
from lipstep.train.teacher import TeacherLossConfig, TeacherMethod

prepared, out, weight, steps = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
pipe = AvatarPipeline.from_pretrained("src/lipstep/weights/teacher")
net = pipe.denoiser.float().train().requires_grad_(True)
codec = pipe.codec.float()
cache = encode_prepared(prepared, codec, progress=False)
ds = WindowDataset(prepared, "train", WindowConfig(frames=pipe.info.frames, motion_frames=pipe.info.motion_frames),
                   latents=cache, pixels=False)
expert = train_mouth_expert(prepared, cache, out / "mouth_expert", progress=False) if weight > 0 else None
method = TeacherMethod(net, pipe.schedule, TeacherLossConfig(motion_weight=2, mouth_weight=weight), expert=expert)
state = train(method, ds, TrainConfig(steps=steps, batch_size=8, lr=2e-4, warmup_steps=20, ema_decay=0.98,
                                      checkpoint_every=10**6, log_every=10), out, progress=True)
save_model(out / "model", pipe.info, codec, pipe.audio_encoder, state.emas["denoiser"].shadow.eval())
print("done", flush=True)
