#!/bin/bash
# One lane of 1-thread lite runs (two lanes share the 2 cores): lane.sh NAME ARGS... [-- NAME ARGS...]
cd /work/main
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
L=/work/main/.venv/bin/lipstep
D=/work/runs/t13/prepared
R=/work/runs/lite
while [ $# -gt 0 ]; do
  name=$1; shift; args=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do args+=("$1"); shift; done
  [ "$1" == "--" ] && shift
  [ -f $R/$name.done ] && continue
  if [ "$name" == "src1_vis" ]; then while [ ! -f $R/viseme_classifier/model.safetensors ]; do sleep 30; done; fi
  t0=$(date +%s)
  if [ -d $R/$name/checkpoints ]; then RES=--resume; else RES=; fi
  $L distill lite --data $D --out $R/$name --steps 1000 $RES "${args[@]}" > $R/$name.log 2>&1 && touch $R/$name.done
  echo "$name $(( $(date +%s) - t0 )) s (1 thread, two lanes)" >> $R/times.txt
done
