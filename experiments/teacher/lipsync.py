"""Teacher lip-sync acceptance: right audio vs a different clip's audio on held-out identities.

    python experiments/teacher/lipsync.py MODEL PREPARED [--clips 8 --seconds 2 --steps 25] [--reader DIR] [--out FILE]

MODEL: a model directory or bundled name; PREPARED: a prepared synthetic world (test split = identities
the model never saw); --reader: a trained mouth reader (`lipstep train mouth-reader`, MouthErr),
default: the pixel probe. Prints and optionally writes the `lipstep.eval.mouth.lipsync_check` report.
"""

import argparse
import json

import torch

from lipstep.eval.mouth import lipsync_check
from lipstep.eval.mouthreader import MouthReader
from lipstep.fsutil import write_json_atomic
from lipstep.pipeline import AvatarPipeline

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("prepared")
p.add_argument("--clips", type=int, default=8)
p.add_argument("--seconds", type=float, default=2.0)
p.add_argument("--steps", type=int, default=None)
p.add_argument("--cfg-audio", type=float, default=None)
p.add_argument("--cfg-ref", type=float, default=None)
p.add_argument("--split", default="test")
p.add_argument("--reader", default=None)
p.add_argument("--out", default=None)
a = p.parse_args()
torch.set_num_threads(torch.get_num_threads())
pipe = AvatarPipeline.from_pretrained(a.model)
report = lipsync_check(pipe, a.prepared, split=a.split, max_clips=a.clips, seconds=a.seconds, steps=a.steps,
                       cfg_audio=a.cfg_audio, cfg_ref=a.cfg_ref,
                       reader=MouthReader(a.reader) if a.reader else None)
report.update(model=str(a.model), steps=a.steps or pipe.info.sampler.steps,
              cfg_audio=pipe.info.sampler.cfg_audio if a.cfg_audio is None else a.cfg_audio,
              cfg_ref=pipe.info.sampler.cfg_ref if a.cfg_ref is None else a.cfg_ref)
print(json.dumps(report, indent=2))
if a.out:
    write_json_atomic(a.out, report)
