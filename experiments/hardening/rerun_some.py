import json, sys
import probe
with open("/work/runs/probe/results_after2.jsonl", "w") as fh:
    for i in map(int, sys.argv[1:]):
        r = probe.run_case(i, probe.cases[i])
        fh.write(json.dumps(r) + "\n")
        print(i, r["rc"], r["problems"] or "ok", "::", (probe.stderr_lines(r["stderr"]) or [""])[-1][:150], flush=True)
