#!/bin/bash
# TempoSyncDiff lite student: main run (1000 -> 3000 steps) then ablations at 1000 steps.
set -e
cd /work/main
L=/work/main/.venv/bin/lipstep
D=/work/runs/t13/prepared
A=/work/runs/lite/anchor_id
R=/work/runs/lite
t0=$(date +%s)
if [ ! -f $R/main_1000.done ]; then
  if [ -d $R/main/checkpoints ]; then RES=--resume; else RES=; fi
  $L distill lite --data $D --out $R/main --steps 1000 $RES identity_net=$A train.keep_checkpoints=3 > $R/main_1000.log 2>&1
  rm -rf $R/main_1000 && cp -r $R/main/model $R/main_1000 && touch $R/main_1000.done
  echo "main_1000 $(( $(date +%s) - t0 )) s" >> $R/times.txt
fi
t0=$(date +%s)
if [ ! -f $R/main.done ]; then
  $L distill lite --data $D --out $R/main --steps 3000 --resume > $R/main.log 2>&1
  touch $R/main.done
  echo "main_3000 $(( $(date +%s) - t0 )) s" >> $R/times.txt
fi
for ab in "no_id id_weight=0" "no_temp temp_weight=0 identity_net=$A" "scratch target=data identity_net=$A"; do
  set -- $ab; name=$1; shift
  t0=$(date +%s)
  if [ ! -f $R/$name.done ]; then
    if [ -d $R/$name/checkpoints ]; then RES=--resume; else RES=; fi
    $L distill lite --data $D --out $R/$name --steps 1000 $RES "$@" > $R/$name.log 2>&1
    touch $R/$name.done
    echo "$name $(( $(date +%s) - t0 )) s" >> $R/times.txt
  fi
done
