#!/usr/bin/env bash
# FADA's ablations (paper Tables 2-4) at synthetic-world scale, on our 2-core CPU:
#   bash experiments/fada/ablations.sh DATA_ROOT [STEPS=100] [CLIPS=8]
# DATA_ROOT holds `prepared` (the default teacher's clean world: evaluation on its test split) and
# `prepared_mod` (the moderate-quality world the students train on, FADA's broader student data):
#   lipstep synth --out DATA_ROOT/world --identities 40 --clips-per-identity 4 --seconds 4
#   lipstep prepare DATA_ROOT/world --out DATA_ROOT/prepared --size 64
#   lipstep synth --out DATA_ROOT/world_mod --identities 40 --clips-per-identity 4 --seconds 4 --seed 1 --quality moderate
#   lipstep prepare DATA_ROOT/world_mod --out DATA_ROOT/prepared_mod --size 64
# Every run starts from the bundled teacher and trains on teacher pairs solved once into a pair bank
# (4 DDIM steps per window, multi-CFG at sampled scales) shared by the runs of the same settings.
# Results: DATA_ROOT/fada/<run>/model and DATA_ROOT/fada_eval/<run>/metrics.json; the tables are
# made by `python experiments/fada/tables.py DATA_ROOT`.
set -euo pipefail
ROOT=${1:?data root}
STEPS=${2:-100}
CLIPS=${3:-8}
LIPSTEP=${LIPSTEP:-lipstep}
RUNS=$ROOT/fada
EVALS=$ROOT/fada_eval
mkdir -p "$RUNS" "$EVALS"
COMMON=(--data "$ROOT/prepared_mod" --teacher teacher --steps "$STEPS" --batch-size 4)
BANK=(pairs=512 solver_steps=4 "pairs_dir=$ROOT/bank_k4_m4")

run() {  # run NAME [overrides...]: distill (resumable) then evaluate on the clean test split
    local name=$1; shift
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi  # ONLY="a b": a subset
    if [ ! -f "$RUNS/$name/model/lipstep.json" ]; then
        local resume=(); [ -d "$RUNS/$name/checkpoints" ] && resume=(--resume)
        $LIPSTEP distill perflow "${COMMON[@]}" --out "$RUNS/$name" "${resume[@]}" val_clips=0 "$@"
    fi
    if [ ! -f "$EVALS/$name/metrics.json" ]; then
        $LIPSTEP eval --model "$RUNS/$name/model" --data "$ROOT/prepared" --out "$EVALS/$name" \
            --max-clips "$CLIPS" --seconds 2 --save-videos 1
    fi
}

# Table 2 (basic distillation), Table 3 row Fixed-0 and Table 4 row "CFG layer + tokens": one run
run perflow_k4 "${BANK[@]}" mixed.mode=off
# Table 2: a plain rectified-flow student (one window, straight-line velocity target) at the same 6 steps
run reflow_k1 pairs=256 solver_steps=4 "pairs_dir=$ROOT/bank_k1_m4" windows=1 target=velocity mixed.mode=off
# Table 3: mixed supervision on moderate-quality data
run mixed_fixed0.2 "${BANK[@]}" mixed.mode=fixed:0.2
run mixed_fixed1.0 "${BANK[@]}" mixed.mode=fixed:1.0
run mixed_unlimited "${BANK[@]}" mixed.mode=adaptive-unlimited
run mixed_adaptive "${BANK[@]}" mixed.mode=adaptive
# Table 4: how the guidance scales reach the one-pass student
run cfg_none pairs=256 solver_steps=4 "pairs_dir=$ROOT/bank_none_m4" cfg_mode=none mixed.mode=off
run cfg_time "${BANK[@]}" cfg_mode=time mixed.mode=off
run cfg_plain "${BANK[@]}" cfg_mode=plain mixed.mode=off

# control: the teacher's weights under the student's sampler (6 PeRFlow steps, one pass), no training
if [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" untrained "* ]]; then
    [ -f "$RUNS/untrained/lipstep.json" ] || ${PYTHON:-python} "$(dirname "$0")/untrained_student.py" "$RUNS/untrained"
    [ -f "$EVALS/untrained/metrics.json" ] || $LIPSTEP eval --model "$RUNS/untrained" --data "$ROOT/prepared" \
        --out "$EVALS/untrained" --max-clips "$CLIPS" --seconds 2 --save-videos 1
fi

# references: the teacher at 75 NFE and the undistilled teacher at 6 DDIM steps (x 3 CFG passes)
for spec in "teacher_25x3:" "teacher_6x3:--steps 6"; do
    name=${spec%%:*}; extra=${spec#*:}
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
    [ -f "$EVALS/$name/metrics.json" ] || $LIPSTEP eval --model teacher --data "$ROOT/prepared" --out "$EVALS/$name" \
        --max-clips "$CLIPS" --seconds 2 --save-videos 1 $extra
done
