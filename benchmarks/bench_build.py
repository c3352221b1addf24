"""Benchmark of ``kmodkit build``: one module for three installed kernels, against three ``make -j2`` runs.

    .venv/bin/python benchmarks/bench_build.py [--runs N]

Measured in the same run, on fresh copies of the bundled example (example/hello):

* reference: ``make -C KDIR M=COPY -j2 CC=<the kernel's compiler> modules``, once per kernel, one after another;
* kmodkit: ``kmodkit build -k K1 -k K2 -k K3`` (the CLI, process start included), its worker pool at the
  default size (twice the CPU count, at most one worker per kernel);
* no-op: ``kmodkit build`` again with nothing changed (nothing rebuilt).

Prints each run's times and speed-up (reference / kmodkit), then the medians.  Targets: speed-up >= 1.7 on
2 cores, no-op <= 0.5 s.  The machine may be shared: before each run the benchmark waits (up to --wait
seconds) for a second in which the CPUs are at least 90% idle, and for every timed command it prints the
CPU time other processes took while it ran ("others").  A run in which others took more than --noise
seconds of CPU is printed, marked "disturbed", and run again (at most --retries times per run); the
medians are of the undisturbed runs when there are any.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
EXAMPLE = HERE / "example" / "hello"
KMODKIT = [sys.executable, "-m", "kmodkit"]


def pick_kernels(n: int) -> list[tuple[str, Path, str]]:
    from kmodkit.kbuild import kernels as kern

    out = []
    for k in kern.installed_kernels():
        if not k.headers_complete or k.headers is None:
            continue
        choice = kern.choose_compiler(kern.kernel_compiler(kern.kernel_config(k.headers)))
        if choice.program:
            out.append((k.release, k.headers, choice.program))
        if len(out) == n:
            return out
    sys.exit(f"bench_build: need {n} installed kernels with headers, found {len(out)}")


def _cpu_ticks() -> tuple[int, int]:
    """(busy, idle) jiffies of the whole machine so far (/proc/stat), (0, 0) when unreadable."""
    try:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0, 0
    user, nice, system, idle, iowait, irq, softirq, steal = f
    return user + nice + system + irq + softirq + steal, idle + iowait


def wait_quiet(limit: float) -> float:
    """Wait until one second passes with the CPUs >= 90% idle (at most ``limit`` seconds); the busy share seen."""
    deadline = time.monotonic() + limit
    while True:
        b0, i0 = _cpu_ticks()
        time.sleep(1.0)
        b1, i1 = _cpu_ticks()
        busy = (b1 - b0) / max(1, (b1 - b0) + (i1 - i0))
        if busy <= 0.10 or time.monotonic() >= deadline:
            return busy


class Timed:
    """Wall time of a block, the CPU seconds it took (this process and its children) and the CPU seconds
    other processes took meanwhile."""

    def __enter__(self) -> Timed:
        self._ticks, self._times, self._start = _cpu_ticks()[0], os.times(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._start
        t = os.times()
        ours = (t.user + t.system + t.children_user + t.children_system) - (
            self._times.user + self._times.system + self._times.children_user + self._times.children_system)
        self.cpu = ours
        self.others = max(0.0, (_cpu_ticks()[0] - self._ticks) / os.sysconf("SC_CLK_TCK") - ours)


def fresh_copy(base: Path, name: str) -> Path:
    dest = base / name
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("out", ".kmodkit"))
    return dest


def reference(base: Path, kernels: list[tuple[str, Path, str]]) -> Timed:
    copies = [fresh_copy(base, f"ref-{i}") for i in range(len(kernels))]
    env = dict(os.environ, LC_ALL="C")
    env.pop("MAKEFLAGS", None)
    with Timed() as t:
        for (release, headers, cc), copy in zip(kernels, copies):
            subprocess.run(["make", "-C", str(headers), f"M={copy}", f"CC={cc}", "-j2", "modules"], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return t


def kmodkit(base: Path, kernels: list[tuple[str, Path, str]]) -> tuple[Timed, Timed]:
    project = fresh_copy(base, "kmodkit")
    argv = KMODKIT + ["build", str(project), "--workdir", str(base / "work")]
    for release, _, _ in kernels:
        argv += ["-k", release]
    with Timed() as cold:
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with Timed() as noop:
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cold, noop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds (median reported; default 3)")
    parser.add_argument("--wait", type=float, default=60.0,
                        help="seconds to wait, before each run, for the CPUs to be idle (default 60; 0: do not wait)")
    parser.add_argument("--noise", type=float, default=0.5,
                        help="CPU seconds other processes may take during a timed command (default 0.5)")
    parser.add_argument("--retries", type=int, default=3, help="re-runs of a disturbed run (default 3)")
    args = parser.parse_args()
    kernels = pick_kernels(3)
    ncpu = os.cpu_count() or 1
    print(f"kernels: {', '.join(k[0] for k in kernels)}; CPUs: {os.cpu_count()}; runs: {args.runs}")
    clean: list[tuple[float, float, float]] = []
    disturbed: list[tuple[float, float, float]] = []
    for i in range(args.runs):
        for attempt in range(args.retries + 1):
            busy = wait_quiet(args.wait) if args.wait > 0 else 0.0
            with tempfile.TemporaryDirectory(prefix="kmodkit-bench-") as tmp:
                base = Path(tmp)
                # alternate the order so neither side always runs on a warmer cache
                if i % 2 == 0:
                    ref_t = reference(base, kernels)
                    cold_t, noop_t = kmodkit(base, kernels)
                else:
                    cold_t, noop_t = kmodkit(base, kernels)
                    ref_t = reference(base, kernels)
            noisy = max(ref_t.others, cold_t.others) > args.noise
            (disturbed if noisy else clean).append((ref_t.wall, cold_t.wall, noop_t.wall))
            print(f"  run {i + 1}{'.' + str(attempt) if attempt else ''}: make x3 sequential {ref_t.wall:.2f} s, "
                  f"kmodkit build {cold_t.wall:.2f} s, speed-up {ref_t.wall / cold_t.wall:.2f}x, "
                  f"no-op {noop_t.wall:.3f} s (CPU {ref_t.cpu:.2f} / {cold_t.cpu:.2f} s, kmodkit kept "
                  f"{cold_t.cpu / (ncpu * cold_t.wall):.0%} of the CPUs busy; "
                  f"CPUs {busy:.0%} busy before; others took {ref_t.others:.2f} / "
                  f"{cold_t.others:.2f} s of CPU{'; disturbed' if noisy else ''})", flush=True)
            if not noisy:
                break
    runs = clean or disturbed
    if not clean:
        print("every run was disturbed by other work: the numbers below are not the tool's")
    refs, colds, noops = ([r[k] for r in runs] for k in range(3))
    ref, cold, noop = statistics.median(refs), statistics.median(colds), statistics.median(noops)
    print(f"{len(runs)} {'undisturbed ' if clean else ''}runs ({len(disturbed)} disturbed runs left out)"
          if clean else f"{len(runs)} runs")
    print(f"three sequential 'make -j2' runs: {ref:.2f} s (median)")
    print(f"kmodkit build (3 kernels, parallel): {cold:.2f} s (median)")
    ratios = [r / c for r, c in zip(refs, colds)]
    print(f"speed-up: {ref / cold:.2f}x of the medians, {statistics.median(ratios):.2f}x median of the runs"
          f" (per run: {', '.join(f'{x:.2f}x' for x in ratios)}; target >= 1.7x on 2 cores)")
    print(f"load average after: {os.getloadavg()[0]:.2f} (other work on the machine lowers the speed-up)")
    print(f"no-op rebuild: {noop:.3f} s (target <= 0.5 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
