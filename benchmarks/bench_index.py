"""Index benchmarks: ``kmodkit index`` against ``depmod -b``, and load order against modprobe.

1. ``kmodkit index --no-cache`` vs ``depmod -b`` on the generic tree (target ratio <= 1.0);
2. ``kmodkit index`` after touching one module (target <= 0.1 x depmod's time);
3. (informative) ``kmodkit index`` after one module's content changed: a rebuild from the cache;
4. the load order of every module in one ``kmodkit deps`` call (target <= 0.5 s) vs one
   ``modprobe --show-depends`` process per module: ~200 modprobe calls are timed and the
   per-call time is extrapolated to the whole tree (said so in the table).

Each index row is timed as the best of several runs, wall clock and CPU (user+sys of the
process and its workers): the machine is shared, and when the load average is above ~1.2
the CPU columns are the fairer comparison.  kmodkit's bytecode is compiled first, as an
installed package has it (the environment may set PYTHONDONTWRITEBYTECODE).
"""

from __future__ import annotations

import compileall
import glob
import os
import random
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import KMODKIT, ROOT, Row, best_of, newest_generic_tree, report, run


def make_tree(src: Path, root: Path, copy: str) -> Path:
    """root/lib/modules/KVER: the modules linked, ``copy`` (relative path) a real file we may touch."""
    moddir = root / "lib" / "modules" / src.name
    moddir.mkdir(parents=True)
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        shutil.copy(src / name, moddir / name)
    parts = Path(copy).parts
    s, d = src / parts[0], moddir / parts[0]
    d.mkdir()
    for part in parts[1:]:
        for entry in s.iterdir():
            if entry.name != part:
                (d / entry.name).symlink_to(entry)
        s, d = s / part, d / part
        if part != parts[-1]:
            d.mkdir()
    shutil.copy2(s, d)
    return moddir


def timed(args: list[str], repeat: int, before: Callable[[], None] = lambda: None) -> tuple[float, float]:
    """Best wall time and best CPU time (user+sys, children included) of ``repeat`` runs."""
    walls, cpus = [], []
    for _ in range(repeat):
        before()
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        r = subprocess.run(args, capture_output=True)
        walls.append(time.perf_counter() - start)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if r.returncode != 0:
            raise SystemExit(f"bench_index: {' '.join(args)} failed:\n{r.stderr.decode()[-2000:]}")
        cpus.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    return min(walls), min(cpus)


def main() -> None:
    compileall.compile_dir(str(ROOT / "src" / "kmodkit"), quiet=1)
    src = Path(newest_generic_tree("bench_index"))
    kver = src.name
    mods = sorted(glob.glob(f"{src}/kernel/**/*.ko*", recursive=True))
    touched = os.path.relpath(next(m for m in mods if m.endswith("/af_key.ko")), src)
    other = Path(next(m for m in mods if m.endswith("/ah4.ko")))  # content swapped in for row 3
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        root = Path(tmp) / "root"
        moddir = make_tree(src, root, touched)
        out = Path(tmp) / "out"
        index = [KMODKIT, "index", "-b", str(root), "-o", str(out), kver]
        depmod, depmod_cpu = timed(["depmod", "-b", str(root), kver], 5)
        full, full_cpu = timed(index[:2] + ["--no-cache"] + index[2:], 5)
        rows.append(Row(f"index --no-cache, {len(mods)} modules", full, depmod, "depmod -b", "ratio <= 1.0",
                        full <= depmod))
        rows.append(Row("  same, CPU time (user+sys)", full_cpu, depmod_cpu, "depmod -b CPU", "(informative)", True))
        run(index)  # fill the cache
        path = moddir / touched
        original = path.read_bytes()

        def touch() -> None:
            st = path.stat()
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

        incr, incr_cpu = timed(index, 7, touch)
        rows.append(Row("index after touching one module (cache)", incr, depmod, "depmod -b", "ratio <= 0.1",
                        incr <= 0.1 * depmod))
        rows.append(Row("  same, CPU time (user+sys)", incr_cpu, depmod_cpu, "depmod -b CPU", "(informative)",
                        True))
        swap = [original, other.read_bytes()]  # change() writes the other first, then alternates

        def change() -> None:
            swap.reverse()
            path.write_bytes(swap[0])
            touch()

        changed, changed_cpu = timed(index, 4, change)
        rows.append(Row("index after one module's content changed (cache)", changed, depmod, "depmod -b",
                        "(informative)", True))
        if swap[0] != original:
            change()
            run(index)
        # same bytes as depmod after all that
        run(["depmod", "-b", str(root), kver])
        for name in ("modules.dep", "modules.dep.bin", "modules.alias.bin", "modules.symbols"):
            if (out / name).read_bytes() != (moddir / name).read_bytes():
                raise SystemExit(f"bench_index: {name} differs from depmod's")

    names = [Path(line.split(":", 1)[0]).name.split(".", 1)[0]
             for line in (src / "modules.dep").read_text().splitlines()]
    whole = best_of(lambda: run([KMODKIT, "deps", "-k", kver, "--show-depends", *names]), 3)
    sample = random.Random(1).sample(names, 200)
    start = time.perf_counter()
    for name in sample:
        subprocess.run(["modprobe", "-S", kver, "--show-depends", name], capture_output=True, check=True)
    per_call = (time.perf_counter() - start) / len(sample)
    rows.append(Row(f"load order of all {len(names)} modules, one call", whole, per_call * len(names),
                    f"modprobe per module, 200 timed ({per_call * 1000:.1f} ms each) x {len(names)}",
                    "< 0.5 s", whole < 0.5))
    one = best_of(lambda: run([KMODKIT, "deps", "-k", kver, "--show-depends", "ext4"]), 5)
    rows.append(Row("load order of one module (ext4)", one, per_call, "one modprobe --show-depends",
                    "(informative)", True))
    report(f"index ({src})", rows)
    print(f"\nLoad average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"with 2 cores, above ~1.2 judge the index rows by their CPU lines.")


if __name__ == "__main__":
    main()
