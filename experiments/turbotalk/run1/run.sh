#!/usr/bin/env bash
# TurboTalk on the bundled teacher (v9): DMD to 4 steps, then adversarial 4 -> 2 -> 1 (prev_student, jumps
# curriculum), each evaluated on the 8 held-out test clips (own audio).
set -uo pipefail
cd /work/main
source .venv/bin/activate
R=/work/runs/turbo
D=/work/runs/t13/prepared
ev() {  # model, name
  OMP_NUM_THREADS=2 lipstep eval --model "$1" --data /work/runs/t8/prepared --split test --max-clips 8 --seconds 2 \
      --out $R/ev_$2 > $R/ev_$2.log 2>&1
}
stage() { echo "$1 $(date +%s)" >> $R/times.txt; }
stage start
[ -f $R/dmd4/model/lipstep.json ] || lipstep distill dmd --data $D --out $R/dmd4 --teacher teacher $( [ -d $R/dmd4/checkpoints ] && echo --resume ) > $R/dmd4.log 2>&1
stage dmd4
[ -f $R/ev_dmd4/metrics.json ] || ev $R/dmd4/model dmd4
stage ev_dmd4
[ -f $R/adv2/model/lipstep.json ] || lipstep distill adversarial --data $D --out $R/adv2 --student $R/dmd4/model --teacher teacher $( [ -d $R/adv2/checkpoints ] && echo --resume ) > $R/adv2.log 2>&1
stage adv2
[ -f $R/ev_adv2/metrics.json ] || ev $R/adv2/model adv2
stage ev_adv2
[ -f $R/adv1/model/lipstep.json ] || lipstep distill adversarial --data $D --out $R/adv1 --student $R/adv2/model --teacher teacher $( [ -d $R/adv1/checkpoints ] && echo --resume ) > $R/adv1.log 2>&1
stage adv1
[ -f $R/ev_adv1/metrics.json ] || ev $R/adv1/model adv1
stage ev_adv1
date > $R/done
