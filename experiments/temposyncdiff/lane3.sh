#!/bin/bash
# session 6 queue (1 thread): wait for the idle bench, then evals of the runtimes and step counts, then the viseme student.
cd /work/main
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
L=/work/main/.venv/bin/lipstep
D=/work/runs/t13/prepared
E=/work/runs/t8/prepared
R=/work/runs/lite
while [ ! -f $R/bench_idle2/b/bench.json ] || pgrep -f "lipstep bench" > /dev/null; do sleep 10; done
ev() { name=$1; shift; [ -f $R/$name/metrics.json ] && return; t0=$(date +%s);
  $L eval --data $E --split test --max-clips 8 --seconds 2 --out $R/$name "$@" > $R/$name.log 2>&1
  echo "$name $(( $(date +%s) - t0 )) s (eval, 1 thread)" >> $R/times.txt; }
ev ev_lite_int8 --model $R/lite_onnx --steps 1 --runtime onnx-int8
ev ev_lite_onnx --model $R/lite_onnx --steps 1 --runtime onnx
ev ev_teacher_src_at2 --model $R/src1_teacher/model --steps 2
ev ev_teacher_src_at4 --model $R/src1_teacher/model --steps 4
name=src1_teacher_vis
if [ ! -f $R/$name.done ]; then
  t0=$(date +%s)
  if [ -d $R/$name/checkpoints ]; then RES=--resume; else RES=; fi
  $L distill lite --data $D --out $R/$name --steps 1000 $RES --source teacher identity_net=$R/anchor_id \
     audio=viseme viseme_classifier=$R/viseme_classifier > $R/$name.log 2>&1 && touch $R/$name.done
  echo "$name $(( $(date +%s) - t0 )) s (1 thread, shared)" >> $R/times.txt
fi
ev ev_teacher_vis --model $R/$name/model --steps 1
echo lane3 done >> $R/times.txt
