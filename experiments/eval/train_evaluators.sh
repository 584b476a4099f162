#!/usr/bin/env bash
# The one command behind lipstep's own evaluators (mouth reader, SyncNet, frame features, identity
# encoder) used by `lipstep eval` when no external weights are given:
#   bash experiments/eval/train_evaluators.sh PREPARED CODEC OUT
# PREPARED: the synthetic world of the default teacher (experiments/teacher/train_default.sh), CODEC:
# its codec (the mouth reader also trains on codec reconstructions). See README.md here for the
# measured times and held-out accuracies.
set -euo pipefail
PREPARED=${1:?prepared directory}
CODEC=${2:?codec directory}
OUT=${3:-runs/evaluators}
LIPSTEP=${LIPSTEP:-lipstep}
$LIPSTEP train evaluators --data "$PREPARED" --codec "$CODEC" --out "$OUT"
