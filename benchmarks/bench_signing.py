"""Signing benchmarks: a batch of `kmodkit sign` against a loop of the kernel's sign-file; verify a whole tree.

* 300 copies of a real module (af_key.ko, signature stripped) signed in one
  kmodkit call vs one sign-file process per copy, for RSA-2048 and RSA-4096
  keys; the outputs must be byte-identical.
* `kmodkit verify -k REL` over the whole generic tree, with the kernel's
  certificates cached and cold (image decompressed in the run), against the
  limit: hashlib sha256 over the same bytes in this process (1 core) and that
  rate times the cores.
"""

from __future__ import annotations

import glob
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import KMODKIT, ROOT, Row, best_of, newest_generic_tree, report, run

COPIES = 300


def sign_file_tool() -> str:
    tools = sorted(glob.glob("/usr/lib/linux-kbuild-*/scripts/sign-file"))
    if not tools:
        raise SystemExit("bench_signing: no sign-file under /usr/lib/linux-kbuild-*: run scripts/bootstrap setup")
    return tools[0]


def unsigned_module(tree: str) -> bytes:
    sys.path.insert(0, str(ROOT / "src"))
    from kmodkit.modfile import ModuleFile

    path = next(iter(glob.glob(f"{tree}/kernel/net/key/af_key.ko")), None)
    if path is None:
        raise SystemExit("bench_signing: af_key.ko missing from the generic tree")
    with ModuleFile.open(path) as mf:
        return bytes(mf.content)


def fill(directory: Path, content: bytes) -> None:
    for i in range(COPIES):
        (directory / f"m{i:03d}.ko").write_bytes(content)


def bench_sign(tmp: Path, content: bytes, bits: int) -> Row:
    keys = tmp / f"keys{bits}"
    run([KMODKIT, "keys", "new", "--out", str(keys), "--bits", str(bits), "--cn", f"bench {bits}"])
    key, cert = str(keys / "signing_key.pem"), str(keys / "signing_cert.der")
    tool = sign_file_tool()
    ours, theirs = tmp / f"ours{bits}", tmp / f"theirs{bits}"
    ours.mkdir()
    theirs.mkdir()

    def kmodkit_batch() -> None:
        fill(ours, content)
        start = time.perf_counter()
        run([KMODKIT, "sign", "--key", key, "--cert", cert, str(ours)])
        times.append(time.perf_counter() - start)

    def sign_file_loop() -> None:
        fill(theirs, content)
        start = time.perf_counter()
        for i in range(COPIES):
            subprocess.run([tool, "sha256", key, cert, str(theirs / f"m{i:03d}.ko")], check=True)
        ref_times.append(time.perf_counter() - start)

    times: list[float] = []
    ref_times: list[float] = []
    for _ in range(3):  # interleaved, so both see the same machine load
        kmodkit_batch()
        sign_file_loop()
    same = all((ours / n).read_bytes() == (theirs / n).read_bytes() for n in os.listdir(ours))
    k, r = min(times), min(ref_times)
    print(f"sign RSA-{bits}: kmodkit {k * 1000 / COPIES:.2f} ms/module, sign-file {r * 1000 / COPIES:.2f} ms/module, "
          f"{r / k:.1f}x faster, outputs byte-identical: {same}")
    return Row(f"sign {COPIES} copies, RSA-{bits}, one call (byte-identical: {'yes' if same else 'NO'})", k, r,
               f"loop of sign-file, {r * 1000 / COPIES:.1f} ms each", ">= 5x faster", same and r / k >= 5)


def bench_verify(tree: str) -> list[Row]:
    release = os.path.basename(tree)
    files = sorted(p for p in glob.glob(f"{tree}/**/*.ko*", recursive=True))
    total = sum(os.path.getsize(p) for p in files)
    mb = total / 1e6

    def sha_all() -> None:
        for p in files:
            with open(p, "rb") as f:
                hashlib.sha256(f.read())

    sha_all()  # warm the page cache
    limit1 = best_of(sha_all, 3)
    cores = len(os.sched_getaffinity(0))
    args = [KMODKIT, "verify", "-q", "-k", release, tree]
    run(args)  # fills the certificate cache
    warm = best_of(lambda: run(args), 5)
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "XDG_CACHE_HOME": cache}

        def cold_run() -> None:
            for d in glob.glob(f"{cache}/*"):
                subprocess.run(["rm", "-rf", d], check=True)
            r = subprocess.run(args, capture_output=True, env=env)
            if r.returncode != 0:
                raise SystemExit(f"verify failed: {r.stderr.decode()[-500:]}")

        cold = best_of(cold_run, 3)
    print(f"verify {len(files)} modules, {mb:.0f} MB: warm {warm:.2f} s ({mb / warm:.0f} MB/s), cold {cold:.2f} s; "
          f"sha256 in-process {mb / limit1:.0f} MB/s on 1 core (~{cores * mb / limit1:.0f} MB/s on {cores})")
    return [
        Row(f"verify -k, whole generic tree ({len(files)} modules, {mb:.0f} MB), kernel keys cached: "
            f"{mb / warm:.0f} MB/s", warm, limit1, f"sha256 of the same bytes, 1 core: {mb / limit1:.0f} MB/s",
            "<= 2 s", warm <= 2.0),
        Row(f"verify -k, same tree, cold (bzImage decompressed in the run): {mb / cold:.0f} MB/s", cold, limit1,
            "sha256 of the same bytes, 1 core", "(informative)", True),
    ]


def main() -> None:
    tree = newest_generic_tree("bench_signing")
    content = unsigned_module(tree)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        for bits in (2048, 4096):
            rows.append(bench_sign(Path(tmp), content, bits))
    rows.extend(bench_verify(tree))
    report("signing", rows)


if __name__ == "__main__":
    main()
