import numpy as np
from pathlib import Path
from lipstep.data.dataset import read_manifest
from lipstep.data.latents import load_latents
prep = Path("/work/runs/t8/prepared"); cache = prep/"latents/pixel-c12-f2-00adb27a3664"
rows = [r for r in read_manifest(prep) if r["split"]=="train"][:40]
res = {}
for r in rows:
    z = load_latents(cache, str(r["id"])).astype(np.float32)
    n = len(z)
    for d in (1,2,4,8,16,32,64):
        if d < n:
            res.setdefault(d, []).append(np.mean(np.square(z[d:]-z[:-d]))*16)
for d,v in res.items(): print(d, round(float(np.mean(v)),4))
