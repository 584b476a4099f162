"""The 1/2/4-NFE table: `lipstep eval` metrics.json files side by side (markdown), with ratios to the teacher.

usage: python table.py LABEL=PATH/metrics.json ... (the first is the reference, e.g. teacher=...)
"""
import json
import math
import sys

ROWS = [("nfe", "NFE per chunk", "{:.0f}"), ("mouth_err", "MouthErr ↓", "{:.4f}"), ("mouth_corr", "mouth corr ↑", "{:.3f}"),
        ("sync_c", "Sync-C ↑", "{:.3f}"), ("sync_d", "Sync-D ↓", "{:.3f}"), ("fd", "FD ↓", "{:.3f}"),
        ("fvd", "FVD ↓", "{:.3f}"), ("id_sim", "identity similarity ↑", "{:.4f}"),
        ("id_psnr", "identity-region PSNR (dB) ↑", "{:.2f}"), ("colour_shift", "colour shift ↓", "{:.2f}"),
        ("psnr_gt", "PSNR vs ground truth ↑", "{:.2f}"), ("flicker", "flicker ↓", "{:.4f}")]
RATIO = {"mouth_err", "sync_c", "fd"}

cols = [a.split("=", 1) for a in sys.argv[1:]]
data = {label: json.load(open(path)) for label, path in cols}
ref = data[cols[0][0]]
print("| metric | " + " | ".join(label for label, _ in cols) + " |")
print("|---|" + "---|" * len(cols))
for key, name, fmt in ROWS:
    cells = []
    for label, _ in cols:
        v = data[label].get(key)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            cells.append("–")
            continue
        cell = fmt.format(v)
        if key in RATIO and data[label] is not ref and ref.get(key):
            cell += f" ({v / ref[key]:.2f}×)"
        cells.append(cell)
    print(f"| {name} | " + " | ".join(cells) + " |")
