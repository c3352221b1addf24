"""Shared helpers of the benchmarks: timing, the machine's description, ratio tables.

Every benchmark times kmodkit and the reference tool in the same run, so the
ratio holds whatever else the machine is doing.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KMODKIT = str(Path(sys.executable).parent / "kmodkit")


def best_of(fn: Callable[[], object], repeat: int = 5) -> float:
    """The shortest wall time of ``repeat`` calls of ``fn``, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run(args: Sequence[str], stdin: bytes | None = None, cwd: str | Path | None = None) -> bytes:
    """Run a command (argument list, no shell) and return its stdout; raise when it fails."""
    r = subprocess.run(list(args), input=stdin, capture_output=True, cwd=cwd)
    if r.returncode != 0:
        raise SystemExit(f"benchmark command failed ({r.returncode}): {' '.join(args)}\n{r.stderr.decode()[-2000:]}")
    return r.stdout


def time_cmd(args: Sequence[str], repeat: int = 3, **kw: object) -> float:
    """Best wall time of ``repeat`` runs of a command."""
    return best_of(lambda: run(args, **kw), repeat)  # type: ignore[arg-type]


def newest_generic_tree(who: str) -> str:
    """The newest generic amd64 tree under /lib/modules (the ~4,000-module one); exit when there is none."""
    import glob
    import re

    trees = [t for t in glob.glob("/lib/modules/*") if re.search(r"-\d+-amd64$", t) and glob.glob(f"{t}/kernel")]
    if not trees:
        raise SystemExit(f"{who}: no generic amd64 kernel under /lib/modules: run scripts/bootstrap setup")
    return sorted(trees, key=lambda t: [int(x) for x in re.findall(r"\d+", t)])[-1]


def machine() -> str:
    """One line about this machine: CPU model, cores, memory, Python."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}"


@dataclass
class Row:
    """One measured comparison."""

    name: str  #: what was measured
    kmodkit: float  #: kmodkit's time in seconds
    reference: float | None  #: the reference tool's time in seconds, None when there is none
    reference_name: str  #: what the reference is
    target: str  #: the target, e.g. "ratio <= 1.0" or "< 60 ms"
    ok: bool  #: whether the target is met

    @property
    def ratio(self) -> float | None:
        """kmodkit time / reference time (below 1 means kmodkit is faster)."""
        return None if not self.reference else self.kmodkit / self.reference


def report(title: str, rows: list[Row]) -> None:
    """Print a Markdown table of ``rows`` (pasteable into RESULTS.md)."""
    print(f"\n## {title}\n\nMachine: {machine()}\n")
    print("| measurement | kmodkit | reference | ratio | target | met |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        ref = f"{r.reference:.3f} s ({r.reference_name})" if r.reference is not None else r.reference_name or "-"
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        print(f"| {r.name} | {r.kmodkit:.3f} s | {ref} | {ratio} | {r.target} | {'yes' if r.ok else 'NO'} |")
    sys.stdout.flush()
