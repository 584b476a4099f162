#!/usr/bin/env bash
# Direct 4 -> 1 round against real data (reference=data) with the learning discriminator of b2.
set -uo pipefail
cd /work/main
source .venv/bin/activate
R=/work/runs/turbo
D=/work/runs/t13/prepared
echo "c1_start $(date +%s)" >> $R/times.txt
lipstep distill adversarial --data $D --out $R/c1 --student $R/dmd4/model --teacher teacher target_steps=1 reference=data d_lr=1e-4 d_t_mean=-1.0 > $R/c1.log 2>&1
echo "c1 $(date +%s)" >> $R/times.txt
OMP_NUM_THREADS=2 lipstep eval --model $R/c1/model --data /work/runs/t8/prepared --split test --max-clips 8 --seconds 2 --out $R/ev_c1 > $R/ev_c1.log 2>&1
echo "ev_c1 $(date +%s)" >> $R/times.txt
date > $R/run2.done
