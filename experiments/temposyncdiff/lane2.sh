#!/bin/bash
# lane2.sh WAIT_FOR NAME ARGS... [-- NAME ARGS...]: wait until the run WAIT_FOR (a run directory name) has no
# process, mark it done if its model exists, then run the rest as lane.sh does.
cd /work/runs/lite
w=$1; shift
while pgrep -f "out /work/runs/lite/$w " > /dev/null; do sleep 15; done
[ -d /work/runs/lite/$w/model ] && touch /work/runs/lite/$w.done && echo "$w finished (lane restarted)" >> times.txt
exec ./lane.sh "$@"
