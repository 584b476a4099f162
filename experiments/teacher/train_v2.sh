#!/usr/bin/env bash
# Candidate replacement for the default teacher (issue 3): train_default.sh with a codec that keeps mouths
# (downsample 2: 64 px -> 4x32x32 latents; the teacher's patch becomes 4, so it still sees 64 tokens per
# frame and costs the same), exported to RUN/bundle. See README.md here, "A codec that keeps the mouth".
#   bash experiments/teacher/train_v2.sh [RUN_DIR]
set -euo pipefail
RUN=${1:-runs/teacher_v2}
CODEC_BLOCKS='[16,32]' BUNDLE=${BUNDLE:-$RUN/bundle} exec bash "$(dirname "$0")/train_default.sh" "$RUN"
