# Needs a lipstep commit from before 2026-12-05, which removed the options it exercises.
"""Proxy for the audio-probe loss: fine-tune the bundled teacher v3 with an audio probe added.

Usage: python finetune.py PREPARED OUT AUDIO_MOUTH_WEIGHT STEPS [adaln] (see experiments/teacher/README.md).
With ``adaln`` the net also gets the per-frame audio adaLN (DiTConfig.audio_adaln, zero-initialised).
The control (the same fine-tune without any mouth term) is mouth_loss_proxy/finetune.py with weight 0.
"""
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from proxy import finetune, load, windows  # noqa: E402

from lipstep.nets.dit import AvatarDiT  # noqa: E402
from lipstep.train.teacher import TeacherLossConfig, TeacherMethod  # noqa: E402

prepared, out, weight, steps = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
adaln = sys.argv[5:] == ["adaln"]
pipe = load()
v3 = pipe.denoiser.float()
net = AvatarDiT(replace(v3.cfg, audio_probe=3, audio_adaln=adaln))
missing, unexpected = net.load_state_dict(v3.state_dict(), strict=False)
assert not unexpected and all(k.startswith(("audio_probe.", "audio_adaln.")) for k in missing), (missing, unexpected)
net.train()
_, ds = windows(pipe, prepared)
method = TeacherMethod(net, pipe.schedule, TeacherLossConfig(motion_weight=2, audio_mouth_weight=weight))
finetune(method, ds, pipe, out, steps)
