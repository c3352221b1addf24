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
from collections.abc import Callable
from pathlib import Path

from bench_build import KMODKIT, Timed, pick_kernels, wait_quiet

HERE = Path(__file__).resolve().parent.parent
CORE = HERE / "tests" / "data" / "projects" / "core"
NAME, VERSION, MODULES = "fleetmon", "1.0.0", ("fleetmon", "fleetmon_jiffies")


def modinfo_pair(path: Path) -> tuple[str, str]:
    """(vermagic, srcversion) of a module file, as kmod's modinfo prints them."""
    out = subprocess.run(["modinfo", "-F", "vermagic", str(path)], capture_output=True, text=True, check=True).stdout
    src = subprocess.run(["modinfo", "-F", "srcversion", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return out.strip(), src.strip()


def dkms(base: Path, kernels: list[str]) -> Timed:
    return dkms_build(base, kernels, CORE, NAME, VERSION)


def dkms_build(base: Path, kernels: list[str], source: Path, name: str, version: str,
               kernel_args: Callable[[str], list[str]] = lambda k: []) -> Timed:
    """Copy ``source`` to BASE/dkms-project, export it, then time ``dkms add`` and ``dkms build -k K`` (plus
    ``kernel_args(K)``) for each kernel one after another, in trees under ``base``, signing off."""
    project = base / "dkms-project"
    shutil.copytree(source, project, ignore=shutil.ignore_patterns("out", ".kmodkit"))
    subprocess.run(KMODKIT + ["dkms", "export", str(project), "--dest", str(base / "src")], check=True,
                   stdout=subprocess.DEVNULL)
    common = ["--sourcetree", str(base / "src"), "--dkmstree", str(base / "dkmstree"),
              "--installtree", str(base / "installtree")]
    # a sign_file that does not exist: DKMS neither signs nor makes a key in /var/lib/dkms
    env = dict(os.environ, sign_file=str(base / "no-sign-file"))
    env.pop("MAKEFLAGS", None)
    (base / "dkmstree").mkdir()
    with Timed() as t:
        _dkms(["add", "-m", name, "-v", version, *common], env)
        for k in kernels:
            _dkms(["build", "-m", name, "-v", version, "-k", k, *kernel_args(k), *common], env)
    return t


def _dkms(args: list[str], env: dict[str, str]) -> None:
    # dkms's stderr holds readelf's noise about vmlinux; shown only when dkms fails
    r = subprocess.run(["dkms", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit(f"{Path(sys.argv[0]).stem}: dkms {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-2000:]}")


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
            if len(theirs) != 1 or modinfo_pair(theirs[0]) != modinfo_pair(ours):
                bad.append(f"{k}/{m}")
    return bad


Side = Callable[[Path, list[str]], Timed]


def race(i: int, base: Path, kernels: list[str], wait: float, dkms_side: Side, kmodkit_side: Side,
         agree_fn: Callable[[Path, list[str]], list[str]]) -> tuple[float, float, list[str]]:
    """Run ``i``: wait up to ``wait`` s for idle CPUs, time both sides in ``base`` (order alternated by run),
    compare their modules and print one line; (DKMS wall, kmodkit wall, what differs: empty when all agree)."""
    busy = wait_quiet(wait) if wait > 0 else 0.0
    # alternate the order so neither side always runs on a warmer page cache
    if i % 2 == 0:
        ref, ours = dkms_side(base, kernels), kmodkit_side(base, kernels)
    else:
        ours, ref = kmodkit_side(base, kernels), dkms_side(base, kernels)
    bad = agree_fn(base, kernels)
    print(f"  run {i + 1}: dkms build x{len(kernels)} {ref.wall:.2f} s, kmodkit build {ours.wall:.2f} s, "
          f"ratio {ref.wall / ours.wall:.2f}x (CPU {ref.cpu:.1f} / {ours.cpu:.1f} s; CPUs {busy:.0%} busy "
          f"before; others took {ref.others:.1f} / {ours.others:.1f} s of CPU); modules "
          + ("agree (vermagic, srcversion)" if not bad else f"DIFFER: {', '.join(bad)}"), flush=True)
    return ref.wall, ours.wall, bad


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
        with tempfile.TemporaryDirectory(prefix="kmodkit-bench-dkms-") as tmp:
            ref_wall, ours_wall, bad = race(i, Path(tmp), kernels, args.wait, dkms, kmodkit, agree)
        pairs.append((ref_wall, ours_wall))
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
