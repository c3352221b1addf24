"""`kmodkit check` against what it replaces: booting the target kernel and trying the module.

- one module × every installed kernel, a fresh process with no kmodkit cache (goal ≤ 0.3 s);
- every module of the generic tree against its own kernel, one process (goal ≤ 2 s);
- the reference: one `kmodkit vm run -k KVER -- insmod MODULE` round trip (boot + insmod) of the
  generic kernel, the cheapest way to get the same answer from the kernel itself.

Run: .venv/bin/python benchmarks/bench_check.py
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import KMODKIT, ROOT, Row, newest_generic_tree, report, run


def _example_module(tmp: str, release: str) -> str:
    work = Path(tmp) / "hello"
    shutil.copytree(ROOT / "example/hello", work)
    run([KMODKIT, "build", "-k", release, "--workdir", str(Path(tmp) / "cache")], cwd=work)
    return str(work / "out" / release / "hello.ko")


def main() -> int:
    tree = newest_generic_tree("bench_check")
    release = os.path.basename(tree)
    kernels = sorted(os.path.basename(p) for p in glob.glob("/lib/modules/*") if os.path.isdir(f"{p}/build"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        module = _example_module(tmp, release)
        env = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "xdg")}
        cold = []
        for _ in range(3):
            shutil.rmtree(Path(tmp) / "xdg", ignore_errors=True)
            t = time.perf_counter()
            done = subprocess.run([KMODKIT, "check", module, "--all-installed"], capture_output=True, env=env)
            cold.append(time.perf_counter() - t)
            assert done.returncode in (0, 1), done.stderr
        t = time.perf_counter()
        vm = subprocess.run([KMODKIT, "vm", "run", "-k", release, "--runs-dir", str(Path(tmp) / "runs"), "--",
                             "insmod", module], capture_output=True)
        ref = time.perf_counter() - t
        assert vm.returncode == 0, vm.stderr.decode()[-2000:]
        rows.append(Row(f"check, 1 module x {len(kernels)} kernels, cold", min(cold), ref,
                        "vm run + insmod, 1 kernel", "<= 0.3 s", min(cold) <= 0.3))
        mods = sorted(glob.glob(f"{tree}/kernel/**/*.ko*", recursive=True))
        script = ("import sys, glob\nfrom kmodkit.check.run import CheckRun\n"
                  f"mods = sorted(glob.glob({tree!r} + '/kernel/**/*.ko*', recursive=True))\n"
                  f"bad = [r for r in CheckRun(mods, [{release!r}]).results() "
                  "if r.prediction is None or not r.prediction.loads]\nsys.exit(1 if bad else 0)\n")
        whole = []
        for _ in range(2):
            t = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", script], capture_output=True)
            whole.append(time.perf_counter() - t)
            assert done.returncode == 0, done.stderr.decode()[-2000:]
        rows.append(Row(f"check, {len(mods)} in-tree modules x their kernel", min(whole), ref,
                        "vm run + insmod of 1 module", "<= 2 s", min(whole) <= 2.0))
    report("check: the kernel's verdict from files", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
