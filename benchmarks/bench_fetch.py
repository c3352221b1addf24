"""Benchmark of ``kmodkit kernels fetch --headers-only``: one kernel that is not installed, cold and warm cache.

    .venv/bin/python benchmarks/bench_fetch.py [--kernel KVER] [--runs N]

Measured in the same run, for the newest 6.1 cloud-amd64 kernel of the archive that is not installed
(or --kernel):

* kmodkit cold: an empty cache, ``kmodkit kernels fetch --headers-only K`` (apt-cache show of the three
  packages, apt-get download, dpkg-deb -x of each, the Makefile fix, the rename);
* reference cold: ``apt-get download`` of the same three packages into an empty directory, then
  ``dpkg-deb -x`` of each into one directory (what a user would type);
* kmodkit warm: the kernel's directory removed (not timed), the package files kept, then ``kmodkit kernels
  fetch --headers-only K`` (nothing is downloaded: each kept file's size and SHA256 are checked against the
  archive's record, then unpacked);
* reference warm: ``dpkg-deb -x`` of the three files already downloaded;
* kmodkit present: ``kmodkit kernels fetch --headers-only K`` once more (the kernel is there: no work).

Cold runs depend on the network and the mirror; the ratio is what counts.  Target: cold within 1.2x of
the reference, warm within 1.5x (kmodkit checks every kept file's SHA256 before trusting it).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, Row, report  # noqa: E402

sys.path.insert(0, str(ROOT / "src"))
KMODKIT = [sys.executable, "-m", "kmodkit"]


def pick_kernel() -> str:
    from kmodkit.archive import tool as archive
    from kmodkit.kbuild.kernels import flavour_of, version_key

    offered = archive.available(archive.tool_for())
    names = [r for r, kinds in offered.items() if r.startswith("6.1.") and flavour_of(r) == "cloud-amd64"
             and "headers" in kinds and not os.path.lexists(f"/lib/modules/{r}")]
    if not names:
        raise SystemExit("bench_fetch: the archive has no 6.1 cloud-amd64 kernel that is not installed")
    return max(names, key=version_key)


def timed(argv: list[str], cwd: str | None = None, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"bench_fetch: {' '.join(argv)} failed: {done.stderr.decode()[-1000:]}")
    return took


def one_run(kver: str, work: Path) -> dict[str, float]:
    from kmodkit.archive import tool as archive

    t = archive.tool_for()
    records = archive.resolve(t, [t.headers.format(kver=kver)])
    items = [t.download_item.format(package=r.name, version=r.version) for r in records]
    cache = work / "cache"
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    out: dict[str, float] = {}
    out["kmodkit cold"] = timed(KMODKIT + ["kernels", "fetch", "--headers-only", kver], env=env)
    debs = work / "debs"
    debs.mkdir()
    dest = work / "ref-cold"
    dest.mkdir()

    def reference(unpack_into: Path, download: bool) -> float:
        start = time.perf_counter()
        if download:
            subprocess.run(["apt-get", "download", "-q"] + items, cwd=debs, check=True, capture_output=True)
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(unpack_into)], check=True)
        return time.perf_counter() - start

    out["reference cold"] = reference(dest, True)
    shutil.rmtree(cache / "kmodkit" / "kernels" / "roots" / kver)  # as prune would, keeping the package files
    out["kmodkit warm"] = timed(KMODKIT + ["kernels", "fetch", "--headers-only", kver], env=env)
    warm = work / "ref-warm"
    warm.mkdir()
    out["reference warm"] = reference(warm, False)
    out["kmodkit present"] = timed(KMODKIT + ["kernels", "fetch", "--headers-only", kver], env=env)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--kernel", metavar="KVER", help="the kernel to fetch (default: newest 6.1 cloud not installed)")
    ap.add_argument("--runs", type=int, default=1, help="runs (each downloads ~13 MB twice; default 1)")
    args = ap.parse_args()
    kver = args.kernel or pick_kernel()
    runs: list[dict[str, float]] = []
    for i in range(args.runs):
        work = Path(tempfile.mkdtemp(prefix="bench-fetch-"))
        try:
            runs.append(one_run(kver, work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"run {i + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in runs[-1].items()), flush=True)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    report(f"kernels fetch --headers-only {kver} ({args.runs} run(s), medians)", [
        Row("fetch headers, cold cache (download + unpack)", med["kmodkit cold"], med["reference cold"],
            "apt-get download + dpkg-deb -x", "ratio <= 1.2", med["kmodkit cold"] <= 1.2 * med["reference cold"]),
        Row("fetch headers, warm cache (unpack kept files)", med["kmodkit warm"], med["reference warm"],
            "dpkg-deb -x", "ratio <= 1.5", med["kmodkit warm"] <= 1.5 * med["reference warm"]),
        Row("fetch again, kernel present", med["kmodkit present"], None, "", "< 1 s", med["kmodkit present"] < 1.0),
    ])


if __name__ == "__main__":
    main()
