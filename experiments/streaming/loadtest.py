"""Load test of `lipstep serve` on loopback (the library: `lipstep.eval.loadtest`).

    python experiments/streaming/loadtest.py --model turbo1 --sessions 16 --seconds 120 --out experiments/streaming/lt
    python experiments/streaming/loadtest.py --url http://127.0.0.1:8000 --pid 1234 --sessions 4 --seconds 30

Without --url it starts `lipstep serve --model M` on a free port with max_sessions = sessions + 2 (the malformed
requests need a slot of their own) plus any --set key=value, and stops it at the end. Writes OUT.json and OUT.md
(the machine's load average before and after included: other jobs on the machine change every number).
"""

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from lipstep.errors import LipstepError
from lipstep.eval.loadtest import LoadConfig, format_markdown, free_port, launch_server, run_loadtest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running server (default: start one)")
    ap.add_argument("--pid", type=int, help="the running server's pid, to record its memory")
    ap.add_argument("--model", default=None, help="model to serve when starting one (default: the bundled default)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="server settings (ServeConfig)")
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--drain", type=float, default=300.0, help="seconds a session may wait for its last frames")
    ap.add_argument("--out", type=Path, default=Path("experiments/streaming/report"), help="writes OUT.json, OUT.md")
    ap.add_argument("--note", action="append", default=[], help="a line for the report (repeatable)")
    args = ap.parse_args()

    cfg = LoadConfig(sessions=args.sessions, seconds=args.seconds, drain_s=args.drain)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    proc = None
    try:
        if args.url:
            url, pid = args.url, args.pid
        else:
            port = free_port()
            settings = [f"max_sessions={args.sessions + 2}", *args.set]
            proc = launch_server(args.model, port, settings, args.out.with_suffix(".server.log"))
            url, pid = f"http://127.0.0.1:{port}", proc.pid
            print(f"started lipstep serve (pid {pid}) on {url} with {' '.join(settings)}", flush=True)
        t0 = time.time()
        report = run_loadtest(url, cfg, pid)
        report["server_process_alive_at_end"] = None if proc is None else proc.poll() is None
    except LipstepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    load_after = os.getloadavg()
    report["machine"] = {"cpus": os.cpu_count(), "load_before": [round(x, 2) for x in load_before],
                         "load_after": [round(x, 2) for x in load_after],
                         "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         "seconds": round(time.time() - t0, 1), "command": " ".join(sys.argv)}
    notes = [(f"{report['machine']['date']}, {os.cpu_count()} CPUs; load average (1/5/15 min) before "
              f"{report['machine']['load_before']}, after {report['machine']['load_after']}"),
             f"command: `{report['machine']['command']}`", *args.note]
    if proc is not None:
        notes.append(f"server process alive at the end: {report['server_process_alive_at_end']}")
    report["notes"] = notes
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(format_markdown(report, notes))
    print(format_markdown(report, notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
