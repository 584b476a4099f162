#!/usr/bin/env bash
# Candidate replacement for train_default.sh (issue 3): the same world, prepare and teacher commands, with
# a codec that keeps mouths (downsample 2: 64 px -> 4x32x32 latents; the teacher's patch becomes 4, so it
# still sees 64 tokens per frame and costs the same). See README.md here, "A codec that keeps the mouth".
#   bash experiments/teacher/train_v2.sh [RUN_DIR]
set -euo pipefail
RUN=${1:-runs/teacher_v2}
LIPSTEP=${LIPSTEP:-lipstep}
mkdir -p "$RUN"
$LIPSTEP synth --out "$RUN/world" --identities 40 --clips-per-identity 4 --seconds 4
$LIPSTEP prepare "$RUN/world" --out "$RUN/prepared" --size 64
$LIPSTEP train codec --data "$RUN/prepared" --out "$RUN/codec" --steps 1000 \
    'codec.block_out_channels=[16,32]' codec.norm_num_groups=16
$LIPSTEP train teacher --data "$RUN/prepared" --codec "$RUN/codec" --out "$RUN/teacher" --preset small
$LIPSTEP export --model "$RUN/teacher/model" --out "${BUNDLE:-$RUN/bundle}" --half
