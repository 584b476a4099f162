"""Copy an evaluators directory (`lipstep train evaluators`) into the package with float16 weights.

    python experiments/eval/bundle_evaluators.py SRC [DST=src/lipstep/weights/evaluators]

Floating-point tensors are stored as float16 (the loaders cast back to float32); integer tensors
(BatchNorm counters) and every config.json / train.json are copied unchanged. The copy is atomic.
"""

import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from lipstep.fsutil import atomic_dir

src = Path(sys.argv[1])
dst = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("src/lipstep/weights/evaluators")
with atomic_dir(dst) as tmp:
    for sub in sorted(p for p in src.iterdir() if p.is_dir()):
        (tmp / sub.name).mkdir()
        for f in sorted(sub.iterdir()):
            if f.suffix == ".safetensors":
                state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in load_file(str(f)).items()}
                save_file(state, str(tmp / sub.name / f.name), metadata={"format": "pt", "dtype": "float16"})
            elif f.suffix == ".json":
                shutil.copyfile(f, tmp / sub.name / f.name)
size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
print(f"wrote {dst} ({size / 2**20:.1f} MB)")
