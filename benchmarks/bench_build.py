"""Benchmark of ``kmodkit build``: one module for three installed kernels, against three ``make -j2`` runs.

    .venv/bin/python benchmarks/bench_build.py [--runs N]

Measured in the same run, on fresh copies of the bundled example (example/hello):

* reference: ``make -C KDIR M=COPY -j2 CC=<the kernel's compiler> modules``, once per kernel, one after another;
* kmodkit: ``kmodkit build -k K1 -k K2 -k K3`` (the CLI, process start included), its worker pool at the
  default size (twice the CPU count, at most one worker per kernel);
* no-op: ``kmodkit build`` again with nothing changed (nothing rebuilt).

Prints the medians and the speed-up (reference / kmodkit).  Targets: speed-up >= 1.7 on 2 cores, no-op <= 0.5 s.
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


def fresh_copy(base: Path, name: str) -> Path:
    dest = base / name
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("out", ".kmodkit"))
    return dest


def reference(base: Path, kernels: list[tuple[str, Path, str]]) -> float:
    copies = [fresh_copy(base, f"ref-{i}") for i in range(len(kernels))]
    env = dict(os.environ, LC_ALL="C")
    start = time.perf_counter()
    for (release, headers, cc), copy in zip(kernels, copies):
        subprocess.run(["make", "-C", str(headers), f"M={copy}", f"CC={cc}", "-j2", "modules"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def kmodkit(base: Path, kernels: list[tuple[str, Path, str]]) -> tuple[float, float]:
    project = fresh_copy(base, "kmodkit")
    argv = KMODKIT + ["build", str(project), "--workdir", str(base / "work")]
    for release, _, _ in kernels:
        argv += ["-k", release]
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    noop = time.perf_counter() - start
    return cold, noop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds (median reported; default 3)")
    args = parser.parse_args()
    kernels = pick_kernels(3)
    print(f"kernels: {', '.join(k[0] for k in kernels)}; CPUs: {os.cpu_count()}; runs: {args.runs}")
    refs, colds, noops = [], [], []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="kmodkit-bench-") as tmp:
            base = Path(tmp)
            # alternate the order so neither side always runs on a warmer cache
            if i % 2 == 0:
                refs.append(reference(base, kernels))
                cold, noop = kmodkit(base, kernels)
            else:
                cold, noop = kmodkit(base, kernels)
                refs.append(reference(base, kernels))
            colds.append(cold)
            noops.append(noop)
        print(f"  run {i + 1}: make x3 sequential {refs[-1]:.2f} s, kmodkit build {colds[-1]:.2f} s, "
              f"no-op {noops[-1]:.3f} s")
    ref, cold, noop = statistics.median(refs), statistics.median(colds), statistics.median(noops)
    print(f"three sequential 'make -j2' runs: {ref:.2f} s (median)")
    print(f"kmodkit build (3 kernels, parallel): {cold:.2f} s (median)")
    ratios = [r / c for r, c in zip(refs, colds)]
    print(f"speed-up: {ref / cold:.2f}x of the medians, {statistics.median(ratios):.2f}x median of the runs"
          f" (best {max(ratios):.2f}x; target >= 1.7x on 2 cores)")
    print(f"load average after: {os.getloadavg()[0]:.2f} (other work on the machine lowers the speed-up)")
    print(f"no-op rebuild: {noop:.3f} s (target <= 0.5 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
