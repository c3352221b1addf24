"""Benchmark of ``kmodkit build`` against Debian's DKMS: the two-module project for four installed kernels.

    .venv/bin/python benchmarks/bench_dkms.py [--runs N] [--kernels N]

Issue 12's (and 15's) speed goal: build the vendor-shaped project (tests/data/projects/core: fleetmon and
fleetmon_jiffies, a shared header, a subdirectory) for every kernel at least 2x faster than DKMS, with the
same modules.  Measured in the same run, on fresh copies:

* DKMS: the project exported with ``kmodkit dkms export``, then ``dkms add`` and ``dkms build -k K`` for each
  kernel, one after another (as DKMS's autoinstall does; each make gets DKMS's own ``-j$(nproc)``), with
  ``--dkmstree``/``--sourcetree``/``--installtree`` in a temp directory and signing off (``sign_file`` set to
  a missing file, so DKMS neither signs nor makes a key in /var/lib/dkms);
* kmodkit: ``kmodkit build -k K1 ... -k K4`` (the CLI, process start included, each build checked against
  its kernel as by default), its kernels built in parallel.

Then every module of both is compared with kmod's modinfo: vermagic and srcversion must agree.  Prints each
run's times and the ratio (DKMS / kmodkit), then the medians.  The machine may be shared: as bench_build does,
it waits for idle CPUs before each run and prints the CPU time other processes took meanwhile.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_build import KMODKIT, Timed, pick_kernels, wait_quiet

HERE = Path(__file__).resolve().parent.parent
CORE = HERE / "tests" / "data" / "projects" / "core"
NAME, VERSION, MODULES = "fleetmon", "1.0.0", ("fleetmon", "fleetmon_jiffies")


def _modinfo(path: Path) -> tuple[str, str]:
    out = subprocess.run(["modinfo", "-F", "vermagic", str(path)], capture_output=True, text=True, check=True).stdout
    src = subprocess.run(["modinfo", "-F", "srcversion", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return out.strip(), src.strip()


def dkms(base: Path, kernels: list[str]) -> Timed:
    project = base / "dkms-project"
    shutil.copytree(CORE, project)
    subprocess.run(KMODKIT + ["dkms", "export", str(project), "--dest", str(base / "src")], check=True,
                   stdout=subprocess.DEVNULL)
    common = ["--sourcetree", str(base / "src"), "--dkmstree", str(base / "dkmstree"),
              "--installtree", str(base / "installtree")]
    env = dict(os.environ, sign_file=str(base / "no-sign-file"))
    (base / "dkmstree").mkdir()
    with Timed() as t:
        _dkms(["add", "-m", NAME, "-v", VERSION, *common], env)
        for k in kernels:
            _dkms(["build", "-m", NAME, "-v", VERSION, "-k", k, *common], env)
    return t


def _dkms(args: list[str], env: dict[str, str]) -> None:
    # dkms's stderr holds readelf's noise about vmlinux; shown only when dkms fails
    r = subprocess.run(["dkms", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit(f"bench_dkms: dkms {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-2000:]}")


def kmodkit(base: Path, kernels: list[str]) -> Timed:
    project = base / "kmodkit-project"
    shutil.copytree(CORE, project)
    argv = KMODKIT + ["build", str(project), "--workdir", str(base / "work")]
    for k in kernels:
        argv += ["-k", k]
    with Timed() as t:
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return t


def agree(base: Path, kernels: list[str]) -> list[str]:
    """Every module whose vermagic or srcversion differs between DKMS's build and kmodkit's (empty: all agree)."""
    bad = []
    for k in kernels:
        for m in MODULES:
            theirs = sorted((base / "dkmstree" / NAME / VERSION / k).glob(f"*/module/{m}.ko*"))
            ours = base / "kmodkit-project" / "out" / k / f"{m}.ko"
            if len(theirs) != 1 or _modinfo(theirs[0]) != _modinfo(ours):
                bad.append(f"{k}/{m}")
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds (median reported; default 3)")
    parser.add_argument("--kernels", type=int, default=4, help="installed kernels to build for (default 4)")
    parser.add_argument("--wait", type=float, default=60.0,
                        help="seconds to wait, before each run, for the CPUs to be idle (default 60; 0: do not wait)")
    args = parser.parse_args()
    if shutil.which("dkms") is None:
        sys.exit("bench_dkms: Debian's dkms is not installed: run scripts/bootstrap setup")
    kernels = [k[0] for k in pick_kernels(args.kernels)]
    print(f"kernels: {', '.join(kernels)}; CPUs: {os.cpu_count()}; runs: {args.runs}")
    pairs: list[tuple[float, float]] = []
    for i in range(args.runs):
        busy = wait_quiet(args.wait) if args.wait > 0 else 0.0
        with tempfile.TemporaryDirectory(prefix="kmodkit-bench-dkms-") as tmp:
            base = Path(tmp)
            # alternate the order so neither side always runs on a warmer page cache
            if i % 2 == 0:
                ref, ours = dkms(base, kernels), kmodkit(base, kernels)
            else:
                ours, ref = kmodkit(base, kernels), dkms(base, kernels)
            bad = agree(base, kernels)
        pairs.append((ref.wall, ours.wall))
        print(f"  run {i + 1}: dkms build x{len(kernels)} {ref.wall:.2f} s, kmodkit build {ours.wall:.2f} s, "
              f"ratio {ref.wall / ours.wall:.2f}x (CPU {ref.cpu:.1f} / {ours.cpu:.1f} s; CPUs {busy:.0%} busy "
              f"before; others took {ref.others:.1f} / {ours.others:.1f} s of CPU); modules "
              + ("agree (vermagic, srcversion)" if not bad else f"DIFFER: {', '.join(bad)}"), flush=True)
        if bad:
            return 1
    ref_m, ours_m = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    print(f"dkms build, {len(kernels)} kernels one after another: {ref_m:.2f} s (median)")
    print(f"kmodkit build, {len(kernels)} kernels in parallel: {ours_m:.2f} s (median)")
    print(f"ratio: {ref_m / ours_m:.2f}x faster than DKMS (target >= 2x); load average after: "
          f"{os.getloadavg()[0]:.2f} (other work on the machine changes both sides)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
