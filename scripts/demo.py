"""The README's main job: kmodkit's whole pipeline on the bundled example, step by step.

Run through ``scripts/bootstrap demo`` (which installs everything first).
Each step prints the command as a user would type it, then its output.
A step that fails stops the job with its exit status.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
KMODKIT = str(BIN / "kmodkit")
EXAMPLE = "example/hello"


def step(title: str, *args: str, allow: tuple[int, ...] = (0,), quiet: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``kmodkit ARGS``, show the command and its output (not with ``quiet``: JSON the job reads); stop the
    job when it fails."""
    print(f"\n=== {title}")
    print("$ kmodkit " + " ".join(shlex.quote(a) for a in args), flush=True)
    start = time.monotonic()
    r = subprocess.run([KMODKIT, *args], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                       stderr=None if quiet else subprocess.STDOUT)
    sys.stdout.write(f"({len(r.stdout.splitlines())} lines of JSON)\n" if quiet else r.stdout)
    print(f"[{time.monotonic() - start:.2f} s, exit {r.returncode}]", flush=True)
    if r.returncode not in allow:
        print(f"demo: step '{title}' failed with exit status {r.returncode}", file=sys.stderr)
        sys.exit(r.returncode)
    return r


def installed_kernels() -> list[str]:
    """Installed kernel releases with modules, newest first."""
    root = Path("/lib/modules")
    found = [p.name for p in root.glob("*") if (p / "kernel").is_dir()] if root.is_dir() else []
    return sorted(found, key=lambda r: [int(x) for x in re.findall(r"\d+", r)], reverse=True)


def newest_build_of(built: list[str], kver: str) -> str:
    """The build of the example for ``kver``."""
    return next(b for b in built if f"/{kver}/" in b)


def stage_tree(kver: str, module: Path) -> Path:
    """A root holding lib/modules/KVER: the installed tree's kernel/ and lists, plus ``module`` in extra/."""
    import shutil

    root = ROOT / ".kmodkit" / "demo-root"
    tree = root / "lib" / "modules" / kver
    if tree.exists():
        shutil.rmtree(root)
    (tree / "extra").mkdir(parents=True)
    (tree / "kernel").symlink_to(Path("/lib/modules") / kver / "kernel")
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        src = Path("/lib/modules") / kver / name
        if src.exists():
            shutil.copy(src, tree / name)
    shutil.copy(module, tree / "extra" / module.name)
    return root


def fleet_kernel(installed: list[str]) -> None:
    """Fetch the headers of the newest 6.1 cloud kernel of the archive that is not installed, and build for it."""
    import json

    listed = step("kernels the archive offers (and those installed or fetched)", "kernels", "list", "--available",
                  "--flavour", "cloud-amd64", "--json", quiet=True)
    offered = [k["release"] for k in json.loads(listed.stdout)["kernels"]
               if k["release"].startswith("6.1.") and k["release"] not in installed
               and (k["fetched"] or "headers" in (k["available"] or []))]
    if not offered:
        print("demo: the archive offers no 6.1 cloud kernel that is not installed; fleet step skipped")
        return
    k = offered[0]
    step(f"fetch {k}'s headers from the archive into the cache (not installed)", "kernels", "fetch",
         "--headers-only", k)
    step(f"build the example for the fetched {k}, checked against it", "build", EXAMPLE, "-k", k)


