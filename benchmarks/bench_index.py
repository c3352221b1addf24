"""Index benchmarks: ``kmodkit index`` against ``depmod -b``, and load order against modprobe.

1. ``kmodkit index --no-cache`` vs ``depmod -b`` on the generic tree (target ratio <= 1.0);
2. ``kmodkit index`` after touching one module (target <= 0.1 x depmod's time);
3. the load order of every module in one ``kmodkit deps`` call (target <= 0.5 s) vs one
   ``modprobe --show-depends`` process per module: ~200 modprobe calls are timed and the
   per-call time is extrapolated to the whole tree (said so in the table).
"""

from __future__ import annotations

import glob
import os
import random
import re
import shutil
import tempfile
import time
from pathlib import Path

from _common import KMODKIT, Row, best_of, report, run


def newest_generic_tree() -> Path:
    trees = [t for t in glob.glob("/lib/modules/*") if re.search(r"-\d+-amd64$", t) and glob.glob(f"{t}/kernel")]
    if not trees:
        raise SystemExit("bench_index: no generic amd64 kernel under /lib/modules: run scripts/bootstrap setup")
    return Path(sorted(trees, key=lambda t: [int(x) for x in re.findall(r"\d+", t)])[-1])


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


def main() -> None:
    src = newest_generic_tree()
    kver = src.name
    mods = sorted(glob.glob(f"{src}/kernel/**/*.ko*", recursive=True))
    touched = os.path.relpath(next(m for m in mods if m.endswith("/af_key.ko")), src)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        root = Path(tmp) / "root"
        moddir = make_tree(src, root, touched)
        out = Path(tmp) / "out"
        depmod = best_of(lambda: run(["depmod", "-b", str(root), kver]), 5)
        full = best_of(lambda: run([KMODKIT, "index", "--no-cache", "-b", str(root), "-o", str(out), kver]), 5)
        rows.append(Row(f"index --no-cache, {len(mods)} modules", full, depmod, "depmod -b", "ratio <= 1.0",
                        full <= depmod))
        run([KMODKIT, "index", "-b", str(root), "-o", str(out), kver])  # fill the cache

        def touch_and_index() -> None:
            path = moddir / touched
            st = path.stat()
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
            run([KMODKIT, "index", "-b", str(root), "-o", str(out), kver])

        incr = best_of(touch_and_index, 5)
        rows.append(Row("index after touching one module (cache)", incr, depmod, "depmod -b", "ratio <= 0.1",
                        incr <= 0.1 * depmod))
        # same bytes as depmod after all that
        run(["depmod", "-b", str(root), kver])
        for name in ("modules.dep", "modules.alias.bin", "modules.symbols"):
            if (out / name).read_bytes() != (moddir / name).read_bytes():
                raise SystemExit(f"bench_index: {name} differs from depmod's")

    names = [Path(line.split(":", 1)[0]).name.split(".", 1)[0]
             for line in (src / "modules.dep").read_text().splitlines()]
    whole = best_of(lambda: run([KMODKIT, "deps", "-k", kver, "--show-depends", *names]), 3)
    sample = random.Random(1).sample(names, 200)
    start = time.perf_counter()
    for name in sample:
        run(["modprobe", "-S", kver, "--show-depends", name])
    per_call = (time.perf_counter() - start) / len(sample)
    rows.append(Row(f"load order of all {len(names)} modules, one call", whole, per_call * len(names),
                    f"modprobe per module, 200 timed ({per_call * 1000:.1f} ms each) x {len(names)}",
                    "< 0.5 s", whole < 0.5))
    one = best_of(lambda: run([KMODKIT, "deps", "-k", kver, "--show-depends", "ext4"]), 5)
    rows.append(Row("load order of one module (ext4)", one, per_call, "one modprobe --show-depends",
                    "(informative)", True))
    report(f"index ({src})", rows)


if __name__ == "__main__":
    main()
