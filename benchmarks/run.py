"""Run every benchmark (or those named): `python benchmarks/run.py [info signing index build vm]`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    names = sys.argv[1:] or sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    status = 0
    for name in names:
        script = HERE / f"bench_{name}.py"
        if not script.exists():
            print(f"run.py: error: no benchmark called {name} ({script} is missing)", file=sys.stderr)
            status = 2
            continue
        status = max(status, subprocess.run([sys.executable, str(script)], cwd=HERE).returncode)
    return status


if __name__ == "__main__":
    sys.exit(main())
