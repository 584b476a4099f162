"""The control row of the FADA tables: the teacher's weights run by the student's sampler, untrained.

    python experiments/fada/untrained_student.py OUT_MODEL_DIR [CFG_MODE=tokens]

Writes a student model directory exactly as `lipstep distill perflow` would after zero training steps
(the CFG layers are zero-initialised, so the net computes the teacher's function): PeRFlow sampler, 6
steps over 4 windows, one pass per step. `lipstep eval` of it shows what the sampler alone gives,
and so how much the distillation itself adds.
"""

import sys

from lipstep.distill.perflow import PerflowConfig, build_student, student_info
from lipstep.pipeline import AvatarPipeline, save_model

out = sys.argv[1]
cfg = PerflowConfig(cfg_mode=sys.argv[2] if len(sys.argv) > 2 else "tokens")
pipe = AvatarPipeline.from_pretrained("teacher")
info = student_info(pipe.info, cfg, trained={"teacher": str(pipe.path), "steps": 0, "note": "untrained control"})
print(save_model(out, info, pipe.codec, pipe.audio_encoder, build_student(pipe.denoiser, cfg).eval()))
