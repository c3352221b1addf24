"""Foundation benchmarks: start-up time, and info over a whole kernel tree against modinfo."""

from __future__ import annotations

import glob
import sys

from _common import KMODKIT, Row, best_of, newest_generic_tree, report, run, time_cmd


def main() -> None:
    tree = newest_generic_tree("bench_info")
    files = sorted(glob.glob(f"{tree}/**/*.ko*", recursive=True))
    stdin = "\n".join(files).encode()
    rows = []

    python = time_cmd([sys.executable, "-c", "pass"], repeat=10)
    version = time_cmd([KMODKIT, "--version"], repeat=10)
    rows.append(Row("`kmodkit --version`", version, python, "python3 -c pass", "< 60 ms", version < 0.060))
    helptime = time_cmd([KMODKIT, "--help"], repeat=10)
    rows.append(Row("`kmodkit --help`", helptime, python, "python3 -c pass", "< 60 ms", helptime < 0.060))

    modinfo = best_of(lambda: run(["xargs", "modinfo"], stdin=stdin), 3)
    text = best_of(lambda: run([KMODKIT, "info", *files]), 3)
    rows.append(Row(f"info, modinfo text, {len(files)} modules", text, modinfo, "xargs modinfo", "ratio <= 1.0",
                    text <= modinfo))
    cold = best_of(lambda: run([KMODKIT, "info", "--json", "--no-cache", *files]), 3)
    rows.append(Row(f"info --json --no-cache (cold), {len(files)} modules", cold, modinfo, "xargs modinfo",
                    "ratio <= 1.0", cold <= modinfo))
    run([KMODKIT, "info", "--json", *files])  # fill the cache
    warm = best_of(lambda: run([KMODKIT, "info", "--json", *files]), 3)
    rows.append(Row(f"info --json (cache warm), {len(files)} modules", warm, modinfo, "xargs modinfo",
                    "ratio <= 1.0", warm <= modinfo))
    cold1 = best_of(lambda: run([KMODKIT, "info", "-j", "1", "--json", "--no-cache", *files]), 3)
    rows.append(Row(f"info --json --no-cache -j 1 (one process), {len(files)} modules", cold1, modinfo,
                    "xargs modinfo", "(informative)", True))
    summary = best_of(lambda: run([KMODKIT, "info", "--summary", *files]), 3)
    rows.append(Row(f"info --summary, {len(files)} modules", summary, None, "", "(informative)", True))
    report(f"info ({tree})", rows)


if __name__ == "__main__":
    main()
