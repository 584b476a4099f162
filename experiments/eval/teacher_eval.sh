#!/usr/bin/env bash
# The default teacher under `lipstep eval` on the held-out test identities, driven by the right audio,
# by the same audio shifted by 1 s, and by another clip's audio (every metric still compares with the
# clip's own audio and labels):
#   [MODEL=DIR] bash experiments/eval/teacher_eval.sh PREPARED OUT [CLIPS=8] [SECONDS=2]   (MODEL: default teacher)
set -euo pipefail
PREPARED=${1:?prepared directory of the default teacher world}
OUT=${2:?output directory}
CLIPS=${3:-8}
SECONDS_=${4:-2}
LIPSTEP=${LIPSTEP:-lipstep}
common=(--model "${MODEL:-teacher}" --data "$PREPARED" --split test --max-clips "$CLIPS" --seconds "$SECONDS_")
$LIPSTEP eval "${common[@]}" --out "$OUT/right"
$LIPSTEP eval "${common[@]}" --out "$OUT/shifted" --audio-shift 1.0
$LIPSTEP eval "${common[@]}" --out "$OUT/other" --other-audio
