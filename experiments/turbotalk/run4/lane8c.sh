#!/bin/bash
cd /work/main
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
R=/work/runs/turbo
while ! grep -q "adv2_chain1 lane done" $R/times6.txt 2>/dev/null; do sleep 15; done
[ -f $R/long_dmd4_chained_at2/metrics.json ] || /work/main/.venv/bin/lipstep eval --data /work/runs/t8/prepared --split test \
  --model $R/dmd4_chained --steps 2 --long 60 --identities 3 --out $R/long_dmd4_chained_at2 > $R/long_dmd4_chained_at2.log 2>&1
echo "long_dmd4_chained_at2 done" >> $R/times6.txt
