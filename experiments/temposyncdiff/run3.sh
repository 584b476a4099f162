#!/bin/bash
# src1 (init=source, 192x1) to 3000 steps, then ablations of it at 1000 steps, then the teacher as source.
cd /work/main
L=/work/main/.venv/bin/lipstep
D=/work/runs/t13/prepared
A=/work/runs/lite/anchor_id
R=/work/runs/lite
S="identity_net=$A width_factor=1 depth_factor=0.17"
t0=$(date +%s)
if [ ! -f $R/src1_3000.done ]; then
  $L distill lite --data $D --out $R/src1 --steps 3000 --resume > $R/src1_3000.log 2>&1 && touch $R/src1_3000.done
  echo "src1 1000->3000 $(( $(date +%s) - t0 )) s" >> $R/times.txt
fi
run() {  # name, args...
  name=$1; shift
  [ -f $R/$name.done ] && return
  t0=$(date +%s)
  if [ -d $R/$name/checkpoints ]; then RES=--resume; else RES=; fi
  $L distill lite --data $D --out $R/$name --steps 1000 $RES "$@" > $R/$name.log 2>&1 && touch $R/$name.done
  echo "$name $(( $(date +%s) - t0 )) s" >> $R/times.txt
}
for f in $R/queue.d/*; do [ -f "$f" ] && source "$f"; done
