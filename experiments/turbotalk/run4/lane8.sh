#!/bin/bash
# own-chunk ablation: a chained layout (anchor_every 0), 4 -> 2 round with ground-truth motion context (chain 1)
# or the student's own previous chunk (chain 2); then 60-s chained runs. usage: lane8.sh NAME CHAIN
cd /work/main
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
L=/work/main/.venv/bin/lipstep
R=/work/runs/turbo
name=$1; chain=$2
t0=$(date +%s)
if [ ! -f $R/$name.done ]; then
  if [ -d $R/$name/checkpoints ]; then RES=--resume; else RES=; fi
  $L distill adversarial --data /work/runs/t13/prepared --out $R/$name --student $R/dmd4_chained --teacher teacher $RES \
     chain=$chain > $R/$name.log 2>&1 && touch $R/$name.done
  echo "$name $(( $(date +%s) - t0 )) s (1 thread, two lanes)" >> $R/times6.txt
fi
[ -f $R/long_$name/metrics.json ] || $L eval --data /work/runs/t8/prepared --split test --model $R/$name/model --long 60 \
   --identities 3 --out $R/long_$name > $R/long_$name.log 2>&1
echo "$name lane done" >> $R/times6.txt
