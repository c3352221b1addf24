"""VM harness benchmark: boot + load + unload round trip per installed kernel, against a bare
qemu + busybox initramfs boot of the same kernel; and, inside the guest, `kmodkit status --json`
and one exporter scrape.

Run: .venv/bin/python benchmarks/bench_vm.py   (KMODKIT_VM_ACCEL=tcg|kvm to force an accelerator)
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile
import time

from kmodkit.vm.accel import choose_accel, Accel
from kmodkit.vm.initramfs import minimal_initramfs
from kmodkit.vm.machine import Vm, VmSpec

GUEST = r'''
import io, json, subprocess, sys, time, urllib.request
from contextlib import redirect_stdout
from kmodkit.cli.main import main
from kmodkit.runtime.exporter import registry, render
from kmodkit.runtime.modules import KernelModules
r = {}
t = time.monotonic(); rc1 = main(["load", "af_key"]); rc2 = main(["unload", "--with-deps", "af_key"])
r["load_unload_s"] = time.monotonic() - t; r["rcs"] = [rc1, rc2]
t = time.monotonic(); subprocess.run(["kmodkit", "status", "--json"], capture_output=True, check=True)
r["status_cli_s"] = time.monotonic() - t
best = 1e9
for _ in range(5):
    out = io.TextIOWrapper(io.BytesIO())
    t = time.monotonic()
    with redirect_stdout(out):
        main(["status", "--json"])
    best = min(best, time.monotonic() - t)
r["status_in_process_s"] = best
reg = registry(KernelModules(), [])
best = 1e9
for _ in range(5):
    t = time.monotonic(); render(reg); best = min(best, time.monotonic() - t)
r["scrape_render_s"] = best
srv = subprocess.Popen([sys.executable, "-m", "kmodkit", "exporter"], stderr=subprocess.PIPE)
srv.stderr.readline()
best = 1e9
for _ in range(5):
    t = time.monotonic(); urllib.request.urlopen("http://127.0.0.1:9417/metrics").read()
    best = min(best, time.monotonic() - t)
srv.terminate()
r["scrape_http_s"] = best
print("BENCH " + json.dumps(r))
'''


def bare_boot(kernel: str) -> float:
    accel = choose_accel(Accel.AUTO, "/usr/bin/qemu-system-x86_64", kernel)
    with tempfile.NamedTemporaryFile(suffix=".cpio") as initrd:
        initrd.write(minimal_initramfs(b"echo up"))
        initrd.flush()
        t = time.monotonic()
        subprocess.run(["qemu-system-x86_64", "-accel", accel.value, "-m", "1024M", "-nodefaults", "-no-user-config",
                        "-display", "none", "-no-reboot", "-kernel", kernel, "-initrd", initrd.name,
                        "-serial", "stdio", "-append", "console=ttyS0 quiet panic=-1"],
                       stdin=subprocess.DEVNULL, capture_output=True, check=True)
        return time.monotonic() - t


def main() -> int:
    kvers = sorted(os.path.basename(p)[len("vmlinuz-"):] for p in glob.glob("/boot/vmlinuz-*"))
    with tempfile.TemporaryDirectory() as d:
        script = os.path.join(d, "guest.py")
        with open(script, "w") as f:
            f.write(GUEST)
        print(f"{'kernel':<30} {'bare':>6} {'vm true':>7} {'ratio':>5} {'round trip':>10} {'boot':>5} {'ld+unld':>8} "
              f"{'status cli':>10} {'status':>7} {'scrape':>7} {'http':>6}")
        for kver in kvers:
            bare = bare_boot(f"/boot/vmlinuz-{kver}")
            t = time.monotonic()
            Vm(VmSpec(kver, ("true",), runs_dir=os.path.join(d, "runs"), cwd="/")).run()
            boot_only = time.monotonic() - t
            t = time.monotonic()
            # True: the round trip's command is part of it
            res = Vm(VmSpec(kver, (sys.executable, script), runs_dir=os.path.join(d, "runs"), cwd="/")).run()
            total = time.monotonic() - t
            line = next((l for l in res.output().splitlines() if l.startswith("BENCH ")), None)
            if line is None:
                print(f"{kver:<30} failed: {res.output()[-500:]}")
                continue
            r = json.loads(line[6:])
            print(f"{kver:<30} {bare:6.1f} {boot_only:7.1f} {boot_only / bare:5.2f} {total:10.1f} {res.boot_seconds or 0:5.1f} "
                  f"{r['load_unload_s']:8.2f} {r['status_cli_s']:10.2f} {r['status_in_process_s'] * 1000:5.0f}ms "
                  f"{r['scrape_render_s'] * 1000:5.1f}ms {r['scrape_http_s'] * 1000:4.0f}ms  ({res.accel.value})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
