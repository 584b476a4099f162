#!/bin/bash
# After the main lite run: the init=source variant (1000 steps), then the ablations at 1000 steps.
cd /work/main
L=/work/main/.venv/bin/lipstep
D=/work/runs/t13/prepared
A=/work/runs/lite/anchor_id
R=/work/runs/lite
while pgrep -f "out /work/runs/lite/main " > /dev/null; do sleep 20; done
[ -d $R/main/model ] && touch $R/main.done
run() {  # name, args...
  name=$1; shift
  [ -f $R/$name.done ] && return
  t0=$(date +%s)
  if [ -d $R/$name/checkpoints ]; then RES=--resume; else RES=; fi
  $L distill lite --data $D --out $R/$name --steps 1000 $RES "$@" > $R/$name.log 2>&1 && touch $R/$name.done
  echo "$name $(( $(date +%s) - t0 )) s" >> $R/times.txt
}
run src1 identity_net=$A width_factor=1 depth_factor=0.17 init=source
for f in $R/queue.d/*; do [ -f "$f" ] && source "$f"; done
