#!/usr/bin/env bash
# Guidance sweep on the first 4 test clips x 2 s: own audio and another clip's, side by side (one thread each).
#   [SPLIT=test] [CLIPS=4] bash sweep.sh MODEL PREPARED OUTBASE TAG "A R" ["A R" ...]   (A = cfg_audio, R = cfg_ref)
# Prints own / other MouthErr and their ratio per setting; OUTBASE/TAG_aA_rR_{right,other}/ hold the evaluations,
# OUTBASE/TAG_aA_rR_{right,other}.log what `lipstep eval` printed.
set -euo pipefail
MODEL=$1; PREPARED=$2; BASE=$3; TAG=$4; shift 4
mkdir -p "$BASE"
LIPSTEP=${LIPSTEP:-lipstep}
for s in "$@"; do
  read -r a r <<< "$s"
  for m in right other; do
    extra=(); [ "$m" = other ] && extra=(--other-audio)
    OMP_NUM_THREADS=1 $LIPSTEP eval --model "$MODEL" --data "$PREPARED" --split "${SPLIT:-test}" --max-clips "${CLIPS:-4}" --seconds 2 \
      --cfg-audio "$a" --cfg-ref "$r" --out "$BASE/${TAG}_a${a}_r${r}_$m" "${extra[@]}" \
      > "$BASE/${TAG}_a${a}_r${r}_$m.log" 2>&1 &
  done
  wait
  python3 - "$BASE/${TAG}_a${a}_r${r}" "$TAG a=$a r=$r" <<'PY'
import json, sys
r, o = (json.load(open(f"{sys.argv[1]}_{m}/metrics.json")) for m in ("right", "other"))
print(f"{sys.argv[2]}: own {r['mouth_err']:.4f} other {o['mouth_err']:.4f} ratio {r['mouth_err'] / o['mouth_err']:.3f} "
      f"corr {r['mouth_corr']:.3f} FD {r['fd']:.2f} ID {r['id_sim']:.3f}")
PY
done
