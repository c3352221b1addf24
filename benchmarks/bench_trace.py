"""Tracing benchmarks (issue 14).

1. On the host: the report of a 1-million-event function_graph trace (read, statistics, call tree,
   JSON) must take at most 2 s.  The trace is written here in tracefs' exact text format.
2. In a booted kernel (the generic one, TCG or KVM): the example's workload with tracing off, under
   `kmodkit trace` and under `trace-cmd record` on the same functions: the overhead of each.

Run: .venv/bin/python benchmarks/bench_trace.py [--host-only]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from _common import ROOT, Row, best_of, newest_generic_tree, report

GUEST = r'''
import json, os, subprocess, sys, time
ko = sys.argv[1]
subprocess.run(["insmod", ko], check=True)
subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"])
with open("/sys/module/hello/parameters/loops", "w") as f:
    f.write("50")
work = ["sh", "-c", "i=0; while [ $i -lt 400 ]; do echo x > /proc/driver/hello; i=$((i+1)); done"]
def best(cmd):
    t = []
    for _ in range(3):
        s = time.monotonic(); subprocess.run(cmd, check=True, capture_output=True); t.append(time.monotonic() - s)
    return min(t)
r = {"off": best(work),
     "kmodkit": best([sys.executable, "-m", "kmodkit", "trace", "hello", "--json", "--", *work]),
     "trace_cmd": best(["trace-cmd", "record", "-q", "-o", "/tmp/b.dat", "-p", "function_graph",
                        "-l", ":mod:hello", "--", *work])}
subprocess.run(["trace-cmd", "reset"], capture_output=True)
print("BENCH " + json.dumps(r))
'''


def synthetic_trace(writes: int, steps: int) -> str:
    """A function_graph text of ``writes`` handler calls with ``steps`` leaf helper calls each."""
    lines = []
    for i in range(writes):
        task = f"sh-{100 + i % 4}"
        lines.append(f" {i % 2})   {task:>8}    |               |  hello_write [hello]() {{")
        for j in range(steps):
            lines.append(f" {i % 2})   {task:>8}    |   {2 + (i * j) % 97 / 10:.3f} us    |    hello_step [hello]();")
        lines.append(f" {i % 2})   {task:>8}    | + {30 + i % 50}.123 us   |  }}")
    return "\n".join(lines) + "\n"


def host_report() -> Row:
    from kmodkit.trace.graph import GraphTrace

    text = synthetic_trace(100_000, 8)  # 100,000 × (entry + 8 leaves + exit) = 1,000,000 events

    def once() -> None:
        g = GraphTrace()
        for i in range(0, len(text), 1 << 22):
            g.feed(text[i:i + (1 << 22)])
        g.finish()
        assert g.events == 1_000_000
        json.dumps({"functions": [s.to_json() for s in g.stats()], "tree": g.root.to_json()})

    t = best_of(once, 3)
    return Row("report of a 1,000,000-event trace", t, None, "", "<= 2 s", t <= 2.0)


def guest_overhead() -> list[Row]:
    tree = newest_generic_tree("bench_trace")
    kver = os.path.basename(tree)
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-m", "kmodkit", "new", "hello", "--dir", f"{d}/hello"], check=True,
                       capture_output=True)
        subprocess.run(["make", f"KDIR={tree}/build"], cwd=f"{d}/hello", check=True, capture_output=True)
        with open(f"{d}/guest.py", "w") as f:
            f.write(GUEST)
        done = subprocess.run([sys.executable, "-m", "kmodkit", "vm", "run", "-k", kver, "--runs-dir", f"{d}/runs",
                               "--", "env", f"PYTHONPATH={ROOT / 'src'}", sys.executable, f"{d}/guest.py",
                               f"{d}/hello/hello.ko"], capture_output=True, text=True, cwd="/")
    line = next((l for l in done.stdout.splitlines() if l.startswith("BENCH ")), None)
    if line is None:
        raise SystemExit(f"bench_trace: the guest failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    r = json.loads(line[6:])
    return [Row("400 writes × 50 helper calls, tracing off", r["off"], None, "", "-", True),
            Row("the same under kmodkit trace (function_graph, :mod:hello)", r["kmodkit"], r["trace_cmd"],
                "trace-cmd record, same filter", "ratio <= 1.2", r["kmodkit"] <= 1.2 * r["trace_cmd"])]


def main() -> int:
    rows = [host_report()]
    if "--host-only" not in sys.argv:
        rows += guest_overhead()
    report("kmodkit trace", rows)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
