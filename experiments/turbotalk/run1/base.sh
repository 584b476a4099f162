#!/usr/bin/env bash
# Baselines of stage 2: the DMD-4 generator run at 2 and 1 steps without any round.
set -uo pipefail
cd /work/main
source .venv/bin/activate
R=/work/runs/turbo
while [ ! -f $R/after.done ]; do sleep 10; done
for s in 2 1; do
  OMP_NUM_THREADS=1 lipstep eval --model $R/dmd4/model --steps $s --data /work/runs/t8/prepared --split test --max-clips 8 --seconds 2 --out $R/ev_dmd4_at$s > $R/ev_dmd4_at$s.log 2>&1
done
date > $R/base.done