def main() -> int:
    kernels = installed_kernels()
    if not kernels:
        print("demo: error: no kernel under /lib/modules; run 'scripts/bootstrap setup' first", file=sys.stderr)
        return 3
    newest = kernels[0]
    print(f"kmodkit demo on {os.uname().nodename}: installed kernels: {', '.join(kernels)}")
    step("version", "--version")
    step(f"what the newest kernel's module tree holds ({newest})", "info", "--summary", "-k", newest)
    step("one module in full, found by name as modprobe finds it", "info", "-k", newest, "af_key")

    # environment and build
    step("is this machine ready to build modules for its kernels?", "doctor")
    step("lint the bundled example's source", "lint", EXAMPLE)
    step("build the example for every installed kernel, in parallel", "build", EXAMPLE, "--all-installed")
    built = sorted(str(p.relative_to(ROOT)) for p in (ROOT / EXAMPLE / "out").glob("*/hello.ko"))
    step("what the builds hold (vermagic per kernel)", "info", "-F", "vermagic", *built)
    step("one build in full", "info", built[0])
    step("will each build load on each kernel, and why not? (predicted from files, nothing is loaded)",
         "check", *built, "--all-installed", allow=(0, 1))
    clouds = [k for k in kernels if k.startswith("6.1.") and k.endswith("-cloud-amd64")]
    if len(clouds) >= 2:
        older = next(b for b in built if f"/{clouds[1]}/" in b)
        step(f"upgrade pre-flight: does the build for {clouds[1]} survive the move to {clouds[0]}?",
             "abi", "diff", clouds[1], clouds[0], "--for", older, allow=(0, 1))

    fleet_kernel(kernels)

    # signing and trust
    keys = ROOT / ".kmodkit" / "keys"
    if not (keys / "signing_key.pem").exists():
        step("a development signing key (made once; the private key is 0600 and never printed)",
             "keys", "new", "--out", str(keys.relative_to(ROOT)), "--cn", "kmodkit demo key")
    key, cert = str((keys / "signing_key.pem").relative_to(ROOT)), str((keys / "signing_cert.der").relative_to(ROOT))
    step("sign every build in one call, byte-identical to the kernel's sign-file", "sign", "--replace",
         "--key", key, "--cert", cert, *built)
    step("verify against our certificate", "verify", "--cert", cert, *built)
    step(f"signed, on {newest} with signatures enforced: our key is not one the kernel trusts",
         "check", newest_build_of(built, newest), "-k", newest, "--enforce", "1", allow=(0, 1))
    step("... and on a machine where our certificate is enrolled (MOK)", "check", newest_build_of(built, newest),
         "-k", newest, "--enforce", "1", "--cert", cert)
    newest_build = newest_build_of(built, newest)
    step(f"would {newest} accept it? (its own keys, read from /boot/vmlinuz-{newest})", "verify", "-k", newest,
         newest_build, allow=(0, 1))
    step("... and once our certificate is enrolled with mokutil", "verify", "-k", newest, "--mok", cert,
         newest_build)
    # the index: the example installed into a copy of the generic kernel's tree
    generic = next((k for k in kernels if re.search(r"-\d+-amd64$", k)), None)
    if generic is None:
        print("demo: error: no generic amd64 kernel installed (scripts/bootstrap setup installs one)", file=sys.stderr)
        return 3
    gen_build = next(b for b in built if f"/{generic}/" in b)
    root = stage_tree(generic, ROOT / gen_build)
    step(f"index a copy of {generic}'s tree with the example in extra/ (depmod's ten files, byte-identical)",
         "index", "-b", str(root.relative_to(ROOT)), generic)
    step("index it again: nothing changed, so nothing is read or written", "index", "--json", "-b",
         str(root.relative_to(ROOT)), generic)
    step("what loading the example takes, as modprobe would do it", "deps", "-b", str(root.relative_to(ROOT)),
         "-k", generic, "--show-depends", "hello", "af_key")
    step("why af_key needs xfrm_algo", "deps", "-k", generic, "--why", "af_key", "xfrm_algo")

    # loading, in a really booted kernel
    step(f"boot {generic} under QEMU, load the signed example with a parameter, read its status, unload it",
         "vm", "run", "-k", generic, "--", "sh", "-c",
         f"kmodkit load {gen_build} repeat=2 && kmodkit status hello && kmodkit health --manifest "
         f"{EXAMPLE}/kmodkit.toml; kmodkit unload hello")
    step("the same with module.sig_enforce=1: check predicts the refusal of our untrusted key before the kernel "
         "is asked, and says why", "vm", "run", "-k", generic, "--append", "module.sig_enforce=1", "--", "kmodkit",
         "load", gen_build, allow=(0, 1, 2, 3))
    # tracing and profiling, results written back to the host through --out
    out = ROOT / ".kmodkit" / "demo-out"
    out.mkdir(parents=True, exist_ok=True)
    svg = out / "hello-profile.svg"
    step("trace the example's functions while /proc/driver/hello is written 5 times (calls, durations, call tree),"
         " then profile two writers contending on its spinlock: the table, and a flame graph written to the host",
         "vm", "run", "-k", generic, "--cpus", "2", "--out", str(out.relative_to(ROOT)), "--", "sh", "-c",
         f"kmodkit load {gen_build} && "
         "kmodkit trace hello -- sh -c 'for i in 1 2 3 4 5; do echo > /proc/driver/hello; done' && "
         "echo 20 > /sys/module/hello/parameters/spin_us && "
         f"kmodkit profile hello --svg {svg} -- sh -c "
         "'for w in 1 2; do (for i in $(seq 40); do echo > /proc/driver/hello; done) & done; wait'")
    print(f"\nthe flame graph: {svg} (open it in a browser)" if svg.exists() else "\nno flame graph was written")
    print("\ndemo: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
