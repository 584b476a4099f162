#!/usr/bin/env bash
# The one command behind the bundled default teacher (src/lipstep/weights/teacher):
#   bash experiments/teacher/train_default.sh [RUN_DIR]
# synthetic world -> prepared shards -> codec -> small teacher (audio -> mouth-state head first, then 2 700
# denoiser steps) -> float16 bundle. About 58 minutes on our 2-core CPU on a fast day (see README.md here
# for the measured times); any CUDA GPU is used automatically.
# Overrides (environment): CODEC_BLOCKS (the codec's block_out_channels; [16,32] = downsample 2, which
# keeps the mouth, README "A codec that keeps the mouth"), TEACHER_STEPS, TEACHER_ARGS (more
# `train teacher` overrides), BUNDLE (export directory).
set -euo pipefail
RUN=${1:-runs/default_teacher}
LIPSTEP=${LIPSTEP:-lipstep}
mkdir -p "$RUN"
$LIPSTEP synth --out "$RUN/world" --identities 40 --clips-per-identity 4 --seconds 4
$LIPSTEP prepare "$RUN/world" --out "$RUN/prepared" --size 64
$LIPSTEP train codec --data "$RUN/prepared" --out "$RUN/codec" --steps 1000 \
    "codec.block_out_channels=${CODEC_BLOCKS:-[16,32]}" codec.norm_num_groups=16
# shellcheck disable=SC2086  # TEACHER_ARGS is a list of overrides
$LIPSTEP train teacher --data "$RUN/prepared" --codec "$RUN/codec" --out "$RUN/teacher" --preset small \
    --steps "${TEACHER_STEPS:-2700}" ${TEACHER_ARGS:-loss.motion_weight=2 mouth_state=true}
$LIPSTEP export --model "$RUN/teacher/model" --out "${BUNDLE:-src/lipstep/weights/teacher}" --half
