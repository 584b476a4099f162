"""Run again every probe case that had a problem (results.jsonl, results_resume.jsonl): results_after.jsonl."""
import json

import probe

latest = {}
for name in ("results.jsonl", "results_resume.jsonl"):
    for line in open(f"/work/runs/probe/{name}"):
        r = json.loads(line)
        latest[r["i"]] = r
todo = sorted(i for i, r in latest.items() if r["problems"])
print(len(todo), "cases to rerun", flush=True)
with open("/work/runs/probe/results_after.jsonl", "w") as fh:
    for i in todo:
        r = probe.run_case(i, probe.cases[i])
        fh.write(json.dumps(r) + "\n"); fh.flush()
        print(i, r["rc"], r["secs"], r["problems"] or "ok", probe.cases[i]["name"][:70], "::",
              (probe.stderr_lines(r["stderr"]) or [""])[-1][:160], flush=True)
