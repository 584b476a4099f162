#!/bin/bash
cd /work/wt_vis
export OMP_NUM_THREADS=1 PYTHONPATH=/work/wt_vis/src
L=/work/main/.venv/bin/python
run() { name=$1; shift; echo "=== $name: lipstep train visemes $*" > /tmp/visruns/$name.log
  ( time nice -n 10 $L -m lipstep train visemes "$@" ) >> /tmp/visruns/$name.log 2>&1; echo "rc=$?" >> /tmp/visruns/$name.log; }
run B --data /work/runs/t13/prepared --world /work/runs/t13/world --out /work/runs/lite/viseme_classifier synth_clips=400
run A --data /work/runs/t13/prepared --world /work/runs/t13/world --out /tmp/visruns/nosynth
run C --data /work/runs/t13/prepared --world /work/runs/t13/world --out /tmp/visruns/variant holdout_by=variant synth_clips=400
