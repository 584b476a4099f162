#!/bin/bash
# session 6 (1 thread): after lane3 (the viseme student): DMD2 at 1 step over 60 s, turbo4 as bundled, and
# the 4 -> 2 round without the timestep curriculum.
cd /work/main
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
L=/work/main/.venv/bin/lipstep
D=/work/runs/t13/prepared
E=/work/runs/t8/prepared
R=/work/runs/turbo
while ! grep -q "lane3 done" /work/runs/lite/times.txt; do sleep 15; done
ev() { name=$1; shift; [ -f $R/$name/metrics.json ] && return; t0=$(date +%s);
  $L eval --data $E --split test --out $R/$name "$@" > $R/$name.log 2>&1
  echo "$name $(( $(date +%s) - t0 )) s (eval, 1 thread)" >> $R/times6.txt; }
ev ev_turbo4_bundled --model turbo4 --max-clips 8 --seconds 2
ev long_dmd4g_at1 --model $R/dmd4g/model --steps 1 --long 60 --identities 3
if [ ! -f $R/adv2_nocurr.done ]; then
  t0=$(date +%s)
  if [ -d $R/adv2_nocurr/checkpoints ]; then RES=--resume; else RES=; fi
  $L distill adversarial --data $D --out $R/adv2_nocurr --student $R/dmd4/model --teacher teacher $RES \
     curriculum=none > $R/adv2_nocurr.log 2>&1 && touch $R/adv2_nocurr.done
  echo "adv2_nocurr $(( $(date +%s) - t0 )) s (1 thread, shared)" >> $R/times6.txt
fi
ev ev_adv2_nocurr --model $R/adv2_nocurr/model --max-clips 8 --seconds 2
echo lane6 done >> $R/times6.txt
