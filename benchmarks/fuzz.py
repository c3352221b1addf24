"""The long fuzz run: `python benchmarks/fuzz.py --count 100000 --seed 1`.

Mutated copies of real modules (tests/data/modules, plus --seeds DIR) go
through every reader-facing command of kmodkit in batches (info, info -F,
info --json, info --summary, index, deps, sign, verify); see tests/fuzz/.
Prints one summary line (inputs, exit-4 runs, hangs, items lacking their own
line, ...) and then every group of findings with one reproducer each, saved
under --out. Exit status 0 when every promise held, 1 otherwise.

Input I of seed S is the same bytes on every run that uses the same key:
the key lives in --out and is reused, so `--only I` remakes one input there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fuzz.campaign import campaign  # noqa: E402
from fuzz.corpus import default_seed_paths, generate, load_seeds, make_key  # noqa: E402
from fuzz.harness import COMMANDS, Harness  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="fuzz inputs (default 100000)")
    parser.add_argument("--seed", type=int, default=1, help="the run's seed (default 1)")
    parser.add_argument("--batch", type=int, default=500, help="inputs per command invocation (default 500)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds a batch may take (default 180)")
    parser.add_argument("--commands", default=",".join(COMMANDS), help=f"comma-separated, of {', '.join(COMMANDS)}")
    parser.add_argument("--seeds", type=Path, action="append", default=[],
                        help="a directory of more seed modules (searched recursively; repeatable)")
    parser.add_argument("--special-every", type=int, default=10,
                        help="every Nth batch is a small one of special files (FIFOs, /dev/zero...); 0: none")
    parser.add_argument("--bisect", type=int, default=30, help="batch findings narrowed to one input (default 30)")
    parser.add_argument("--out", type=Path, default=None, help="work dir, key and reproducers "
                        "(default /tmp/kmodkit-fuzz-SEED)")
    parser.add_argument("--only", type=int, default=None, help="write input I into --out and describe it; run nothing")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args()
    commands = [c for c in args.commands.split(",") if c]
    unknown = [c for c in commands if c not in COMMANDS]
    if unknown:
        parser.error(f"unknown command(s) {', '.join(unknown)}")
    out: Path = args.out or Path(f"/tmp/kmodkit-fuzz-{args.seed}")
    out.mkdir(parents=True, exist_ok=True)
    key, cert = out / "fuzz_key.pem", out / "fuzz_cert.der"
    if not (key.exists() and cert.exists()):
        key, cert = make_key(out)
    paths = default_seed_paths()
    for directory in args.seeds:
        paths += sorted(p for p in directory.rglob("*.ko*") if p.is_file())
    seeds = load_seeds(paths, key, cert, out)
    if args.only is not None:
        item = generate(seeds, args.seed, args.only)
        target = out / item.filename
        target.write_bytes(item.data)
        print(f"{item.describe()}\n-> {target}")
        return 0
    harness = Harness(out / "work", key, cert, timeout=args.timeout)
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    report = campaign(harness, seeds, args.seed, args.count, batch=args.batch, commands=commands,
                      special_every=args.special_every, bisect=args.bisect, out=out / "repro", progress=progress)
    print(report.summary())
    print(f"seeds: {len(seeds)} from {len(paths)} module files; batches of {args.batch}; "
          f"reproducers in {out / 'repro'}")
    if report.groups:
        print(report.details())
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
