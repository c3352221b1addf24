"""Crash diagnosis benchmarks: scanning 100 MB of kernel log without reports (target >= 100 MB/s,
against grep over the same bytes) and symbolizing 1,000 module frames (target <= 1 s, DWARF read
once per module).  The module is test_oops_decode's crash module, built here for the generic kernel.
scripts/decode_stacktrace.sh (Debian's linux-source) is compared when installed."""

from __future__ import annotations

import glob
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, Row, best_of, newest_generic_tree, report, run

sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]


def _log_without_reports(size: int) -> bytes:
    rnd = random.Random(1)
    lines = [b"[%12.6f] usb 1-1: new high-speed USB device number %d using xhci_hcd\n",
             b"[%12.6f] EXT4-fs (vda1): mounted filesystem with ordered data mode %d\n",
             b"[%12.6f] systemd[1]: Started session-%d.scope - Session of user root.\n",
             b"[%12.6f] virtio_net virtio0 enp0s2: renamed from eth%d\n"]
    block = b"".join(rnd.choice(lines) % (i / 1000, i) for i in range(20000))
    return (block * (size // len(block) + 1))[:size]


def _decode_stacktrace() -> str | None:
    """scripts/decode_stacktrace.sh of Debian's linux-source: unpacked, or taken out of its tarball once
    (into the benchmark cache); None when the package is not installed."""
    found = glob.glob("/usr/src/linux-source-*/scripts/decode_stacktrace.sh")
    if found:
        return found[0]
    tarballs = sorted(glob.glob("/usr/src/linux-source-*.tar.xz"))
    if not tarballs:
        return None
    top = os.path.basename(tarballs[-1])[: -len(".tar.xz")]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kmodkit" / "bench"
    script = cache / top / "scripts" / "decode_stacktrace.sh"
    if not script.exists():
        cache.mkdir(parents=True, exist_ok=True)
        run(["tar", "-xJf", tarballs[-1], "-C", str(cache), f"{top}/scripts/decode_stacktrace.sh"])
    return str(script)


def main() -> None:
    from kmodkit.klog.diagnose import Decoder
    from kmodkit.klog.locate import ModuleFinder
    from kmodkit.klog.logread import LogScanner, scan_bytes

    rows = []
    data = _log_without_reports(100 * 1024 * 1024)

    def scan() -> None:
        sc = LogScanner("bench")
        for i in range(0, len(data), 1 << 20):
            assert not sc.feed(data[i:i + (1 << 20)])
        assert not sc.close()

    t = best_of(scan, 3)
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        grep = best_of(lambda: subprocess.run(["grep", "-c", "BUG", f.name], capture_output=True), 3)
    mbs = len(data) / t / 1e6
    rows.append(Row(f"scan 100 MB without reports ({mbs:.0f} MB/s)", t, grep, "grep -c BUG", ">= 100 MB/s", mbs >= 100))

    from test_oops_decode import build_crashy

    tree = newest_generic_tree("bench_oops")
    kver = os.path.basename(tree)
    headers = f"/lib/modules/{kver}/build"
    with tempfile.TemporaryDirectory() as d:
        build_crashy(Path(d), Path(headers), ("inline",))
        from kmodkit.klog.symbolize import ModuleDebugInfo

        functions = sorted(ModuleDebugInfo(f"{d}/crashy_inline.ko")._functions.items())  # noqa: SLF001
        frames = []
        for i in range(1000):
            sym, (_addr, size) = functions[i % len(functions)]
            frames.append(f" {sym}+0x{1 + i % max(size - 1, 1):x}/0x{size:x} [crashy_inline]")
        log = ("BUG: kernel NULL pointer dereference, address: 0000000000000000\nCall Trace:\n <TASK>\n"
               + "\n".join(frames) + "\n </TASK>\n---[ end trace 0000000000000000 ]---\n").encode()
        (rep,) = scan_bytes(log)

        def symbolize() -> None:
            dec = Decoder(ModuleFinder([d], kver))
            diag = dec.diagnose(rep)
            assert len(diag.frames) == 1000 and all(f.locations for f in diag.frames.values())

        t = best_of(symbolize, 3)
        rows.append(Row("symbolize 1,000 module frames (one module, DWARF read once)", t, None,
                        "", "<= 1 s", t <= 1.0))
        script = _decode_stacktrace()
        if script is None:
            rows.append(Row("decode_stacktrace.sh on the same frames", t, None,
                            "not installed (apt-get install linux-source-6.1)", "-", True))
        else:
            Path(d, "frames.log").write_bytes(log)
            ko = f"{d}/crashy_inline.ko"

            def decode() -> None:
                with open(f"{d}/frames.log", "rb") as f:  # the module stands in for vmlinux: no kernel frame is decoded
                    out = subprocess.run(["bash", script, ko, "auto", d], stdin=f, capture_output=True, check=True)
                # binutils 2.40 names crashy_inline.c where DWARF says crashy_common.h: count lines, not files
                assert out.stdout.count(b".c:") + out.stdout.count(b".h:") >= 600

            ref = best_of(decode, 1)
            rows.append(Row("symbolize 1,000 module frames vs decode_stacktrace.sh", t, ref,
                            "decode_stacktrace.sh (6.1)", "ratio <= 1.0", t <= ref))
    report("Crash diagnosis (kmodkit oops)", rows)


if __name__ == "__main__":
    start = time.perf_counter()
    main()
