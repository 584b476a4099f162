"""Proxy for the loss weighting: fine-tune the bundled teacher v3 with a given min-SNR gamma.

Usage: python finetune_gamma.py PREPARED OUT GAMMA STEPS (see experiments/teacher/README.md).
GAMMA 5 is the default weighting (the control); 0 is the plain v-prediction MSE, which weights the
x0 error at high noise far more. Measure the result with probe.py (one-step mouths per noise level).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from proxy import finetune, load, windows  # noqa: E402

from lipstep.train.teacher import TeacherLossConfig, TeacherMethod  # noqa: E402

prepared, out, gamma, steps = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
pipe = load()
_, ds = windows(pipe, prepared)
net = pipe.denoiser.float().train().requires_grad_(True)
finetune(TeacherMethod(net, pipe.schedule, TeacherLossConfig(motion_weight=2, min_snr_gamma=gamma)), ds, pipe, out, steps)
