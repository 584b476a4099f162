source /work/main/.venv/bin/activate
set -e
RUN=/work/runs/t12
mkdir -p $RUN
cd /work/runs
date +%s > $RUN/start
lipstep synth --out $RUN/world --identities 160 --clips-per-identity 1 --seconds 4 --seed 1
date +%s > $RUN/t_world
lipstep prepare $RUN/world --out $RUN/prepared --size 64
date +%s > $RUN/t_prepare
lipstep train codec --data $RUN/prepared --out $RUN/codec codec.kind=pixel
date +%s > $RUN/t_codec
lipstep train teacher --data $RUN/prepared --codec $RUN/codec --out $RUN/teacher --preset small --steps 2700
date +%s > $RUN/t_teacher
