"""TempoSyncDiff's table: `lipstep eval` metrics.json files (and `lipstep bench` rows) side by side, in the
paper's columns (method, steps, ms/frame, fps, flicker, identity, sync) plus lip accuracy and PSNR against the
codec's reconstruction of the real frames; ratios to the first row for MouthErr and flicker.

usage: python table.py [--bench bench.json] LABEL=PATH/metrics.json[@BENCH_ROW] ...
"""
import argparse
import json
import math

COLS = [("nfe", "NFE/chunk", "{:.0f}"), ("ms_per_frame", "ms/frame", "{:.1f}"), ("fps", "fps", "{:.1f}"),
        ("flicker", "flicker ↓", "{:.4f}"), ("id_sim", "identity ↑", "{:.4f}"), ("sync_c", "Sync-C ↑", "{:.3f}"),
        ("mouth_err", "MouthErr ↓", "{:.4f}"), ("fd", "FD ↓", "{:.3f}"), ("psnr_codec", "PSNR vs codec recon. ↑", "{:.2f}")]
RATIO = {"mouth_err", "flicker"}

parser = argparse.ArgumentParser()
parser.add_argument("--bench", action="append", default=[], help="bench.json files (rows looked up by name)")
parser.add_argument("rows", nargs="+")
args = parser.parse_args()
bench = {}
for path in args.bench:
    bench.update(json.load(open(path))["models"])
rows = []
for spec in args.rows:
    label, rest = spec.split("=", 1)
    path, _, key = rest.partition("@")
    data = dict(json.load(open(path)))
    if key:
        data.update({k: bench[key][k] for k in ("ms_per_frame", "fps")})
    rows.append((label, data))
ref = rows[0][1]
print("| method | " + " | ".join(name for _, name, _ in COLS) + " |")
print("|---|" + "---|" * len(COLS))
for label, data in rows:
    cells = []
    for key, _, fmt in COLS:
        v = data.get(key)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            cells.append("–")
            continue
        cell = fmt.format(v)
        if key in RATIO and data is not ref and ref.get(key):
            cell += f" ({v / ref[key]:.2f}×)"
        cells.append(cell)
    print(f"| {label} | " + " | ".join(cells) + " |")
