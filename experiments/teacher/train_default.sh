#!/usr/bin/env bash
# The one command behind the bundled default teacher (src/lipstep/weights/teacher):
#   bash experiments/teacher/train_default.sh [RUN_DIR]
# synthetic world -> prepared shards -> pixel codec (lossless space-to-depth, no training) -> small teacher
# (audio -> mouth-state head first, then the denoiser) -> float16 bundle. Prints each stage's wall clock
# and writes them to RUN/stage_times.json; any CUDA GPU is used automatically.
# Overrides (environment): CODEC_ARGS (`train codec` overrides; default the pixel codec), TEACHER_STEPS,
# TEACHER_ARGS (more `train teacher` overrides; default: TeacherConfig's), BUNDLE (export directory).
set -euo pipefail
RUN=${1:-runs/default_teacher}
LIPSTEP=${LIPSTEP:-lipstep}
mkdir -p "$RUN"
declare -A T
stage() {  # stage NAME CMD...: run, time, record
    local name=$1; shift
    local t0; t0=$(date +%s.%N)
    "$@"
    T[$name]=$(python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" "$t0" "$(date +%s.%N)")
    echo "stage $name: ${T[$name]} s" >&2
}
START=$(date +%s.%N)
stage world $LIPSTEP synth --out "$RUN/world" --identities 40 --clips-per-identity 4 --seconds 4
stage prepare $LIPSTEP prepare "$RUN/world" --out "$RUN/prepared" --size 64
# shellcheck disable=SC2086  # CODEC_ARGS / TEACHER_ARGS are lists of overrides
stage codec $LIPSTEP train codec --data "$RUN/prepared" --out "$RUN/codec" ${CODEC_ARGS:-codec.kind=pixel}
# shellcheck disable=SC2086
stage teacher $LIPSTEP train teacher --data "$RUN/prepared" --codec "$RUN/codec" --out "$RUN/teacher" \
    --preset small --steps "${TEACHER_STEPS:-3400}" ${TEACHER_ARGS:-}
stage bundle $LIPSTEP export --model "$RUN/teacher/model" --out "${BUNDLE:-src/lipstep/weights/teacher}" --half
TOTAL=$(python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" "$START" "$(date +%s.%N)")
{
    printf '{'
    for k in world prepare codec teacher bundle; do printf '"%s": %s, ' "$k" "${T[$k]}"; done
    printf '"total": %s, "host": "%s", "cpus": %s}\n' "$TOTAL" "$(hostname)" "$(nproc)"
} > "$RUN/stage_times.json"
echo "default recipe: $TOTAL s in all ($RUN/stage_times.json)" >&2
