#!/usr/bin/env bash
# DMD2 with the GAN head on real latents (gan_weight 5e-3, gan_d_weight 1e-2), same data, steps and seed as dmd4.
set -uo pipefail
cd /work/main
source .venv/bin/activate
R=/work/runs/turbo
while [ ! -f $R/run2.done ]; do sleep 10; done
echo "gan_start $(date +%s)" >> $R/times.txt
[ -f $R/dmd4g/model/lipstep.json ] || lipstep distill dmd --data /work/runs/t13/prepared --out $R/dmd4g --teacher teacher gan_weight=5e-3 $( [ -d $R/dmd4g/checkpoints ] && echo --resume ) > $R/dmd4g.log 2>&1
echo "dmd4g $(date +%s)" >> $R/times.txt
OMP_NUM_THREADS=2 lipstep eval --model $R/dmd4g/model --data /work/runs/t8/prepared --split test --max-clips 8 --seconds 2 --out $R/ev_dmd4g > $R/ev_dmd4g.log 2>&1
echo "ev_dmd4g $(date +%s)" >> $R/times.txt
date > $R/gan.done
