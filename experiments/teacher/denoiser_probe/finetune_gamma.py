"""Proxy for the loss weighting: fine-tune the bundled teacher v3 with a given min-SNR gamma.

Usage: python finetune_gamma.py PREPARED OUT GAMMA STEPS (see experiments/teacher/README.md).
GAMMA 5 is the default weighting (the control); 0 is the plain v-prediction MSE, which weights the
x0 error at high noise far more. Measure the result with probe.py (one-step mouths per noise level).
"""
import sys
from pathlib import Path

from lipstep.codecs.cache import encode_prepared
from lipstep.data.dataset import WindowConfig, WindowDataset
from lipstep.pipeline import AvatarPipeline, save_model
from lipstep.train.loop import TrainConfig, train
from lipstep.train.teacher import TeacherLossConfig, TeacherMethod

prepared, out, gamma, steps = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
pipe = AvatarPipeline.from_pretrained("src/lipstep/weights/teacher")
net = pipe.denoiser.float().train().requires_grad_(True)
codec = pipe.codec.float()
cache = encode_prepared(prepared, codec, progress=False)
ds = WindowDataset(prepared, "train", WindowConfig(frames=pipe.info.frames, motion_frames=pipe.info.motion_frames),
                   latents=cache, pixels=False)
method = TeacherMethod(net, pipe.schedule, TeacherLossConfig(motion_weight=2, min_snr_gamma=gamma))
state = train(method, ds, TrainConfig(steps=steps, batch_size=8, lr=2e-4, warmup_steps=20, ema_decay=0.98,
                                      checkpoint_every=10**6, log_every=10), out, progress=True)
save_model(out / "model", pipe.info, codec, pipe.audio_encoder, state.emas["denoiser"].shadow.eval())
print("done", flush=True)
