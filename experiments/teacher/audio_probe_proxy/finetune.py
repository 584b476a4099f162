"""Proxy for the audio-probe loss: fine-tune the bundled teacher v3 with an audio probe added.

Usage: python finetune.py PREPARED OUT AUDIO_MOUTH_WEIGHT STEPS [adaln] (see experiments/teacher/README.md).
With ``adaln`` the net also gets the per-frame audio adaLN (DiTConfig.audio_adaln, zero-initialised).
The control (the same fine-tune without any mouth term) is mouth_loss_proxy/finetune.py with weight 0.
"""
import sys
from dataclasses import replace
from pathlib import Path

from lipstep.codecs.cache import encode_prepared
from lipstep.data.dataset import WindowConfig, WindowDataset
from lipstep.nets.dit import AvatarDiT
from lipstep.pipeline import AvatarPipeline, save_model
from lipstep.train.loop import TrainConfig, train
from lipstep.train.teacher import TeacherLossConfig, TeacherMethod

prepared, out, weight, steps = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
adaln = sys.argv[5:] == ["adaln"]
pipe = AvatarPipeline.from_pretrained("src/lipstep/weights/teacher")
v3 = pipe.denoiser.float()
net = AvatarDiT(replace(v3.cfg, audio_probe=3, audio_adaln=adaln))
missing, unexpected = net.load_state_dict(v3.state_dict(), strict=False)
assert not unexpected and all(k.startswith(("audio_probe.", "audio_adaln.")) for k in missing), (missing, unexpected)
net.train()
codec = pipe.codec.float()
cache = encode_prepared(prepared, codec, progress=False)
ds = WindowDataset(prepared, "train", WindowConfig(frames=pipe.info.frames, motion_frames=pipe.info.motion_frames),
                   latents=cache, pixels=False)
method = TeacherMethod(net, pipe.schedule, TeacherLossConfig(motion_weight=2, audio_mouth_weight=weight))
state = train(method, ds, TrainConfig(steps=steps, batch_size=8, lr=2e-4, warmup_steps=20, ema_decay=0.98,
                                      checkpoint_every=10**6, log_every=10), out, progress=True)
save_model(out / "model", pipe.info, codec, pipe.audio_encoder, state.emas["denoiser"].shadow.eval())
print("done", flush=True)
