# Needs a lipstep commit from before 2026-12-05, which removed the options it exercises.
"""Proxy for the mouth-expert loss: fine-tune the bundled teacher v3 with or without it.

Usage: python finetune.py PREPARED OUT MOUTH_WEIGHT STEPS (see experiments/teacher/README.md).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from proxy import finetune, load, windows  # noqa: E402

from lipstep.train.expert import train_mouth_expert  # noqa: E402
from lipstep.train.teacher import TeacherLossConfig, TeacherMethod  # noqa: E402

prepared, out, weight, steps = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
pipe = load()
cache, ds = windows(pipe, prepared)
expert = train_mouth_expert(prepared, cache, out / "mouth_expert", progress=False) if weight > 0 else None
net = pipe.denoiser.float().train().requires_grad_(True)
method = TeacherMethod(net, pipe.schedule, TeacherLossConfig(motion_weight=2, mouth_weight=weight), expert=expert)
finetune(method, ds, pipe, out, steps)
