"""Build FADA's ablation tables (paper Tables 2-4) from `lipstep eval` results.

    python experiments/fada/tables.py DATA_ROOT > experiments/fada/tables.md

Reads DATA_ROOT/fada_eval/<run>/metrics.json (written by experiments/fada/ablations.sh) and
DATA_ROOT/fada/<run>/distill.json; prints one markdown table per paper table. Missing runs are listed
as such, never filled in.
"""

import json
import sys
from pathlib import Path

ROOT = Path(sys.argv[1])
COLS = [("nfe", "NFE/chunk", "{:.0f}"), ("mouth_err", "MouthErr ↓", "{:.4f}"), ("mouth_corr", "mouth corr ↑", "{:.3f}"),
        ("sync_c", "Sync-C ↑", "{:.3f}"), ("sync_d", "Sync-D ↓", "{:.3f}"), ("fd", "FD ↓", "{:.2f}"),
        ("fvd", "FVD ↓", "{:.2f}"), ("id_sim", "ID sim ↑", "{:.3f}"), ("psnr_gt", "PSNR ↑", "{:.2f}"),
        ("flicker", "flicker", "{:.4f}")]

TABLES = {
    "Table 2 — basic distillation (6 steps, one pass, CFG tokens, no mixed supervision)": [
        ("teacher_25x3", "teacher, DDIM 25 × 3 CFG passes"),
        ("teacher_6x3", "teacher, DDIM 6 × 3 CFG passes (no distillation)"),
        ("untrained", "teacher weights under the student sampler, no training (control)"),
        ("reflow_k1", "rectified-flow student (1 window, velocity target)"),
        ("perflow_k4", "PeRFlow student (4 windows, ddim_eps target)"),
    ],
    "Table 3 — mixed supervision (students trained on the moderate-quality world)": [
        ("perflow_k4", "Fixed-0 (distillation only)"),
        ("mixed_fixed0.2", "Fixed-0.2"),
        ("mixed_fixed1.0", "Fixed-1.0"),
        ("mixed_unlimited", "adaptive, unlimited (W0·R^s)"),
        ("mixed_adaptive", "adaptive (FADA W(R))"),
    ],
    "Table 4 — multi-CFG distillation (6 steps, one pass)": [
        ("cfg_none", "w/o CFG (conditional teacher only)"),
        ("cfg_time", "CFG scales in the time embedding"),
        ("cfg_plain", "CFG layer without tokens (MLP of the scales)"),
        ("perflow_k4", "CFG layer + tokens (FADA)"),
    ],
}


def row(name: str, label: str) -> str:
    path = ROOT / "fada_eval" / name / "metrics.json"
    if not path.is_file():
        return f"| {label} | `{name}` | " + " | ".join("not run" for _ in COLS) + " |"
    m = json.loads(path.read_text())
    cells = [fmt.format(m[k]) if isinstance(m.get(k), (int, float)) else "–" for k, _, fmt in COLS]
    return f"| {label} | `{name}` | " + " | ".join(cells) + " |"


for title, rows in TABLES.items():
    print(f"### {title}\n")
    print("| run | dir | " + " | ".join(h for _, h, _ in COLS) + " |")
    print("|---|---|" + "---|" * len(COLS))
    for name, label in rows:
        print(row(name, label))
    print()
