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
# The bundled evaluators were trained with these four commands (the SyncNet and feature net with fewer
# steps than their defaults, to fit our 2-core CPU; `lipstep train evaluators` runs all four at defaults):
$LIPSTEP train mouth-reader --data "$PREPARED" --codec "$CODEC" --out "$OUT/mouth"
$LIPSTEP train syncnet --data "$PREPARED" --out "$OUT/syncnet" --steps 1200 batch=32
$LIPSTEP train features --data "$PREPARED" --out "$OUT/features" --steps 150
$LIPSTEP train identity --data "$PREPARED" --out "$OUT/identity"
