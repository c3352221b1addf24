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


def step(title: str, *args: str, allow: tuple[int, ...] = (0,), tail: int | None = None,
         quiet: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``kmodkit ARGS``, show the command and its output (its last ``tail`` lines when given; not with
    ``quiet``: JSON the job reads); stop the
    job when it fails."""
    print(f"\n=== {title}")
    print("$ kmodkit " + " ".join(shlex.quote(a) for a in args), flush=True)
    start = time.monotonic()
    r = subprocess.run([KMODKIT, *args], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                       stderr=None if quiet else subprocess.STDOUT)
    lines = r.stdout.splitlines(keepends=True)
    if quiet:
        lines = [f"({len(lines)} lines of JSON)\n"]
    elif tail is not None and len(lines) > tail:
        print(f"[... {len(lines) - tail} lines before these]")
        lines = lines[-tail:]
    sys.stdout.write("".join(lines))
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


def validate_kmm(path: Path) -> bool:
    """Validate each document of ``path`` against the CRD in ../shared/kmm that serves its apiVersion and kind,
    unknown fields refused (kubectl's strict field validation); False when one is refused."""
    import jsonschema
    import yaml

    shared = ROOT.parent / "shared" / "kmm"
    print(f"\n=== validate {path.relative_to(ROOT)} against KMM's CRDs in {shared}")
    if not shared.is_dir():
        print("skipped: ../shared/kmm is not beside the repository")
        return True

    def strict(node: object) -> object:
        if isinstance(node, list):
            return [strict(n) for n in node]
        if not isinstance(node, dict):
            return node
        out = {k: strict(v) for k, v in node.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out

    schemas = {}
    for crd_file in sorted(shared.glob("*.yaml")):
        crd = yaml.safe_load(crd_file.read_text())
        for v in crd["spec"]["versions"]:
            schemas[(f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"])] = \
                (crd_file.name, strict(v["schema"]["openAPIV3Schema"]))
    ok = True
    for doc in (d for d in yaml.safe_load_all(path.read_text()) if d):
        key = (doc["apiVersion"], doc["kind"])
        if key == ("v1", "ConfigMap"):
            print(f"{doc['kind']} {doc['metadata']['name']}: core/v1 (no CRD), holds the Dockerfile")
            continue
        crd_name, schema = schemas[key]
        errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
        print(f"{doc['kind']} {doc['metadata']['name']} ({doc['apiVersion']}): "
              + (f"valid against {crd_name}" if not errors else "REFUSED: " + "; ".join(errors)))
        ok = ok and not errors
    return ok


def fleet_kernel(installed: list[str]) -> str | None:
    """Fetch the headers of the newest 6.1 cloud kernel of the archive that is not installed, and build for it;
    its release (None when the archive offers none)."""
    import json

    listed = step("kernels the archive offers (and those installed or fetched)", "kernels", "list", "--available",
                  "--flavour", "cloud-amd64", "--json", quiet=True)
    offered = [k["release"] for k in json.loads(listed.stdout)["kernels"]
               if k["release"].startswith("6.1.") and k["release"] not in installed
               and (k["fetched"] or "headers" in (k["available"] or []))]
    if not offered:
        print("demo: the archive offers no 6.1 cloud kernel that is not installed; fleet step skipped")
        return None
    k = offered[0]
    step(f"fetch {k}'s headers from the archive into the cache (not installed)", "kernels", "fetch",
         "--headers-only", k)
    step(f"build the example for the fetched {k}, checked against it", "build", EXAMPLE, "-k", k)
    return k


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

    # the fleet on Kubernetes: KMM builds and loads the example on every node
    kmm = ROOT / ".kmodkit" / "demo-kmm"
    step("Kubernetes KMM: the Module (one regexp per flavour), its in-cluster Dockerfile, a preflight for the "
         "newest kernel", "kmm", EXAMPLE, "--all-installed", "--flavour-regexp", "--image",
         "registry.example.com/fleet/hello", "--next-kernel", newest, "--out", str(kmm.relative_to(ROOT)))
    if not validate_kmm(kmm / "kmm.yaml"):
        return 1

    # fleets that deploy with DKMS: the example as a DKMS source tree (dkms add/build/install take it as it is)
    dkms_src = ROOT / ".kmodkit" / "dkms-src"
    if dkms_src.exists():
        import shutil

        shutil.rmtree(dkms_src)  # the demo's own: export never overwrites a tree that differs
    step("export the example for DKMS: /usr/src/NAME-VERSION's layout with dkms.conf (here under .kmodkit/)",
         "dkms", "export", EXAMPLE, "--dest", str(dkms_src.relative_to(ROOT)))
    fetched = fleet_kernel(kernels)

    # signing and trust
    keys = ROOT / ".kmodkit" / "keys"
    if not (keys / "signing_key.pem").exists():
        step("a development signing key (made once; the private key is 0600 and never printed)",
             "keys", "new", "--out", str(keys.relative_to(ROOT)), "--cn", "kmodkit demo key")
    key, cert = str((keys / "signing_key.pem").relative_to(ROOT)), str((keys / "signing_cert.der").relative_to(ROOT))
    step("sign every build in one call, byte-identical to the kernel's sign-file", "sign", "--replace",
         "--key", key, "--cert", cert, *built)
    step("sign again, as a re-run pipeline does: what this key signed is left as it is (exit 0)", "sign",
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
    fleet = ROOT / ".kmodkit" / "demo-out" / "fleet.html"
    fleet.parent.mkdir(parents=True, exist_ok=True)
    targets = [a for k in kernels + ([fetched] if fetched else []) for a in ("-k", k)]
    step("the fleet report: build, signature and check's verdict of every (module, kernel) pair — the installed "
         "kernels and the one fetched from the archive — and one HTML page",
         "report", EXAMPLE, *targets, "--html", str(fleet.relative_to(ROOT)), allow=(0, 1))
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

    # packages for a fleet: one .deb per kernel, judged by Debian's lintian
    debs = ROOT / ".kmodkit" / "demo-debs"
    debs.mkdir(parents=True, exist_ok=True)
    for old_deb in debs.glob("*.deb"):
        old_deb.unlink()
    step("package the signed builds: a .deb per kernel (modules in updates/, depmod in postinst/postrm)",
         "package", "deb", EXAMPLE, "--out", str(debs.relative_to(ROOT)))
    made = sorted(str(p.relative_to(ROOT)) for p in debs.glob("*.deb"))
    print("\n=== lintian, Debian's package checker, on them: no error (E:) is allowed")
    print("$ lintian " + " ".join(made), flush=True)
    lint = subprocess.run(["lintian", *made], cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    sys.stdout.write(lint.stdout)
    if lint.returncode != 0:
        print(f"demo: lintian failed with exit status {lint.returncode}", file=sys.stderr)
        sys.exit(1)

    # loading, in a really booted kernel
    step(f"boot {generic} under QEMU, load the signed example with a parameter, read its status, unload it",
         "vm", "run", "-k", generic, "--", "sh", "-c",
         f"kmodkit load {gen_build} repeat=2 && kmodkit status hello && kmodkit health --manifest "
         f"{EXAMPLE}/kmodkit.toml; kmodkit unload hello")
    step("the same with module.sig_enforce=1: check predicts the refusal of our untrusted key before the kernel "
         "is asked, and says why", "vm", "run", "-k", generic, "--append", "module.sig_enforce=1", "--", "kmodkit",
         "load", gen_build, allow=(0, 1, 2, 3))
    step(f"the example's own test script ([test] script) in a booted {generic}: a table per kernel (--json too)",
         "test", EXAMPLE, "-k", generic)
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
    # the job ends with a crash: the example's crash parameter (a demo aid) makes the next write oops
    crashed = step("crash the example on purpose (crash=1, a demo aid): vm run decodes the oops to hello.c's line; "
                   "--dump-on-panic keeps the guest's memory at panic", "vm", "run", "-k", generic, "--memory", "256",
                   "--panic-on-oops", "--dump-on-panic", "--module-path", str(Path(gen_build).parent), "--", "sh",
                   "-c", f"kmodkit load {gen_build} crash=1 && echo > /proc/driver/hello", allow=(5,))
    dump = re.search(r"the guest's memory at panic is in (\S+)", crashed.stdout)
    if dump is not None:
        step("the kernel log read out of the dump through its VMCOREINFO (as makedumpfile --dump-dmesg prints it)",
             "oops", "--vmcore", dump.group(1), "--dmesg", tail=25)
    print("\ndemo: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
